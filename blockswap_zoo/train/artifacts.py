"""What a run directory holds and how to read it back: ``model.safetensors`` + ``config.json``
(the genotype and everything needed to rebuild and use the model), metrics and curves."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..genotype import Genotype
from ..io import atomic_write_bytes, atomic_write_text
from ..sources import TRAINING_CHECKPOINT

if TYPE_CHECKING:
    from ..models import SwapNet

__all__ = ["CHECKPOINT", "load_model", "load_run", "read_run_config", "write_curves", "write_final", "write_metrics"]

CHECKPOINT = TRAINING_CHECKPOINT
RUN_FORMAT = "blockswap-zoo-run/1"


def model_config(model: nn.Module, info: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content: genotype, classes, channels, dataset, input size, mean/std."""
    net = cast("SwapNet", model)  # a builder's model: genotype, num_classes, in_chans
    g: Genotype = net.genotype
    return {
        "format": RUN_FORMAT,
        "genotype": g.to_dict(),
        "compact": g.to_string(),
        "num_classes": int(net.num_classes),
        "in_chans": int(net.in_chans),
        "dataset": info.name,
        "input_size": list(info.input_size),
        "mean": list(info.mean),
        "std": list(info.std),
        "label_names": list(info.label_names),
        "params": int(sum(p.numel() for p in model.parameters())),
        **(extra or {}),
    }


def write_final(out_dir: str | Path, model: nn.Module, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``config.json`` atomically, with the weights' sha256 (a checkpoint dir)."""
    from ..checkpoint import save_checkpoint_dir

    save_checkpoint_dir(cast("SwapNet", model), out_dir, config, overwrite=True)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished blockswap-zoo run directory")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in ("genotype", "num_classes", "in_chans"):
        if key not in cfg:
            raise ValueError(f"{path} lacks {key!r}: not a blockswap-zoo run config")
    return cfg


def load_run(run_dir: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a finished run's model from ``config.json`` and its sha256-verified ``model.safetensors``."""
    from ..checkpoint import load_checkpoint_dir

    cfg = read_run_config(run_dir)
    weights = Path(run_dir) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the run in {run_dir} has not finished")
    if "weights_sha256" not in cfg:
        raise ValueError(
            f"{Path(run_dir) / 'config.json'} records no weights_sha256: the run was written by an earlier "
            "blockswap-zoo, whose runs are not verified on load. If you trust that file, add its sha256 "
            "(sha256sum model.safetensors) to config.json as weights_sha256; else train it again"
        )
    return load_checkpoint_dir(run_dir).to(map_location)


def load_model(spec: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trained model from any name with weights (``sources.py``): a run or checkpoint directory, a
    ``checkpoint.pt``, ``local-dir:``, ``hf-hub:`` or a published ``arch.tag``."""
    from ..factory import load_trained
    from ..sources import parse_source

    return load_trained(parse_source(spec)).to(map_location)


def write_metrics(out_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` (one JSON object per epoch) atomically."""
    atomic_write_text(Path(out_dir) / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def write_curves(out_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """Plot loss and accuracy per epoch into ``curves.png`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [h["train_loss"] for h in history], label="train")
    tl = [(h["epoch"], h["test_loss"]) for h in history if h.get("test_loss") is not None]
    if tl:
        ax1.plot(*zip(*tl, strict=True), label="test")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(ep, [h["train_top1"] for h in history], label="train top-1")
    ta = [(h["epoch"], h["test_top1"]) for h in history if h.get("test_top1") is not None]
    if ta:
        ax2.plot(*zip(*ta, strict=True), label="test top-1")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(out_dir) / "curves.png", buf.getvalue())
