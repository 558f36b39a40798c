"""The training benchmarks on CPU at tiny settings: train_speed.py's CIFAR-shaped data go through the
engine's own CIFAR reader and a run of the real engine comes back as a table row; fast_defaults_accuracy.py
trains both variants per seed and pairs them."""

import json
from pathlib import Path

import fast_defaults_accuracy as accuracy
import pytest
import train_speed as speed

from blockswap_zoo.data import load_arrays


def test_cifar_shaped_data_read_as_cifar10(tmp_path: Path) -> None:
    speed.write_cifar_shaped(tmp_path, n_train=23, n_test=7)
    train = load_arrays("cifar10", "train", data_dir=tmp_path, download=False)
    test = load_arrays("cifar10", "test", data_dir=tmp_path, download=False)
    assert train.images.shape == (25, 3, 32, 32) and test.images.shape == (7, 3, 32, 32)  # 5 batches of 5
    assert int(train.labels.max()) < 10


@pytest.mark.slow
def test_one_engine_run_per_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "speed.json"
    speed.main(["--device", "cpu", "--data", "cifar_shaped", "--kinds", "teacher", "--settings", "eager",
                "--steps", "1", "--repeats", "1", "--batch-size", "4", "--json", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())["table"]
    assert row["data"] == "cifar_shaped" and row["setting"] == "eager" and row["per_run"] > 0
    assert "| cifar_shaped | teacher | eager | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        speed.main(["--settings", "turbo"])


@pytest.mark.slow
def test_fast_defaults_accuracy_pairs_both_variants_per_seed(tmp_path: Path) -> None:
    from blockswap_zoo.cpu_info import cpu_info

    assert accuracy.fast_settings("cuda") == {}  # the defaults; on a CPU the defaults where they are bf16
    assert accuracy.fast_settings("cpu") == ({} if cpu_info().native_bf16 else {"amp": "bf16", "channels_last": True})
    out = tmp_path / "acc.json"
    accuracy.main(
        ["--device", "cpu", "--seeds", "0", "--epochs", "1", "--subset", "64", "--batch-size", "32", "--json", str(out)]
    )
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs["fp32"]] == [r["seed"] for r in runs["fast"]] == [0]
    assert all(0 <= r["top1"] <= 100 and len(r["epoch_losses"]) == 1 for rs in runs.values() for r in rs)
