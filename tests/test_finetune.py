"""Fine-tuning: a trained model's weights, a new classifier for the target dataset, the usual engine."""

import importlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from blockswap_zoo import create_model
from blockswap_zoo.checkpoint import save_checkpoint_dir
from blockswap_zoo.cli import app
from blockswap_zoo.train import TrainConfig, finetune, load_for_finetuning

GENOTYPE = "wrn_10_1:v1:BG(2,M/2);G(4);S"


@pytest.fixture()
def five_class_checkpoint(tmp_path: Path) -> Path:
    """A 5-class, 1-channel checkpoint directory (not Fashion-MNIST's 10 classes)."""
    torch.manual_seed(0)
    model = create_model(GENOTYPE, num_classes=5, in_chans=1).eval()
    out = tmp_path / "five"
    save_checkpoint_dir(model, out, {"dataset": "custom", "input_size": [1, 28, 28], "metrics": {}})
    return out


def test_only_the_classifier_is_new(five_class_checkpoint: Path) -> None:
    source = create_model(f"local-dir:{five_class_checkpoint}").eval()
    model = load_for_finetuning(f"local-dir:{five_class_checkpoint}", "fashion_mnist").eval()
    assert model.num_classes == 10 and source.num_classes == 5
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model.forward_features(x), source.forward_features(x), rtol=0, atol=0)


def test_channel_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="1-channel input but cifar10 images have 3"):
        load_for_finetuning("wrn_40_2_bs400k.fmnist_at", "cifar10")


def test_finetune_trains_and_writes_a_run(five_class_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    finetune_module = importlib.import_module("blockswap_zoo.train.finetune")  # the package's finetune is the function

    cfg = TrainConfig(dataset="fashion_mnist", epochs=1, lr=0.01, batch_size=32, max_steps=3, subset=256,
                      eval_subset=256, device="cpu", progress=False, drop_rate=0.3)  # fmt: skip
    trained = []
    real_train = finetune_module.train
    monkeypatch.setattr(
        finetune_module, "train", lambda c, model, **kw: trained.append(model) or real_train(c, model=model, **kw)
    )
    result = finetune(f"local-dir:{five_class_checkpoint}", cfg, out_dir=tmp_path / "ft")
    assert trained[0].head_drop.p == 0.3  # the config's dropout applies to the loaded network too
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["num_classes"] == 10 and saved["compact"] == GENOTYPE and result.metrics["steps"] == 3


def test_finetune_cli_on_the_published_student(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["finetune", "wrn_40_2_bs400k.fmnist_at", "--dataset", "fashion_mnist", "--max-steps", "2",
            "--batch-size", "32", "--subset", "128", "--eval-subset", "128", "--device", "cpu", "--out", str(out),
            "--no-progress", "--momentum", "0.8", "--nesterov", "--drop-rate", "0.1", "--eval-batch-size", "64"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    train_config = json.loads((out / "config.json").read_text())["train_config"]
    assert train_config["lr"] == 0.01  # finetune's default
    assert (train_config["momentum"], train_config["nesterov"], train_config["drop_rate"]) == (0.8, True, 0.1)
    assert train_config["eval_batch_size"] == 64
    assert train_config["extra"]["finetuned_from"] == "wrn_40_2_bs400k.fmnist_at"  # where its weights came from
    missing = CliRunner().invoke(app, ["finetune", "wrn_40_2_bs400k.fmnist_at"])
    assert missing.exit_code != 0 and "--dataset" in missing.output
