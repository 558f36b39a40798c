"""Bad input gets a clear error that names the input and the fix, exit 2 from the CLI and nothing written:
one test per case of the robustness report (recipes, seeds, preflight, limits, checkpoints, hub, data)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
import shutil
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from blockswap_zoo import create_model
from blockswap_zoo import pretrained as pretrained_module
from blockswap_zoo import recipe as recipes_module
from blockswap_zoo.checkpoint import WeightsError, load_checkpoint_dir, save_checkpoint_dir
from blockswap_zoo.cli import app
from blockswap_zoo.data.cifar import CifarFormatError, UnsafePickleError, safe_unpickle
from blockswap_zoo.data.idx import IdxFormatError, read_idx
from blockswap_zoo.limits import MAX_SETTINGS_BYTES
from blockswap_zoo.pretrained import resolve_weights_file
from blockswap_zoo.recipe import RecipeError, load_recipe, parse_recipe
from blockswap_zoo.registry import UnknownModelError
from blockswap_zoo.reproduce import preflight
from blockswap_zoo.train import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "blockswap_zoo" / "recipes" / "wrn_40_2_bs400k.fmnist_at.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist (.ci/run installs it)")
runner = CliRunner()


def _recipe(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    d = yaml.safe_load(OFFICIAL.read_text())
    edit(d)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _refused_before_writing(tmp_path: Path, path: Path, fragment: str) -> None:
    """The recipe is refused by the dry run and the real run with ``fragment``, exit 2, nothing written."""
    out = tmp_path / "run"
    for extra in (["--dry-run"], []):
        res = runner.invoke(app, ["reproduce", str(path), "--out", str(out), "--device", "cpu", *extra])
        assert res.exit_code == 2, res.output
        assert fragment in " ".join(res.output.split()), res.output
        assert not out.exists()


# ----------------------------------------------------------------------------- 1. recipe fields named
def test_unknown_student_block_and_teacher_arch_name_the_file_and_the_field(tmp_path: Path) -> None:
    def student(d: dict) -> None:
        d["student"] = {"genotype": "wrn_40_2:v1:" + ";".join(["Bogus(3)"] * 18)}

    path = _recipe(tmp_path, student)
    with pytest.raises(RecipeError, match=rf"{path}: student\.genotype: .*Bogus"):
        load_recipe(path)
    path = _recipe(tmp_path, lambda d: d["teacher"].update(arch="wrn_99_bogus"))
    with pytest.raises(RecipeError, match=rf"{path}: teacher\.arch: .*wrn_99_bogus"):
        load_recipe(path)


# ----------------------------------------------------------------------------- 2. seeds in range
@pytest.mark.parametrize("seed", [99999999999999999999999, -1, 2**63])
def test_seeds_out_of_range_are_refused_up_front(tmp_path: Path, seed: int) -> None:
    path = _recipe(tmp_path, lambda d: d.update(seed=seed))
    with pytest.raises(RecipeError, match=r"seed: must be a whole number in 0\.\.2\*\*63-1"):
        load_recipe(path)
    path = _recipe(tmp_path, lambda d: d["student"]["search"].update(seed=seed))
    with pytest.raises(RecipeError, match=r"student\.search\.seed: must be a whole number"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="seed must be a whole number"):
        TrainConfig(seed=seed)
    out = tmp_path / "t"
    res = runner.invoke(app, ["train-teacher", "--arch", "wrn_10_1", "--seed", str(seed), "--out", str(out)])
    assert res.exit_code == 2 and "seed" in res.output and not out.exists(), res.output


def test_the_largest_seed_still_runs() -> None:
    assert TrainConfig(seed=2**63 - 1).seed == 2**63 - 1
    torch.manual_seed(2**63 - 1)  # what the engine does with it


# ----------------------------------------------------------------------------- 3. batch size against the data
@needs_fmnist
def test_a_batch_larger_than_the_training_subset_is_refused_by_the_dry_run(tmp_path: Path) -> None:
    path = _recipe(tmp_path, lambda d: d["train"].update(subset=100))
    _refused_before_writing(tmp_path, path, "train.batch_size 128 is larger than the 100-image subset")
    path = _recipe(tmp_path, lambda d: d["teacher"]["train"].update(subset=64, batch_size=65))
    _refused_before_writing(tmp_path, path, "teacher.train.batch_size 65 is larger than the 64-image subset")


# ----------------------------------------------------------------------------- 4. data and teacher resolve
def test_a_missing_data_dir_is_refused_by_the_dry_run(tmp_path: Path) -> None:
    path = _recipe(tmp_path, lambda d: d["dataset"].update(data_dir=str(tmp_path / "nowhere")))
    _refused_before_writing(tmp_path, path, "not found")


@needs_fmnist
@pytest.mark.parametrize(
    "source", ["local-dir:../../../etc", "hf-hub:evil/x", "torchvision:os.system", "wrn_40_2.nope"]
)
def test_an_unresolvable_teacher_is_refused_by_the_dry_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: the Hub name must be in the (empty) cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))

    def teacher(d: dict) -> None:
        d["teacher"] = {"arch": "wrn_40_2", "pretrained": source}

    _refused_before_writing(tmp_path, _recipe(tmp_path, teacher), "teacher.pretrained")


# ----------------------------------------------------------------------------- 5, 6. recipe depth and size
def test_deeply_nested_yaml_is_an_error_not_a_recursion(tmp_path: Path) -> None:
    text = "name: " + "[" * 100_000 + "]" * 100_000 + "\n"
    with pytest.raises(RecipeError, match="nested more than 32 levels"):
        parse_recipe(text, "deep.yaml")
    deep = tmp_path / "deep.yaml"
    deep.write_text(text)
    res = runner.invoke(app, ["reproduce", str(deep), "--dry-run"])
    assert res.exit_code == 2 and "nested more than" in res.output


def test_an_oversized_recipe_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(OFFICIAL.read_text() + "#" * MAX_SETTINGS_BYTES)
    with pytest.raises(RecipeError, match=rf"{big}: .*more than a settings file needs"):
        load_recipe(big)
    with pytest.raises(RecipeError, match="more than a settings file needs"):
        parse_recipe(big.read_text(), "big.yaml")
    res = runner.invoke(app, ["train-teacher", "--config", str(big), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "more than a settings file needs" in res.output


# ----------------------------------------------------------------------------- 7. expected
@pytest.mark.parametrize("value", [float("nan"), -1.0, float("inf"), 101.0])
def test_expected_tolerance_and_value_are_validated(tmp_path: Path, value: float) -> None:
    path = _recipe(tmp_path, lambda d: d["expected"].update(tolerance=value))
    with pytest.raises(RecipeError, match="expected.tolerance: percentage points in 0..100"):
        load_recipe(path)
    path = _recipe(tmp_path, lambda d: d["expected"].update(value=value))
    with pytest.raises(RecipeError, match="expected.value: a percentage in 0..100"):
        load_recipe(path)


# ----------------------------------------------------------------------------- 8, 9. config.json
@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("wrn_10_1:v1:BG(2,M/2);G(4);S", num_classes=10, in_chans=1)
    out = tmp_path / "ckpt"
    save_checkpoint_dir(model.eval(), out, {"dataset": "fashion_mnist", "input_size": [1, 28, 28]})
    return out


def _edit_config(checkpoint: Path, **changes: object) -> None:
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg.update(changes)
    (checkpoint / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("size", ["abc", -5, 1.5, True])
def test_a_bad_weights_size_is_named(checkpoint: Path, size: object) -> None:
    _edit_config(checkpoint, weights_size=size)
    with pytest.raises(WeightsError, match="weights_size must be the file's size in bytes"):
        load_checkpoint_dir(checkpoint)


def test_config_json_is_checked_against_the_verified_weights_before_anything_is_built(checkpoint: Path) -> None:
    _edit_config(checkpoint, num_classes=100_000_000_000)  # 51 TB if built
    with pytest.raises(WeightsError, match="num_classes is 100000000000 but the weights' classifier has 10"):
        load_checkpoint_dir(checkpoint)
    _edit_config(checkpoint, num_classes=10, genotype={"backbone": "wrn_1000_100", "blocks": ["S"] * 498})
    with pytest.raises((WeightsError, ValueError), match="parameters but the weights hold|wrn_1000_100"):
        load_checkpoint_dir(checkpoint)
    _edit_config(checkpoint, num_classes=100_000_000_000)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # tampered: the sha256 check comes first
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_checkpoint_dir(checkpoint)


# ----------------------------------------------------------------------------- 10. torch.hub and another copy
def test_hubconf_refuses_to_serve_another_copys_records(tmp_path: Path) -> None:
    """A hubconf whose repository is not where blockswap_zoo was imported from refuses to load."""
    other = tmp_path / "other-checkout"
    other.mkdir()
    shutil.copy(ROOT / "hubconf.py", other / "hubconf.py")
    spec = importlib.util.spec_from_file_location("other_hubconf", other / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entry = next(n for n in dir(hubconf) if n.startswith("wrn_") and callable(getattr(hubconf, n)))
    with pytest.raises(ImportError, match=rf"already imported from {ROOT}, not from this repository"):
        getattr(hubconf, entry)(pretrained=False)


# ----------------------------------------------------------------------------- 11, 12. IDX files
def test_an_idx_header_too_large_for_any_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "huge-idx3-ubyte"
    bad.write_bytes(bytes([0, 0, 0x08, 4]) + struct.pack(">4I", *[0xFFFFFFFF] * 4))
    with pytest.raises(IdxFormatError, match=rf"{bad}: header says shape .* more than an IDX data set holds"):
        read_idx(bad)


def test_a_gzip_bomb_is_not_expanded_past_its_declared_size(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(bomb, "wb") as f:  # declares 10 bytes, holds 64 MiB of zeros (64 KiB compressed)
        f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10))
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(IdxFormatError, match=rf"{bomb}: header says shape \(10,\) \(10 bytes\) but more bytes follow"):
        read_idx(bomb)


def test_a_truncated_gzip_is_named(tmp_path: Path) -> None:
    good = FMNIST / "t10k-labels-idx1-ubyte.gz"
    if not good.is_file():
        pytest.skip("Fashion-MNIST is not installed")
    cut = tmp_path / "cut-idx1-ubyte.gz"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(IdxFormatError, match=rf"{cut}: cannot read"):
        read_idx(cut)


# ----------------------------------------------------------------------------- 13. CIFAR arrays bounded
class _Call:
    """A pickle that calls ``fn(*args)`` when loaded (what a crafted batch can ask for)."""

    def __init__(self, fn, *args) -> None:  # noqa: ANN001, ANN002
        self.fn, self.args = fn, args

    def __reduce__(self):  # noqa: ANN204
        return self.fn, self.args


def test_cifar_arrays_larger_than_the_format_are_refused_before_allocation() -> None:
    from numpy._core.multiarray import _reconstruct

    for bomb in (_Call(np.ndarray, (1 << 40,)), _Call(_reconstruct, np.ndarray, (1 << 40,), b"b")):
        data = pickle.dumps(bomb, protocol=2)
        assert len(data) < 300
        with pytest.raises(CifarFormatError, match="more than a CIFAR batch holds"):
            safe_unpickle(data)
    with pytest.raises(UnsafePickleError, match="Python objects"):
        safe_unpickle(pickle.dumps(np.array([None, 1], dtype=object), protocol=2))
    batch = np.zeros((50_000, 3072), dtype=np.uint8)  # the largest real batch still loads
    for protocol in (2, 5):
        got = safe_unpickle(pickle.dumps({b"data": batch}, protocol=protocol))[b"data"]
        assert type(np.asarray(got)) is np.ndarray and np.asarray(got).shape == batch.shape


# ----------------------------------------------------------------------------- 14. outside a checkout
def test_messages_outside_a_checkout_point_to_what_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipes_module, "RECIPES_DIR", tmp_path / "site-packages" / "recipes")
    with pytest.raises(RecipeError, match="this installation ships no recipes.*pass the path of a recipe file"):
        load_recipe("wrn_40_2_bs400k.fmnist_at")
    monkeypatch.setattr(pretrained_module, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("BLOCKSWAP_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = next(iter(pretrained_module.load_records().values()))
    with pytest.raises(FileNotFoundError) as e:
        resolve_weights_file(w)
    assert str(tmp_path / "cache") in str(e.value) and "site-packages" not in str(e.value)


# ----------------------------------------------------------------------------- 15. --out is a file
def test_reproduce_into_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("mine")
    for extra in (["--dry-run"], []):
        res = runner.invoke(app, ["reproduce", str(OFFICIAL), "--out", str(target), "--device", "cpu", *extra])
        assert res.exit_code == 2 and "is a file, not a directory" in " ".join(res.output.split()), res.output
    assert target.read_text() == "mine"


# ----------------------------------------------------------------------------- 16. names and downloads
def test_a_home_directory_of_no_user_is_an_unknown_model() -> None:
    with pytest.raises(UnknownModelError, match="no such user's home directory"):
        create_model("local-dir:~nosuchuser_blockswap/x")


def test_a_failed_download_leaves_no_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    def fail(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("no network here")

    monkeypatch.setenv("BLOCKSWAP_ZOO_CACHE", str(tmp_path / "deep" / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("BLOCKSWAP_ZOO_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.setattr(pretrained_module, "REPO_ROOT", tmp_path / "not-a-checkout")
    w = next(iter(pretrained_module.load_records().values()))
    with pytest.raises(FileNotFoundError, match="could not download"):
        resolve_weights_file(w)
    assert not (tmp_path / "deep").exists()


def test_preflight_takes_the_official_recipe() -> None:
    """The checks above refuse only what is wrong: the official recipe passes them (data where installed)."""
    if not FMNIST.is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    preflight(load_recipe(OFFICIAL))


@pytest.mark.parametrize("device", ["tpu", "cpu:zz"])
@pytest.mark.parametrize(
    "command",
    [
        ["latency-table", "wrn_10_1"],
        ["latency", "wrn_10_1"],
        ["search", "wrn_10_1", "--latency", "2ms"],
        ["search-detector", "--images", "nowhere", "--annotations", "nowhere.json"],
        ["evaluate-detector", "nowhere"],
    ],
    ids=lambda c: c[0] if isinstance(c, list) else c,
)
def test_an_unknown_device_is_named_before_anything_runs(tmp_path: Path, command: list[str], device: str) -> None:
    out = ["--out", str(tmp_path / "out")] if command[0].startswith("search") else []
    r = CliRunner().invoke(app, [*command, *out, "--device", device])
    assert r.exit_code == 2 and f"unknown device '{device}'" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["latency-table", "wrn_10_1", "--calibrate", "1"], "--calibrate needs 0 (skip) or at least 2"),
        (["latency-table", "wrn_10_1", "--batch", "100000000"], "--batch must be between 1 and 4096"),
        (["latency", "wrn_10_1", "--batch", "0"], "--batch must be between 1 and 4096"),
        (["make-detection-set", "--canvas", "1000000"], "larger than 4096"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_sizes_that_cannot_fit_are_refused_before_any_work(tmp_path: Path, command: list[str], message: str) -> None:
    out = ["--out", str(tmp_path / "out")] if command[0] == "make-detection-set" else []
    r = CliRunner().invoke(app, [*command, *out])
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("length", [300, 100_000])
@pytest.mark.parametrize("command", ["info", "export", "evaluate"])
def test_a_name_too_long_for_a_path_gets_a_short_clear_error(tmp_path: Path, command: str, length: int) -> None:
    r = CliRunner().invoke(app, [command, "a" * length])
    assert r.exit_code == 2, r.output[-500:]
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output and len(r.output) < 2 * min(length, 10_000) + 1000
