"""``release``: what it refuses (names that are not arch.tag, smoke runs, missed expectations, a missing
recipe, an existing folder) and what it writes, in a throwaway copy of the repository layout."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from blockswap_zoo import pretrained, release
from blockswap_zoo import recipe as recipe_module
from blockswap_zoo.pretrained import load_records
from blockswap_zoo.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
NAME = "wrn_40_2_bs400k.fmnist_at"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty repository (recipes/ and weights/) that release writes into instead of this checkout."""
    root = tmp_path / "repo"
    shutil.copytree(recipe_module.RECIPES_DIR, root / "recipes")
    (root / "weights").mkdir()
    records = root / "pretrained.json"

    def records_here() -> dict:
        return pretrained.load_records.__wrapped__(records)

    records_here.cache_clear = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(release, "REPO_ROOT", root)
    monkeypatch.setattr(recipe_module, "RECIPES_DIR", root / "recipes")
    monkeypatch.setattr(release, "RECORDS_FILE", records)
    monkeypatch.setattr(release, "load_records", records_here)
    return root


def _checkpoint(tmp_path: Path, source: str = NAME, **changes: object) -> Path:
    """A copy of a published checkpoint's directory with ``changes`` made to its config.json."""
    ck = tmp_path / "ck"
    shutil.copytree(ROOT / "weights" / source, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(changes)
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


def test_release_writes_the_folder_and_the_record(repo: Path, tmp_path: Path) -> None:
    before = (ROOT / "blockswap_zoo" / "pretrained.json").read_text()
    w = release.release_checkpoint(_checkpoint(tmp_path))
    assert w.name == NAME and w.sha256 == load_records()[NAME].sha256
    assert (repo / "weights" / NAME / "model.safetensors").is_file()
    assert [r["name"] for r in json.loads((repo / "pretrained.json").read_text())] == [NAME]
    assert not list((repo / "weights").glob(".release-*"))
    with pytest.raises(FileExistsError, match="--force"):
        release.release_checkpoint(_checkpoint(tmp_path / "again"))
    release.release_checkpoint(_checkpoint(tmp_path / "forced"), force=True)
    teacher = release.release_checkpoint(_checkpoint(tmp_path / "teacher", source="wrn_40_2.fmnist"))
    assert teacher.name == "wrn_40_2.fmnist"  # the recipe's by-product: named by it, no expectation of its own
    assert (ROOT / "blockswap_zoo" / "pretrained.json").read_text() == before  # this checkout untouched


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "../tools"}, "is not 'arch.tag'"),
        ({"name": "wrn_40_2_bs811k.fmnist_at"}, "not the registered wrn_40_2_bs811k's"),
        ({"smoke": True}, "smoke run"),
        ({"metrics": {"top1": 80.0, "top5": 99.0}}, "outside its recipe's expected"),
        ({"recipe": "recipes/not_here.yaml"}, "not in this repository"),
        ({"recipe_sha256": "0" * 64}, "has changed since"),
        ({"recipe": str(ROOT / "blockswap_zoo" / "recipes" / f"{NAME}.yaml")}, "not in this repository"),  # a path
        ({"params": 12_345}, "claims params 12345, but its genotype has 391,114"),
        ({"macs": 999}, "claims macs 999, but its genotype has"),
    ],
)
def test_release_refuses(repo: Path, tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        release.release_checkpoint(_checkpoint(tmp_path, **changes))
    assert list((repo / "weights").iterdir()) == [] and not (repo / "pretrained.json").exists()


def test_a_new_searched_arch_is_released_under_its_own_name(repo: Path, tmp_path: Path) -> None:
    new = "wrn_40_2_bs391k.fmnist_at"  # an arch nobody has registered: its record will
    official = (repo / "recipes" / f"{NAME}.yaml").read_text()
    (repo / "recipes" / f"{new}.yaml").write_text(official.replace(f"name: {NAME}", f"name: {new}"))
    sha = load_recipe(repo / "recipes" / f"{new}.yaml").sha256
    ck = _checkpoint(tmp_path, name=new, recipe=f"recipes/{new}.yaml", recipe_sha256=sha)
    w = release.release_checkpoint(ck)
    assert w.arch == "wrn_40_2_bs391k" and (repo / "weights" / new).is_dir()


def test_an_unrecorded_folder_is_not_deleted_without_force(repo: Path, tmp_path: Path) -> None:
    mine = repo / "weights" / NAME
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        release.release_checkpoint(_checkpoint(tmp_path))
    assert (mine / "keep.txt").read_text() == "mine"


def test_a_config_that_cannot_make_a_record_changes_nothing(repo: Path, tmp_path: Path) -> None:
    release.release_checkpoint(_checkpoint(tmp_path / "first"))
    before = (repo / "pretrained.json").read_text(), sorted(p.name for p in (repo / "weights" / NAME).iterdir())
    ck = _checkpoint(tmp_path / "second")
    cfg = json.loads((ck / "config.json").read_text())
    del cfg["eval_command"]
    (ck / "config.json").write_text(json.dumps(cfg))
    (ck / "extra.txt").write_text("new")
    with pytest.raises(ValueError, match="cannot make a release record"):
        release.release_checkpoint(ck, force=True)
    after = (repo / "pretrained.json").read_text(), sorted(p.name for p in (repo / "weights" / NAME).iterdir())
    assert after == before


def test_records_round_trip_through_their_json_and_rebuild_from_their_checkpoints() -> None:
    """``Weights.to_dict`` writes what pretrained.json holds, ``from_dict`` reads it back, and a published
    checkpoint's config.json makes its own record again (what ``release`` wrote)."""
    raw = json.loads(pretrained.RECORDS_FILE.read_text())
    records = list(load_records().values())
    assert [w.to_dict() for w in records] == raw
    assert [pretrained.Weights.from_dict(d) for d in raw] == records
    for w in records:
        cfg = json.loads((ROOT / w.file).with_name("config.json").read_text())
        assert pretrained.Weights.from_checkpoint_config(w.name, cfg) == dataclasses.replace(w, latency=[])


def test_a_records_transforms_are_the_eval_transform_its_metrics_used() -> None:
    """``w.transforms()`` on uint8 tensors equals the torchvision eval pipeline the evaluation ran (Fashion-MNIST:
    ToTensor + Normalize); other sizes are resized and centre-cropped to the record's."""
    import numpy as np
    import torch
    from PIL import Image

    from blockswap_zoo.data import get_dataset_info
    from blockswap_zoo.data.transforms import eval_transform

    w = next(iter(load_records().values()))
    info = get_dataset_info(w.dataset)
    images = torch.randint(0, 256, (4, w.in_chans, *w.input_size[1:]), dtype=torch.uint8)
    ours = w.transforms()(images)
    theirs = torch.stack([eval_transform(info)(Image.fromarray(np.asarray(im[0]))) for im in images])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert torch.equal(w.transforms()(images[0]), ours[0])  # one image as a batch of one
    big = w.transforms()(torch.rand(2, w.in_chans, 64, 80))
    assert big.shape == (2, w.in_chans, *w.input_size[1:])


def test_release_is_refused_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package (no hubconf.py beside it) does not write weights/ or records into site-packages."""
    monkeypatch.setattr(pretrained, "REPO_ROOT", tmp_path / "site-packages")
    with pytest.raises(ValueError, match="is not one; run it from a checkout"):
        release.release_checkpoint(tmp_path / "ckpt")
    assert not (tmp_path / "site-packages").exists()


def test_latency_is_recorded_per_setting_and_shown_in_the_docs(repo: Path, tmp_path: Path) -> None:
    from blockswap_zoo.cards import readme_table, zoo_model_card

    release.release_checkpoint(_checkpoint(tmp_path))
    setting = {"device_type": "cpu", "device_name": "CPU X (family/model/stepping 1/2/3)", "isa": "AVX2, no native bf16",
               "threads": 2, "torch": "2.14.1", "backend": "eager", "dtype": "float32", "batch": 1}  # fmt: skip
    release.record_latency(NAME, {"batch": 1, "median_ms": 4.2, "spread_ms": 0.1, "setting": setting})
    release.record_latency(NAME, {"batch": 1, "median_ms": 4.0, "spread_ms": 0.1, "setting": setting})  # replaces
    w = release.record_latency(
        NAME, {"batch": 128, "median_ms": 250.0, "spread_ms": 3.0, "setting": {**setting, "batch": 128}}
    )
    assert [(m["batch"], m["median_ms"]) for m in w.latency] == [(1, 4.0), (128, 250.0)]
    records = {NAME: w}
    assert "| 4 / 250 |" in readme_table(records) and "CPU X (family/model/stepping 1/2/3), AVX2" in readme_table(
        records
    )
    assert "- latency: 4 ms per forward at batch 1, float32 eager, on CPU X" in zoo_model_card(records)
    with pytest.raises(ValueError, match="no published record"):
        release.record_latency("wrn_40_2_bs1k.none", {"setting": setting})


def test_release_copies_no_link_and_a_re_release_keeps_the_latency(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not the checkpoint's")
    ck = _checkpoint(tmp_path / "linked")
    (ck / "README.md").unlink()
    (ck / "README.md").symlink_to(outside)
    with pytest.raises(ValueError, match=r"symbolic links \(README.md\)"):
        release.release_checkpoint(ck)
    assert list((repo / "weights").iterdir()) == []
    release.release_checkpoint(_checkpoint(tmp_path / "first"))
    setting = {"device_type": "cpu", "device_name": "CPU X", "threads": 2, "batch": 1}
    release.record_latency(NAME, {"batch": 1, "median_ms": 4.0, "spread_ms": 0.1, "setting": setting})
    w = release.release_checkpoint(_checkpoint(tmp_path / "again"), force=True)
    assert [m["median_ms"] for m in w.latency] == [4.0]  # the same architecture: its measured latency stays
