"""Fine-tuning: a trained model (published name, checkpoint directory, Hub repo or run directory)
with its weights and a fresh classifier sized for a new dataset, trained with the usual engine.

    from blockswap_zoo.train import TrainConfig, finetune
    result = finetune("wrn_40_2_bs400k.fmnist_at", TrainConfig(dataset="...", epochs=10, lr=0.01))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from torch import nn

from ..data import get_dataset_info
from .config import TrainConfig
from .engine import TrainResult, train

if TYPE_CHECKING:
    from ..models import SwapNet

__all__ = ["finetune", "load_for_finetuning"]

FINETUNE_DEFAULTS = {"epochs": 10, "lr": 0.01}  # used by `blockswap-zoo finetune` unless given


def load_for_finetuning(source: str, dataset: str) -> nn.Module:
    """``source``'s trained weights with a classifier for ``dataset``'s classes (kept when they match).

    ``source``: any name with trained weights (``sources.py``): a published ``arch.tag``,
    ``local-dir:PATH``, ``hf-hub:ORG/NAME[@REV]``, or a run / checkpoint directory. Only the classifier
    is new; every other weight loads strictly. The input channels must match the dataset's.
    """
    from ..factory import load_trained
    from ..sources import parse_source

    info = get_dataset_info(dataset)
    model = load_trained(parse_source(source), num_classes=info.num_classes)
    if model.in_chans != info.in_chans:
        raise ValueError(
            f"{source} takes {model.in_chans}-channel input but {info.name} images have {info.in_chans}; "
            "fine-tune it on a dataset with the same number of channels"
        )
    return model


def finetune(source: str, config: TrainConfig, out_dir: str | Path | None = None, **kwargs) -> TrainResult:  # noqa: ANN003
    """Train :func:`load_for_finetuning` (``source``, ``config.dataset``) with ``config``; kwargs go to train."""
    model = cast("SwapNet", load_for_finetuning(source, config.dataset))  # load_trained builds a SwapNet
    model.drop_rate = model.head_drop.p = config.drop_rate  # as train() builds a new network with it
    config.arch = model.genotype.to_string()  # the run directory records the exact network
    config.extra = {**config.extra, "finetuned_from": source}  # ... and the weights it started from
    return train(config, model=model, out_dir=out_dir, **kwargs)
