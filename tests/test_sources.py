"""One parser for every model name: each kind a user may give, what it means, and the commands that use it."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from blockswap_zoo import Genotype, create_model
from blockswap_zoo.checkpoint import save_checkpoint_dir
from blockswap_zoo.cli import app
from blockswap_zoo.factory import load_trained
from blockswap_zoo.registry import UnknownModelError
from blockswap_zoo.sources import model_shape, parse_source, recorded_dataset, resolve_genotype
from blockswap_zoo.train.checkpoint import save_checkpoint

GENOTYPE = "wrn_10_1:v1:BG(2,M/2);G(4);S"
runner = CliRunner()


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, Path]:
    """A checkpoint directory, an interrupted run (checkpoint.pt only) and a search report, on disk."""
    torch.manual_seed(0)
    model = create_model(GENOTYPE, num_classes=5, in_chans=1).eval()
    ckpt = tmp_path / "run.v2"  # a dot in the folder name: not an arch.tag
    save_checkpoint_dir(model, ckpt, {"dataset": "fashion_mnist", "input_size": [1, 28, 28]})
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    config = {"genotype": model.genotype.to_dict(), "num_classes": 5, "in_chans": 1, "dataset": "fashion_mnist",
              "input_size": [1, 28, 28]}  # fmt: skip
    save_checkpoint(interrupted / "checkpoint.pt", {"model": model.state_dict(), "model_config": config})
    report = tmp_path / "search"
    report.mkdir()
    model.genotype.save(report / "winner.json")
    (report / "summary.json").write_text(json.dumps({"num_classes": 5, "in_chans": 1, "input_size": [1, 28, 28]}))
    return {"checkpoint": ckpt, "interrupted": interrupted, "report": report}


def test_every_kind_of_name_parses_to_its_source(folders: dict[str, Path]) -> None:
    g = Genotype.parse(GENOTYPE)
    cases = {
        "wrn_40_2_bs811k": ("arch", None),
        "wrn_40_2_bs400k.fmnist_at": ("arch", "fmnist_at"),
        "wrn_10_1": ("backbone", None),
        GENOTYPE: ("genotype", None),
        g.to_json(): ("genotype", None),
        str(folders["report"]): ("search_report", None),
        str(folders["report"] / "winner.json"): ("genotype_file", None),
        str(folders["checkpoint"]): ("checkpoint_dir", None),
        str(folders["checkpoint"] / "model.safetensors"): ("checkpoint_dir", None),
        f"local-dir:{folders['checkpoint']}": ("checkpoint_dir", None),
        str(folders["interrupted"]): ("training_checkpoint", None),
        str(folders["interrupted"] / "checkpoint.pt"): ("training_checkpoint", None),
        "hf-hub:org/name@v1": ("hf_hub", None),
    }
    for text, (kind, tag) in cases.items():
        source = parse_source(text)
        assert (source.kind, source.tag) == (kind, tag), text
    assert parse_source("hf-hub:org/name@v1").revision == "v1"
    assert parse_source(str(folders["report"])).genotype == g
    assert not parse_source("wrn_40_2").names_weights and parse_source("wrn_40_2.fmnist").names_weights


def test_bad_names_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="did you mean"):
        parse_source("wrn_40_2_bs811")
    with pytest.raises(UnknownModelError, match="write hf-hub:ORG/NAME"):
        parse_source("hf-hub:just-a-name")
    with pytest.raises(UnknownModelError, match="neither a model name nor a valid genotype"):
        parse_source("wrn_10_1:v1:S")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        parse_source(str(tmp_path / "runs" / "typo"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither model.safetensors nor checkpoint.pt"):
        parse_source(str(tmp_path / "empty"))
    with pytest.raises(UnknownModelError, match="names trained weights, not a network"):
        resolve_genotype("hf-hub:org/name")


def test_a_folder_named_like_an_arch_never_shadows_it_in_create_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folders: dict[str, Path]
) -> None:
    monkeypatch.chdir(tmp_path)
    folders["checkpoint"].rename(tmp_path / "wrn_16_1")
    assert parse_source("wrn_16_1").kind == "checkpoint_dir"  # the CLI reads what is on disk ...
    assert parse_source("wrn_16_1", files=False).kind == "arch"  # ... create_model does not
    assert create_model("wrn_16_1").genotype == Genotype.uniform("wrn_16_1")


def test_shape_dataset_and_weights_of_each_source(folders: dict[str, Path]) -> None:
    for key in ("checkpoint", "interrupted", "report"):
        shape = model_shape(parse_source(str(folders[key])))
        assert (shape.genotype.to_string(), shape.num_classes, shape.in_chans) == (GENOTYPE, 5, 1), key
        assert shape.input_size[0] == 1
    published = model_shape(parse_source("wrn_40_2_bs400k.fmnist_at"))
    assert (published.num_classes, published.in_chans, published.input_size) == (10, 1, (1, 28, 28))
    assert model_shape(parse_source("wrn_10_1")).label == "wrn_10_1 (backbone)"
    assert recorded_dataset(parse_source(str(folders["checkpoint"]))) == "fashion_mnist"
    assert recorded_dataset(parse_source(str(folders["interrupted"]))) == "fashion_mnist"
    assert recorded_dataset(parse_source("wrn_40_2_bs400k.fmnist_at")) == "fashion_mnist"
    assert recorded_dataset(parse_source("wrn_40_2")) is None
    a = load_trained(parse_source(str(folders["checkpoint"])))
    b = load_trained(parse_source(str(folders["interrupted"])), num_classes=3)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items() if not k.startswith("fc."))
    assert b.num_classes == 3
    with pytest.raises(FileNotFoundError, match="names an architecture, not trained weights"):
        load_trained(parse_source(str(folders["report"])))


def test_info_and_export_take_every_kind_of_name(tmp_path: Path, folders: dict[str, Path]) -> None:
    """A dotted file path is a file, not arch.tag: ``info`` and ``export`` never ask for published weights."""
    for name in (str(folders["report"] / "winner.json"), str(folders["checkpoint"]), str(folders["interrupted"])):
        res = runner.invoke(app, ["info", name, "--json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert (data["compact"], data["num_classes"], data["input_size"]) == (GENOTYPE, 5, [1, 28, 28])
    target = tmp_path / "out.pt2"
    res = runner.invoke(app, ["export", str(folders["checkpoint"]), "--format", "export", "--out", str(target)])
    assert res.exit_code == 0 and target.is_file(), res.output


def test_download_takes_only_names_with_something_to_fetch(tmp_path: Path) -> None:
    res = runner.invoke(app, ["download", f"local-dir:{tmp_path}"])
    assert res.exit_code == 2 and "is a checkpoint dir" in " ".join(res.stderr.split())
    res = runner.invoke(app, ["download", "wrn_10_1:v1:S;S;S"])
    assert res.exit_code == 2 and "download fetches published weights" in " ".join(res.stderr.split())
    res = runner.invoke(app, ["download", "wrn_40_2_bs400k.fmnist_at"])  # in this checkout: verified in place
    assert res.exit_code == 0 and "sha256 verified" in " ".join(res.stdout.split())  # rich wraps long paths


def test_a_hub_source_is_pulled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands ask a source for its shape and then its weights: one pull (one Hub round trip) serves both."""
    import blockswap_zoo.hf as hf
    from blockswap_zoo.sources import checkpoint_directory

    pulls: list[tuple[str, str | None]] = []
    monkeypatch.setattr(hf, "pull_hf_hub", lambda repo, rev=None: pulls.append((repo, rev)) or tmp_path)
    source = parse_source("hf-hub:org/name@v1")
    assert checkpoint_directory(source) == checkpoint_directory(source) == tmp_path
    assert pulls == [("org/name", "v1")]


def test_export_default_file_names_never_become_paths() -> None:
    """A revision or repo name given by the user becomes a file name in the working directory, never a path."""
    from blockswap_zoo.cli.app import _file_stem

    g = Genotype.uniform("wrn_10_1")
    for name in ("hf-hub:org/net@../../..", "hf-hub:org/net@main/../../x", "hf-hub:org/..@v1"):
        stem = _file_stem(parse_source(name, files=False), g)
        assert "/" not in stem and not stem.startswith(".") and stem, (name, stem)
