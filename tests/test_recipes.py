"""Recipes parse and resolve; bad recipes name the field and file; reproduce runs end to end."""

import json
from pathlib import Path

import pytest
import yaml

from blockswap_zoo.recipe import RecipeError, list_recipes, load_recipe, parse_recipe
from blockswap_zoo.reproduce import plan, reproduce, student_genotype_of

OFFICIAL = Path(__file__).resolve().parents[1] / "blockswap_zoo" / "recipes" / "wrn_40_2_bs400k.fmnist_at.yaml"


@pytest.mark.parametrize("path", list_recipes(), ids=lambda p: p.stem)
def test_every_recipe_parses_and_resolves(path: Path) -> None:
    r = load_recipe(path)
    assert r.name == path.stem and len(r.sha256) == 64
    p = plan(r)
    assert p["total_train_macs"] > 0 and p["student"]["steps"] > 0
    if r.student.genotype:
        assert student_genotype_of(r) is not None


def _official() -> dict:
    return yaml.safe_load(OFFICIAL.read_text())


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d["train"].update(lr_typo=0.1), "train: unknown key(s) 'lr_typo'"),
        (lambda d: d["train"].update(epochs="ten"), "train.epochs: expected int"),
        (lambda d: d.pop("dataset"), "dataset: required field is missing"),
        (lambda d: d["dataset"].update(name="mnist"), "dataset.name: expected one of"),
        (lambda d: d["student"]["search"].update(proxy="magic"), "student.search.proxy"),
        (lambda d: d["student"].update(genotype="wrn_40_1"), "exactly one of 'genotype' or 'search'"),
        (lambda d: d["student"]["search"].update(budget="lots"), "student.search.budget"),
        (lambda d: d.update(name="nodot"), "must be 'arch.tag'"),
        (lambda d: d["teacher"].update(name="wrn_16_1.fmnist"), "teacher.name"),
        (lambda d: d["student"]["search"].update(backbone="resnet50"), "student.search.backbone"),
        (lambda d: d["student"]["search"].update(samples=0), "student.search.samples"),
        (lambda d: d["student"]["search"].update(tolerance=-1.0), "student.search.tolerance"),
        (lambda d: d["student"]["search"].update(samples=10**30), "student.search.samples"),
        (lambda d: d.update(name="../Escaped.x"), "lowercase letters, digits and underscores"),
        (lambda d: d.update(teacher={"arch": "wrn_16_1", "pretrained": "wrn_40_2.fmnist"}), "make them agree"),
        (lambda d: d["student"]["search"].update(latency="2ms"), "give exactly one of budget"),
        (lambda d: d["student"]["search"].update(max_params="300k"), "max_params: only with a latency budget"),
        (lambda d: d["student"]["search"].update(budget=None, latency="soon"), "student.search.latency"),
        (lambda d: d["student"]["search"].update(budget=None, latency=2, latency_batch=0), "latency_batch"),
        (lambda d: d["student"]["search"].update(budget=None, latency=2, latency_device="tpu"), "latency_device"),
        (lambda d: d["student"]["search"].update(budget=None, latency=2, max_params="x"), "search.max_params"),
    ],
)
def test_bad_recipes_name_field_and_file(edit, fragment: str) -> None:
    d = _official()
    edit(d)
    with pytest.raises(RecipeError) as e:
        parse_recipe(yaml.safe_dump(d), "bad.yaml")
    assert "bad.yaml" in str(e.value) and fragment in str(e.value)


def test_recipes_never_run_code(tmp_path: Path) -> None:
    evil = "!!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']"
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe(f"name: {evil}\n", "evil.yaml")
    assert not (tmp_path / "pwned").exists()


def test_yaml_aliases_are_refused_before_they_expand() -> None:
    laughs = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nname: *b\n'
    with pytest.raises(RecipeError, match="aliases"):
        parse_recipe(laughs, "laughs.yaml")


def test_unknown_recipe_lists_shipped_ones() -> None:
    with pytest.raises(RecipeError, match="wrn_40_2_bs400k.fmnist_at"):
        load_recipe("no_such_recipe")


