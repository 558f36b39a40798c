"""Several recipes at once: the shared teacher, the phases, seeded searches, and a real two-run smoke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from blockswap_zoo.genotype import Genotype
from blockswap_zoo.recipe import RecipeError, list_recipes, load_recipe
from blockswap_zoo.reproduce_many import link_shared_teachers, plan_runs, seed_searches, shared_teacher_of

TRAIN = {"epochs": 1, "batch_size": 32, "lr": 0.05, "subset": 256}


def _teacher_recipe(tmp_path: Path) -> Path:
    d = {
        "name": "wrn_10_1.tiny", "kind": "official", "role": "teacher", "description": "a tiny teacher",
        "dataset": {"name": "fashion_mnist"}, "seed": 0, "teacher": None, "student": {"genotype": "wrn_10_1"},
        "train": TRAIN,
    }  # fmt: skip
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _student_recipe(tmp_path: Path, name: str, genotype: str | None = None, **teacher_train: object) -> Path:
    student = {"genotype": genotype} if genotype else {
        "search": {"backbone": "wrn_10_1", "budget": "40k", "samples": 3, "mode": "exact"}
    }  # fmt: skip
    d = {
        "name": name, "kind": "official", "role": "student" if genotype is None else "baseline", "budget": "40k",
        "description": "a tiny student", "dataset": {"name": "fashion_mnist"}, "seed": 0,
        "teacher": {"arch": "wrn_10_1", "train": TRAIN | teacher_train}, "student": student,
        "distill": {"beta": 1000}, "train": TRAIN,
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_a_teacher_recipe_is_shared_only_when_it_trains_exactly_the_teacher_stage(tmp_path: Path) -> None:
    teacher = load_recipe(_teacher_recipe(tmp_path))
    same = load_recipe(_student_recipe(tmp_path, "wrn_10_1_a.tiny"))
    other_lr = load_recipe(_student_recipe(tmp_path, "wrn_10_1_b.tiny", lr=0.01))
    recipes = [same, other_lr, teacher]
    assert shared_teacher_of(same, recipes) is teacher
    assert shared_teacher_of(other_lr, recipes) is None  # another schedule: another teacher
    assert shared_teacher_of(teacher, recipes) is None
    assert [[r.name for r in phase] for phase in plan_runs(recipes)] == [
        ["wrn_10_1.tiny"],
        ["wrn_10_1_a.tiny", "wrn_10_1_b.tiny"],
    ]
    assert link_shared_teachers(recipes, tmp_path / "runs") == {"wrn_10_1_a.tiny": "wrn_10_1.tiny"}
    link = tmp_path / "runs" / "wrn_10_1_a.tiny" / "teacher"
    assert link.is_symlink() and link.resolve() == (tmp_path / "runs" / "wrn_10_1.tiny" / "student").resolve()
    with pytest.raises(RecipeError, match="given twice"):
        plan_runs([same, same])


def test_a_seeded_search_must_have_the_recipes_settings(tmp_path: Path) -> None:
    from blockswap_zoo.search import run_search

    r = load_recipe(_student_recipe(tmp_path, "wrn_10_1_a.tiny"))
    report = tmp_path / "searches" / r.name
    run_search("wrn_10_1", "40k", samples=1, seed=0, mode="exact", threads=1, report_dir=report,
               dataset="fashion_mnist")  # fmt: skip
    with pytest.raises(RecipeError, match="samples: report 1, recipe 3"):
        seed_searches([r], tmp_path / "searches", tmp_path / "runs")
    result = run_search("wrn_10_1", "40k", samples=3, seed=0, mode="exact", threads=1, report_dir=report, force=True,
                        dataset="fashion_mnist")  # fmt: skip
    assert seed_searches([r], tmp_path / "searches", tmp_path / "runs") == {r.name: report}
    assert (tmp_path / "runs" / r.name / "search" / "winner.json").is_file()
    assert seed_searches([r], tmp_path / "searches", tmp_path / "runs") == {}  # a run's own search is kept
    # a recipe of another name (another zoo's schedule) takes the report made with its search settings
    other = load_recipe(_student_recipe(tmp_path, "wrn_10_1_a.tiny_e2"))
    assert seed_searches([other], tmp_path / "searches", tmp_path / "runs") == {other.name: report}
    assert (tmp_path / "runs" / other.name / "search" / "winner.json").is_file()
    # a report whose winner is not what its settings promise, or whose candidates are cut short, seeds nothing
    winner = (report / "winner.json").read_text()
    loser = next(c for c in result.candidates if c.index != result.winner_index)
    Genotype.from_string(loser.genotype).save(report / "winner.json")
    with pytest.raises(RecipeError, match="cannot seed wrn_10_1_a.tiny: its winner"):
        seed_searches([r], tmp_path / "searches", tmp_path / "runs3")
    (report / "winner.json").write_text(winner)
    lines = (report / "candidates.jsonl").read_text()
    (report / "candidates.jsonl").write_text(lines[: len(lines) // 2])
    with pytest.raises(RecipeError, match=f"{report} cannot seed"):
        seed_searches([r], tmp_path / "searches", tmp_path / "runs4")
    assert not (tmp_path / "runs3").exists() and not (tmp_path / "runs4").exists()
    settings = json.loads((report / "settings.json").read_text())
    (report / "settings.json").write_text(json.dumps(settings | {"seed": 1}))
    assert seed_searches([other], tmp_path / "searches", tmp_path / "runs2") == {}  # none was made with its settings


def test_runs_share_one_trained_teacher_and_its_forward_pass_end_to_end(tmp_path: Path) -> None:
    """The CLI: the teacher recipe runs first; the two students take its trained teacher and train in one process
    (one teacher pass per batch), each into its own run, as it would alone; every checkpoint lands."""
    paths = [_teacher_recipe(tmp_path), _student_recipe(tmp_path, "wrn_10_1_a.tiny", genotype="wrn_10_1:v1:G(2);S;S"),
             _student_recipe(tmp_path, "wrn_10_1_b.tiny", genotype="wrn_10_1:v1:S;B(2);S")]  # fmt: skip
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "blockswap_zoo", "reproduce", *map(str, paths), "--out", str(out), "--jobs", "2",
           "--max-steps", "2", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "phase 1: wrn_10_1.tiny" in done.stdout and "teacher from wrn_10_1.tiny" in done.stdout
    student_run, other = out / "wrn_10_1_a.tiny", out / "wrn_10_1_b.tiny"
    for run in (student_run, other):
        assert (run / "teacher").resolve() == (out / "wrn_10_1.tiny" / "student").resolve()
        assert (run / "teacher_checkpoint").resolve() == (out / "wrn_10_1.tiny" / "checkpoint").resolve()
    teacher_cfg = json.loads((out / "wrn_10_1.tiny" / "checkpoint" / "config.json").read_text())
    student_cfg = json.loads((student_run / "checkpoint" / "config.json").read_text())
    assert teacher_cfg["role"] == "teacher" and "teacher none" not in teacher_cfg["training"]
    assert student_cfg["role"] == "baseline" and student_cfg["budget"] == 40_000
    log = (student_run / "reproduce.log").read_text()  # the group's log, in its first run
    assert log.count("wrn_10_1_a.tiny: top-1") == 1 and log.count("wrn_10_1_b.tiny: top-1") == 1
    assert not (other / "reproduce.log").exists()
    metrics = [json.loads(line) for line in (other / "student" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["group_size"] == 2
    alone = subprocess.run([*cmd[:4], str(paths[0]), str(paths[2]), "--out", str(tmp_path / "alone"), "--group", "1",
                            "--max-steps", "2", "--device", "cpu"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert alone.returncode == 0, alone.stdout + alone.stderr
    want = json.loads((tmp_path / "alone" / "wrn_10_1_b.tiny" / "checkpoint" / "config.json").read_text())["metrics"]
    assert json.loads((other / "checkpoint" / "config.json").read_text())["metrics"] == want  # as it trains alone
    wide = {**os.environ, "COLUMNS": "200"}  # one line per change
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=wide)  # nothing left to do
    assert again.returncode == 0 and "wrn_10_1_a.tiny: done checkpoint written wrn_10_1_a.tiny: top-1" in again.stdout
    assert again.stdout.count("(finished earlier)") == 6, again.stdout + again.stderr  # 3 lines, 3 table rows
    assert (student_run / "reproduce.log").read_text().count("wrn_10_1_a.tiny: top-1") == 1


def test_students_are_grouped_by_their_teacher_pass() -> None:
    from blockswap_zoo.reproduce_many import group_runs

    def recipe(name: str, **teacher_train: object) -> object:
        return load_recipe(_student_recipe(Path(tempfile.mkdtemp()), name, genotype="wrn_10_1", **teacher_train))

    a, b, c, d = recipe("a.t"), recipe("b.t"), recipe("c.t", epochs=2), recipe("d.t")
    assert [[r.name for r in u] for u in group_runs([a, b, c, d], 2)] == [["a.t", "b.t"], ["c.t"], ["d.t"]]
    assert [[r.name for r in u] for u in group_runs([a, b, c, d], 4)] == [["a.t", "b.t", "d.t"], ["c.t"]]
    assert len(group_runs([a, b, c, d], 1)) == 4


def test_several_recipes_refuse_force_and_a_bad_search_folder(tmp_path: Path) -> None:
    paths = [str(_teacher_recipe(tmp_path)), str(_student_recipe(tmp_path, "wrn_10_1_a.tiny"))]
    base = [sys.executable, "-m", "blockswap_zoo", "reproduce", *paths, "--out", str(tmp_path / "runs")]
    for extra, message in ((["--force"], "take one recipe"), (["--searches", str(tmp_path / "none")], "not a folder")):
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("folder", ["fmnist_zoo", "fmnist_cpu_zoo"])
def test_the_fashion_mnist_zoo_recipes_are_current_and_share_one_teacher(folder: str) -> None:
    """tools/make_fmnist_zoo_recipes.py wrote the shipped files, and every zoo student trains the zoo teacher."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_fmnist_zoo_recipes.py"
    assert subprocess.run([sys.executable, str(tool), "--check"], capture_output=True).returncode == 0
    zoo = [load_recipe(p) for p in list_recipes("official") if p.parent.name == folder]
    teacher = next(r for r in zoo if r.role == "teacher")
    others = [r for r in zoo if r is not teacher]
    assert len(others) == 16 and all(shared_teacher_of(r, zoo) is teacher for r in others)
    assert {r.budget for r in others if r.role == "student"} == {"150k", "200k", "250k", "400k", "500k", "800k", "1.6m"}
    assert len({r.train for r in others}) == 1  # every student and baseline is distilled alike


