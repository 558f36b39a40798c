"""The published checkpoints: each loads sha256-verified by name and reproduces its recorded
test accuracy on the real Fashion-MNIST test set (the README and model cards quote these records)."""

from pathlib import Path

import pytest
import torch

from blockswap_zoo import create_model
from blockswap_zoo.pretrained import list_pretrained, load_records
from blockswap_zoo.registry import get_arch
from blockswap_zoo.train import evaluate

PUBLISHED = list_pretrained()


def test_there_is_a_published_checkpoint() -> None:
    assert PUBLISHED, "no published checkpoint: blockswap_zoo/pretrained.json is empty"


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_recorded_accuracy_reproduces(name: str) -> None:
    w = load_records()[name]
    got = evaluate(create_model(name, pretrained=True), w.dataset)
    assert got["n"] == 10_000
    assert abs(got["top1"] - w.metrics["top1"]) <= 0.05, (got, w.metrics)
    assert abs(got["top5"] - w.metrics["top5"]) <= 0.05, (got, w.metrics)


@pytest.mark.parametrize("name", PUBLISHED)
def test_record_matches_the_built_model(name: str) -> None:
    w = load_records()[name]
    model = create_model(name, pretrained=True)
    arch_params = get_arch(w.arch).genotype.num_params(w.num_classes, w.in_chans)
    assert sum(p.numel() for p in model.parameters()) == w.params == arch_params
    assert model.genotype.to_string() == w.genotype and model.in_chans == w.in_chans
    assert model.genotype.macs(w.num_classes, w.in_chans, w.input_size[1:]) == w.macs


@pytest.mark.parametrize("name", PUBLISHED)
def test_new_classifier_keeps_every_other_weight(name: str) -> None:
    w = load_records()[name]
    base = create_model(name, pretrained=True).eval()
    tuned = create_model(name, pretrained=True, num_classes=3).eval()
    x = torch.randn(2, *w.input_size)
    assert tuned.get_classifier().out_features == 3
    torch.testing.assert_close(tuned.forward_features(x), base.forward_features(x), rtol=0, atol=0)


def test_cli_evaluate_knows_the_published_dataset() -> None:
    import json

    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    name = PUBLISHED[0]
    w = load_records()[name]
    local = "local-dir:" + str(Path(__file__).parents[1] / Path(w.file).parent)  # its config.json names it
    for target in (name, local):
        r = CliRunner().invoke(app, ["evaluate", target, "--subset", "256", "--device", "cpu", "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert out["dataset"] == w.dataset and out["n"] == 256


def test_pretrained_may_name_the_tag() -> None:
    from blockswap_zoo.checkpoint import WeightsError

    name = PUBLISHED[0]
    arch, tag = name.split(".", 1)
    by_tag = create_model(arch, pretrained=tag)
    assert by_tag.pretrained_cfg["name"] == name and isinstance(by_tag.pretrained_cfg["input_size"], (list, tuple))
    with pytest.raises(WeightsError, match="no published weights"):
        create_model(arch, pretrained="no_such_tag")


def test_cli_lists_published_weights() -> None:
    import json

    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    r = CliRunner().invoke(app, ["list", "--pretrained", "--json"])
    assert r.exit_code == 0, r.output
    assert [row["name"] for row in json.loads(r.output)] == PUBLISHED
    missing = CliRunner().invoke(app, ["list", "--pretrained", "nothing*"])
    assert missing.exit_code != 0 and "published:" in missing.output


@pytest.mark.parametrize("name", PUBLISHED)
def test_record_names_the_shipped_recipe(name: str) -> None:
    """The shipped recipe (blockswap_zoo/recipes/) is byte for byte the one the checkpoint records (and carries)."""
    from pathlib import Path

    from blockswap_zoo.recipe import load_recipe, shipped_recipe

    w = load_records()[name]
    root = Path(__file__).resolve().parents[1]
    shipped = shipped_recipe(w.recipe)
    assert shipped is not None, f"{w.recipe} is not a shipped recipe"
    recipe = load_recipe(w.recipe)  # the reference itself is what `reproduce` takes
    assert recipe.sha256 == w.extra["recipe_sha256"], "recipe changed since release: reproduce and release again"
    assert (root / Path(w.file).parent / "recipe.yaml").read_text() == shipped.read_text()


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_tag_without_pretrained_is_its_configuration_randomly_initialised(name: str) -> None:
    """As timm: ``create_model("arch.tag")`` has the tag's classes and channels but no weights; the
    command line (evaluate, export, --teacher) reads a tag as the published weights."""
    from blockswap_zoo.train.artifacts import load_model

    w = load_records()[name]
    published = create_model(name, pretrained=True).state_dict()
    fresh = create_model(name)
    assert (fresh.num_classes, fresh.in_chans) == (w.num_classes, w.in_chans)
    assert not torch.equal(fresh.state_dict()["fc.weight"], published["fc.weight"])
    by_cli = load_model(name).state_dict()
    assert all(torch.equal(by_cli[k], published[k]) for k in published)


def test_cli_info_describes_the_published_checkpoint() -> None:
    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    name = PUBLISHED[0]
    w = load_records()[name]
    res = CliRunner().invoke(app, ["info", name])
    assert res.exit_code == 0, res.output
    c, h, wd = w.input_size
    assert f"params {w.params:,}" in res.output and f"at {c}x{h}x{wd}, {w.num_classes} classes" in res.output


def test_cli_export_writes_one_checked_self_contained_file(tmp_path, monkeypatch) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    runner = CliRunner()
    name = PUBLISHED[0]
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", name, "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # weights inside, no temp or data file left

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "onnxruntime" else real(m, *a))
    res = runner.invoke(app, ["export", name, "--format", "onnx", "--out", str(tmp_path / "n.onnx")])
    assert res.exit_code == 2 and "blockswap-zoo[export]" in " ".join(res.stderr.split())
    assert not (tmp_path / "n.onnx").exists()


def test_export_refuses_bad_targets_and_writes_nothing_that_fails_its_check(tmp_path) -> None:
    from blockswap_zoo import create_model
    from blockswap_zoo.export import export_model

    model = create_model("wrn_16_1").train()
    for out, message in [
        (tmp_path / "m.onnx", "a export file is named"),  # torch.export program under an .onnx name
        (tmp_path, "a export file is named"),
    ]:
        with pytest.raises(ValueError, match=message):
            export_model(model, "export", out, (3, 32, 32))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="which is a file"):
        export_model(model, "export", tmp_path / "afile" / "m.pt2", (3, 32, 32))
    check = export_model(model, "export", tmp_path / "strict.pt2", (3, 32, 32), atol=-1.0)  # a check that fails
    assert not check.ok and not (tmp_path / "strict.pt2").exists() and model.training  # mode restored
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_hub_entrypoints_take_in_chans_and_features_only(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    repo = Path(__file__).resolve().parents[1]
    entry = torch.hub.load(str(repo), "wrn_40_2_fmnist", source="local", pretrained=True, in_chans=1, num_classes=0)
    assert isinstance(entry.fc, torch.nn.Identity) and entry.in_chans == 1
    for target in ("wrn_10_1", f"local-dir:{repo / 'weights' / 'wrn_40_2.fmnist'}"):
        res = CliRunner().invoke(app, ["info", target, "--json"])
        assert res.exit_code == 0, res.output
    shown = json.loads(
        CliRunner().invoke(app, ["info", f"local-dir:{repo / 'weights' / 'wrn_40_2.fmnist'}", "--json"]).output
    )
    assert shown["in_chans"] == 1 and shown["input_size"] == [1, 28, 28]
