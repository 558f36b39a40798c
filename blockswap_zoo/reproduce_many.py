"""Several ``reproduce`` runs at once on one device: each recipe in its own process and run directory,
resumable on its own, a teacher that several recipes train alike trained once and shared.

A GPU runs small trainings far below its capacity; several processes fill it, but only under NVIDIA MPS
(without it the GPU time-slices between processes). Each run is ``python -m blockswap_zoo reproduce
RECIPE --out OUT/NAME --resume``, logging to ``OUT/NAME/reproduce.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .recipe import Recipe, RecipeError
from .sources import resolve_genotype

__all__ = [
    "RunState",
    "group_runs",
    "link_shared_teachers",
    "plan_runs",
    "run_many",
    "seed_searches",
    "shared_teacher_of",
]

LOG_NAME = "reproduce.log"
SEARCH_KEYS = ("backbone", "metric", "tolerance", "samples", "proxy", "mode", "seed", "dataset")


def _teacher_key(r: Recipe) -> tuple | None:
    """What a recipe's trained teacher depends on; None when it trains none."""
    t = r.teacher
    if t is None or t.train is None:
        return None
    return (r.dataset, r.seed, resolve_genotype(t.arch).to_string(), t.train)


def _provides_key(r: Recipe) -> tuple | None:
    """The teacher key a recipe's own product equals: a recipe with no teacher, trained from labels alone."""
    if r.teacher is not None or r.student.genotype is None:
        return None
    return (r.dataset, r.seed, resolve_genotype(r.student.genotype).to_string(), r.train)


def shared_teacher_of(recipe: Recipe, recipes: list[Recipe]) -> Recipe | None:
    """The recipe among ``recipes`` whose product is exactly ``recipe``'s teacher stage (same network, data,
    seed and schedule), so the teacher is trained once; None when there is none."""
    key = _teacher_key(recipe)
    return None if key is None else next((r for r in recipes if r is not recipe and _provides_key(r) == key), None)