def test_reproduce_smoke_end_to_end_on_fashion_mnist(tmp_path: Path) -> None:
    """Teacher training, a search, distillation, evaluation on the real test set, checkpoint and card."""
    d = _official()
    d["teacher"].update(arch="wrn_16_1", name="wrn_16_1.fmnist")
    d["student"]["search"].update(backbone="wrn_10_1", budget="40k", samples=4)
    src = tmp_path / "tiny.yaml"
    src.write_text(yaml.safe_dump(d))
    r = load_recipe(src)
    result = reproduce(r, tmp_path / "run", max_steps=2, device="cpu")
    ckpt = result.checkpoint_dir
    assert {"model.safetensors", "config.json", "README.md", "recipe.yaml"} <= {p.name for p in ckpt.iterdir()}
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["smoke"] is True and cfg["recipe_sha256"] == r.sha256 and cfg["metrics"]["n"] == 10_000
    assert "model-index" in (ckpt / "README.md").read_text()
    from blockswap_zoo import create_model

    model = create_model(f"local-dir:{ckpt}")
    assert model.genotype.to_dict() == cfg["genotype"] and model.in_chans == 1
    assert cfg["teacher"] == "wrn_16_1.fmnist" and "student 2 epochs" not in cfg["training"]
    teacher_cfg = json.loads((tmp_path / "run" / "teacher_checkpoint" / "config.json").read_text())
    assert teacher_cfg["name"] == "wrn_16_1.fmnist" and teacher_cfg["role"] == "teacher" and teacher_cfg["smoke"]
    assert "A teacher for BlockSwap" in (tmp_path / "run" / "teacher_checkpoint" / "README.md").read_text()
    # a finished run resumes as a no-op and refuses to be clobbered without --force
    assert reproduce(r, tmp_path / "run", resume=True, max_steps=2, device="cpu").metrics == result.metrics
    with pytest.raises(FileExistsError, match="--resume"):
        reproduce(r, tmp_path / "run", max_steps=2, device="cpu")
    # a smoke run stays one: resuming it as a full run would label its 2-step stages a full checkpoint
    with pytest.raises(FileExistsError, match=r"smoke run \(--max-steps 2\)"):
        reproduce(r, tmp_path / "run", resume=True, device="cpu")
    assert json.loads((ckpt / "config.json").read_text())["smoke"] is True


def test_a_latency_budget_reaches_the_search(tmp_path: Path, monkeypatch) -> None:
    """A recipe's latency budget becomes run_search's LatencyBudget (device, batch, dtype, parameter cap)."""
    from blockswap_zoo import reproduce as reproduce_module
    from blockswap_zoo.genotype import Genotype

    d = _official()
    d["student"]["search"].update(budget=None, latency="2.5ms", latency_batch=8, max_params=300000)
    src = tmp_path / "lat.yaml"
    src.write_text(yaml.safe_dump(d))
    r = load_recipe(src)
    seen = {}

    def fake_search(backbone, budget, samples, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw, budget=budget)
        return type("R", (), {"winner": Genotype.uniform("wrn_40_2", "G(N)")})()

    monkeypatch.setattr("blockswap_zoo.search.run_search", fake_search)
    assert reproduce_module._search(r, tmp_path / "run", "cpu", None, False) == Genotype.uniform("wrn_40_2", "G(N)")
    lat = seen["latency"]
    assert seen["budget"] is None and (lat.ms, lat.device, lat.batch, lat.max_params) == (2.5, "cpu", 8, 300_000)
    assert plan(r)["search"]["latency"] == "2.5ms"


def test_teacher_may_be_a_plain_backbone() -> None:
    d = _official()
    d["teacher"].update(arch="wrn_10_1", name="wrn_10_1.fmnist")  # not a registered arch: the all-S backbone
    r = parse_recipe(yaml.safe_dump(d), "backbone.yaml")
    assert plan(r)["teacher"]["train"]["genotype"] == "wrn_10_1:v1:S;S;S"
    d["teacher"]["arch"] = "wrn_10_9x"
    with pytest.raises(RecipeError, match="backbone.yaml"):
        parse_recipe(yaml.safe_dump(d), "backbone.yaml")