def test_budget_must_agree_with_the_search_and_search_only_stops_after_the_search(tmp_path: Path) -> None:
    path = _student_recipe(tmp_path, "wrn_10_1_a.tiny")
    d = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(d | {"budget": "50k"}))
    with pytest.raises(RecipeError, match="differs from student.search.budget"):
        load_recipe(path)
    path.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "blockswap_zoo", "reproduce", str(path), "--out", str(run), "--search-only",
           "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run / "search" / "winner.json").is_file() and not (run / "teacher").exists()
    assert not (run / "checkpoint").exists()
    fixed = _student_recipe(tmp_path, "wrn_10_1_b.tiny", genotype="wrn_10_1:v1:G(2);S;S")
    done = subprocess.run(cmd[:4] + [str(fixed), "--out", str(tmp_path / "run_b"), "--search-only"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "it has no search" in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "run_b").exists()


@pytest.mark.parametrize("bad", [["--jobs", "0"], ["--jobs", "-1"], ["--group", "0"], ["--jobs", "0", "--dry-run"]])
def test_jobs_and_group_are_checked_before_anything_is_written(tmp_path: Path, bad: list[str]) -> None:
    paths = [str(_teacher_recipe(tmp_path)), str(_student_recipe(tmp_path, "wrn_10_1_a.tiny", genotype="wrn_10_1"))]
    cmd = [sys.executable, "-m", "blockswap_zoo", "reproduce", *paths, "--out", str(tmp_path / "runs"), *bad]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "must be >= 1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_run_folders_and_logs_that_are_links_are_refused(tmp_path: Path) -> None:
    """Nothing is written through a symbolic link: not a run into a linked folder, not a log into a linked file."""
    from blockswap_zoo.reproduce_many import _open_log

    paths = [str(_teacher_recipe(tmp_path)), str(_student_recipe(tmp_path, "wrn_10_1_a.tiny", genotype="wrn_10_1"))]
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "runs"
    elsewhere.mkdir()
    out.mkdir()
    (out / "wrn_10_1_a.tiny").symlink_to(elsewhere, target_is_directory=True)
    cmd = [sys.executable, "-m", "blockswap_zoo", "reproduce", *paths, "--out", str(out), "--max-steps", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is a symbolic link" in " ".join(done.stderr.split()), done.stderr
    assert list(elsewhere.iterdir()) == [] and not (out / "wrn_10_1.tiny").exists()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "reproduce.log").symlink_to(victim)
    with pytest.raises(RecipeError, match="is a symbolic link"):
        _open_log(tmp_path / "reproduce.log")
    assert victim.read_text() == "keep"


def test_sigterm_stops_every_run_it_started(tmp_path: Path) -> None:
    import signal
    import time

    teacher = _teacher_recipe(tmp_path)
    d = yaml.safe_load(teacher.read_text())
    d["train"] = TRAIN | {"epochs": 1000}  # far too long to finish first
    teacher.write_text(yaml.safe_dump(d))
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "blockswap_zoo", "reproduce", str(teacher), "--out", str(out), "--jobs", "2",
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (out / "wrn_10_1.tiny" / "student" / "metrics.jsonl").is_file():
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "rerun the same command to resume" in " ".join(err.split()), err[-2000:]
        time.sleep(1)
        running = [p for p in Path("/proc").glob("[0-9]*") if str(teacher) in _cmdline(p)]
        assert running == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