def plan_runs(recipes: list[Recipe]) -> list[list[Recipe]]:
    """Phases to run in order: the recipes others take their teacher from, then the rest."""
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise RecipeError(f"a recipe is given twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    providers = {id(p): p for r in recipes if (p := shared_teacher_of(r, recipes)) is not None}
    first = [r for r in recipes if id(r) in providers]
    rest = [r for r in recipes if id(r) not in providers]
    return [phase for phase in (first, rest) if phase]


def link_shared_teachers(recipes: list[Recipe], out: Path) -> dict[str, str]:
    """Point each run's ``teacher`` stage at the run that trains that teacher (``OUT/PROVIDER/student``),
    and its ``teacher_checkpoint`` at that run's checkpoint, so the teacher is neither trained nor
    evaluated again; returns run name -> provider name. A run that already holds a teacher stage of its
    own keeps it."""
    linked = {}
    for r in recipes:
        provider = shared_teacher_of(r, recipes)
        if provider is None:
            continue
        run = out / r.name
        if (run / "teacher").exists() and not (run / "teacher").is_symlink():
            continue
        run.mkdir(parents=True, exist_ok=True)
        for name, target in (("teacher", "student"), ("teacher_checkpoint", "checkpoint")):
            link = run / name
            if link.is_symlink():
                link.unlink()
            if not link.exists():
                link.symlink_to(Path("..") / provider.name / target, target_is_directory=True)
        linked[r.name] = provider.name
    return linked


def seed_searches(recipes: list[Recipe], searches: Path, out: Path) -> dict[str, Path]:
    """Copy a finished search report into each run whose own search has not run: ``SEARCHES/NAME`` after
    checking it was made with the recipe's settings, else any report in SEARCHES made with exactly those
    settings (so zoos that differ only in their schedules share their searches); returns run name -> report."""
    seeded = {}
    for r in recipes:
        s = r.student.search
        target = out / r.name / "search"
        if s is None or target.exists():
            continue
        wanted = _search_settings(r)
        report = searches / r.name
        if (report / "winner.json").is_file():
            differs = _differences(report, wanted)
            if differs:
                raise RecipeError(f"{report} was not searched with {r.source}'s settings ({'; '.join(differs)})")
        else:
            found = [
                d for d in sorted(searches.iterdir()) if (d / "winner.json").is_file() and not _differences(d, wanted)
            ]
            if not found:
                continue
            report = found[0]
        _check_seeded_report(report, r)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(report, target)
        seeded[r.name] = report
    return seeded


def _check_seeded_report(report: Path, r: Recipe) -> None:
    """A report seeded into a run is finished and says what it claims: every candidate readable, the winner the
    best-scoring one, of the recipe's backbone and within its budget. Checked before anything trains."""
    from .search import ReportError, load_report, parse_budget
    from .search.runner import best_candidate

    s = r.student.search
    assert s is not None
    try:
        result = load_report(report)
    except (ReportError, ValueError, KeyError, TypeError, OSError) as e:  # unfinished, a truncated line, a missing file
        raise RecipeError(f"--searches: {report} cannot seed {r.name}: {e}") from None
    problems = []
    try:
        best = best_candidate(result.candidates, s.proxy)  # the search's own rule for its winner
    except ValueError as e:
        raise RecipeError(f"--searches: {report} cannot seed {r.name}: {e}") from None
    if result.winner.to_string() != best.genotype:
        problems.append(f"its winner is not its best-scoring candidate ({best.index})")
    if result.winner.backbone != s.backbone:
        problems.append(f"its winner is a {result.winner.backbone}, the recipe searches {s.backbone}")
    if s.budget is not None and s.metric == "params":
        budget, n = (
            parse_budget(s.budget),
            result.winner.num_params(result.settings.num_classes, result.settings.in_chans),
        )
        if abs(n - budget) > s.tolerance * budget:
            problems.append(
                f"its winner has {n:,} parameters, outside the recipe's budget {budget:,} +-{s.tolerance:.1%}"
            )
    if problems:
        raise RecipeError(f"--searches: {report} cannot seed {r.name}: {'; '.join(problems)}")


def _search_settings(r: Recipe) -> dict[str, object]:
    """The settings a search report must have been made with to serve ``r``."""
    from .search import parse_budget

    s = r.student.search
    assert s is not None
    wanted = {k: getattr(s, k, None) for k in SEARCH_KEYS} | {"dataset": r.dataset.name}
    if s.budget is not None:
        wanted["budget"] = parse_budget(s.budget)
    return wanted


def _differences(report: Path, wanted: dict[str, object]) -> list[str]:
    """Each setting in which ``report``'s settings.json differs from ``wanted``."""
    saved = json.loads((report / "settings.json").read_text(encoding="utf-8"))
    return [f"{k}: report {saved.get(k)!r}, recipe {v!r}" for k, v in wanted.items() if saved.get(k) != v]


@dataclass
class RunState:
    """One run's progress, read from its run directory."""

    recipe: Recipe
    run_dir: Path
    state: str = "waiting"  # waiting, running, done, failed, missed, skipped, stopped
    returncode: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)  # shared by the runs of a group
    message: str = ""
    log: Path | None = None  # its process's log: its own, or its group's (in the group's first run)

    @property
    def has_checkpoint(self) -> bool:
        """Whether the run has written its checkpoint (it finished, in this call or an earlier one)."""
        return (self.run_dir / "checkpoint" / "model.safetensors").is_file()

    def stage(self) -> str:
        """The stage the run is in and its epoch, from the files its stages write."""
        if self.has_checkpoint:
            return "checkpoint written"
        if (self.run_dir / "student" / "model.safetensors").is_file():
            return "evaluating"
        for name, spec in (
            ("student", self.recipe.train),
            ("teacher", self.recipe.teacher and self.recipe.teacher.train),
        ):
            metrics = self.run_dir / name / "metrics.jsonl"
            if metrics.is_file() and not (self.run_dir / name / "model.safetensors").is_file():
                epochs = sum(1 for line in metrics.read_text().splitlines() if line.strip())
                return f"{name} epoch {epochs}/{spec.epochs if spec else '?'}"
        candidates = self.run_dir / "search" / "candidates.jsonl"
        if candidates.is_file() and not (self.run_dir / "search" / "winner.json").is_file():
            return f"search {sum(1 for _ in candidates.open())} candidates"
        return "starting" if self.state == "running" else ""


def _command(unit: list[RunState], out: Path, device: str, max_steps: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "blockswap_zoo", "reproduce", *(run.recipe.source for run in unit)]
    if len(unit) == 1:
        cmd += ["--out", str(unit[0].run_dir), "--resume"]
    else:
        cmd += ["--out", str(out), "--together"]
    return cmd + ["--device", device] + ([] if max_steps is None else ["--max-steps", str(max_steps)])