def test_checkpoint_keeps_the_training_runs_class_names(tmp_path: Path, monkeypatch) -> None:
    """An image-folder run names its classes after the folders; the checkpoint must keep those names."""
    import blockswap_zoo.reproduce as reproduce_module
    import blockswap_zoo.train as train_package
    from blockswap_zoo import create_model

    monkeypatch.setattr(train_package, "evaluate", lambda *a, **k: {"top1": 50.0, "top5": 90.0, "n": 4})
    stage = tmp_path / "student"
    stage.mkdir()
    (stage / "config.json").write_text(json.dumps({"label_names": ["cat", "dog"]}))
    model = create_model("wrn_16_1", num_classes=10, in_chans=1)
    cfg = reproduce_module._write_checkpoint(
        model, tmp_path / "ckpt", load_recipe(OFFICIAL), name="wrn_16_1.test", role="student",
        description="d", teacher=None, training="t", stage_dir=stage,
    )  # fmt: skip
    assert cfg["label_names"] == ["cat", "dog"]
    no_run = reproduce_module._write_checkpoint(
        model, tmp_path / "ckpt2", load_recipe(OFFICIAL), name="wrn_16_1.test", role="student",
        description="d", teacher=None, training="t", stage_dir=tmp_path / "none",
    )  # fmt: skip
    assert no_run["label_names"][0] == "T-shirt/top"  # the dataset's own names otherwise


def test_a_key_given_twice_is_refused() -> None:
    text = OFFICIAL.read_text() + "\nname: other.tag\n"  # YAML would silently keep the last
    with pytest.raises(RecipeError, match="'name' appears twice"):
        parse_recipe(text, "twice.yaml")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d["student"]["search"].update(budget="10m"), "student.search: no genotype"),
        (lambda d: d["train"].update(step_size=0), "train: step_size must be a positive integer"),
        (lambda d: d["student"].update(search=None, genotype="resnet34_bs3083k"), "stages but the teacher"),
    ],
)
def test_what_a_stage_would_refuse_is_refused_before_anything_runs(tmp_path: Path, edit, fragment: str) -> None:
    from blockswap_zoo.reproduce import preflight

    d = _official()
    edit(d)
    if d["student"].get("search") is None:
        d["student"].pop("search")
    src = tmp_path / "r.yaml"
    src.write_text(yaml.safe_dump(d))
    r = load_recipe(src)
    with pytest.raises(RecipeError, match=fragment):
        preflight(r)
    with pytest.raises(RecipeError, match=fragment):
        reproduce(r, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()  # nothing written that would block the corrected command


def test_reproduce_force_replaces_only_runs(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a reproduce run"):
        reproduce(load_recipe(OFFICIAL), mine, force=True, device="cpu")
    with pytest.raises(RecipeError, match="--max-steps must be >= 1"):
        reproduce(load_recipe(OFFICIAL), tmp_path / "zero", max_steps=0, device="cpu")
    assert (mine / "notes.txt").read_text() == "keep" and not (tmp_path / "zero").exists()


def test_a_shipped_recipe_is_found_by_its_reference_from_anywhere(tmp_path: Path, monkeypatch) -> None:
    """Records name recipes as ``recipes/<file>``: that works from any folder, and never leaves the package."""
    from blockswap_zoo.recipe import recipe_reference, shipped_recipe

    monkeypatch.chdir(tmp_path)
    reference = recipe_reference(OFFICIAL)
    assert reference == "recipes/wrn_40_2_bs400k.fmnist_at.yaml"
    assert load_recipe(reference).sha256 == load_recipe(OFFICIAL).sha256
    assert shipped_recipe("recipes/../recipe.py") is None and shipped_recipe("recipes/nothing.yaml") is None
    (tmp_path / "mine.yaml").write_text(OFFICIAL.read_text())
    assert recipe_reference(tmp_path / "mine.yaml") == str((tmp_path / "mine.yaml").resolve())