def group_runs(recipes: list[Recipe], size: int) -> list[list[Recipe]]:
    """``recipes`` in units of one process each, in order: students that distil from the same trained teacher
    with the same data, seed and schedule go ``size`` to a unit (their teacher runs once per batch), others alone."""
    from .reproduce import distill_group_key

    units: list[list[Recipe]] = []
    open_units: dict[tuple, list[Recipe]] = {}
    for r in recipes:
        key = distill_group_key(r)
        if key is None or size == 1:
            units.append([r])
            continue
        unit = open_units.get(key)
        if unit is None or len(unit) >= size:
            unit = open_units[key] = []
            units.append(unit)
        unit.append(r)
    return units


def _finish(run: RunState, rc: int) -> None:
    run.returncode = rc
    run.state = "done" if rc == 0 and run.has_checkpoint else "missed" if rc == 1 and run.has_checkpoint else "failed"
    log_path = run.log or run.run_dir / LOG_NAME
    log = log_path.read_text(errors="replace").strip().splitlines() if log_path.is_file() else []
    run.message = next(
        (line for line in reversed(log) if line.startswith(run.recipe.name + ":")), log[-1] if log else ""
    )


def _open_log(path: Path) -> IO[bytes]:
    """A run's log, opened to append without following a symbolic link (a link is refused, naming it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if path.is_symlink():
            raise RecipeError(
                f"{path} is a symbolic link; a run writes its log only inside its folder: remove it"
            ) from None
        raise
    return os.fdopen(fd, "ab")


def _child_env(at_once: int) -> dict[str, str]:
    """The environment of a run's process: the CPU cores shared out among the processes that run at once
    (small students train faster as two one-thread processes than as one two-thread process: docs/benchmarks.md),
    unless the caller set OMP_NUM_THREADS."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env and at_once > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // at_once))
    return env


def _finished_message(run: RunState) -> str:
    metrics = json.loads((run.run_dir / "checkpoint" / "config.json").read_text(encoding="utf-8"))["metrics"]
    return f"{run.recipe.name}: top-1 {metrics['top1']:.2f}% (finished earlier)"


def run_many(
    recipes: list[Recipe],
    out: Path,
    jobs: int,
    device: str = "auto",
    max_steps: int | None = None,
    on_tick: Callable[[list[RunState]], None] | None = None,
    poll_s: float = 2.0,
    group: int = 1,
) -> list[RunState]:
    """Run every recipe, ``jobs`` processes at a time, phase by phase (``plan_runs``), students that share a
    teacher pass ``group`` to a process (``group_runs``); a run whose shared teacher failed is skipped.
    ``on_tick`` sees every run's state every ``poll_s`` seconds."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if group < 1:
        raise ValueError(f"--group must be >= 1, got {group}")
    runs = {r.name: RunState(r, out / r.name) for r in recipes}
    ordered = list(runs.values())
    try:
        for phase in plan_runs(recipes):
            todo = []
            for r in phase:
                run = runs[r.name]
                provider = shared_teacher_of(r, recipes)
                if provider is not None and runs[provider.name].state not in ("done", "missed"):
                    run.state, run.message = "skipped", f"its teacher's run {provider.name} did not finish"
                elif run.has_checkpoint:  # finished in an earlier call: not evaluated again
                    run.state, run.message = "done", _finished_message(run)
                else:
                    todo.append(r)
            pending = [[runs[r.name] for r in unit] for unit in group_runs(todo, group)]
            active: list[list[RunState]] = []
            env = _child_env(min(jobs, len(pending)))
            if on_tick is not None and not pending:  # the phase was done already: still shown
                on_tick(ordered)
            while pending or active:
                while pending and len(active) < jobs:
                    unit = pending.pop(0)
                    for run in unit:
                        run.run_dir.mkdir(parents=True, exist_ok=True)
                        run.log = unit[0].run_dir / LOG_NAME
                    with _open_log(unit[0].run_dir / LOG_NAME) as log:
                        process = subprocess.Popen(_command(unit, out, device, max_steps), stdout=log,
                                                   stderr=subprocess.STDOUT, env=env)  # fmt: skip
                    for run in unit:
                        run.process, run.state = process, "running"
                    active.append(unit)
                for unit in list(active):
                    assert unit[0].process is not None
                    rc = unit[0].process.poll()
                    if rc is not None:
                        for run in unit:
                            _finish(run, rc)
                        active.remove(unit)
                if on_tick is not None:
                    on_tick(ordered)
                if active:
                    time.sleep(poll_s)
    finally:
        for run in ordered:  # interrupted: stop the children, whose runs resume later
            if run.process is not None and run.process.poll() is None:
                run.process.terminate()
                run.process.wait()
            if run.state == "running":
                run.state = "stopped"
    return ordered
