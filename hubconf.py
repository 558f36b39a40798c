"""torch.hub entrypoints: one per published checkpoint, generated from the pretrained records.

    torch.hub.load("blockswap-zoo/blockswap-zoo", "<arch>_<tag>", pretrained=True)
    torch.hub.load("/path/to/checkout", "<arch>_<tag>", source="local", pretrained=True, num_classes=5)

Only torch and safetensors are needed (no torchvision, typer or huggingface_hub).
"""

from __future__ import annotations

from pathlib import Path as _Path

import blockswap_zoo as _package
from blockswap_zoo.factory import create_model as _create_model
from blockswap_zoo.pretrained import Weights as _Weights  # underscored: torch.hub.list shows only entrypoints
from blockswap_zoo.pretrained import load_records as _load_records

dependencies = ["torch", "safetensors"]
_HERE = _Path(__file__).resolve().parent


def _check_own_package() -> None:
    """Refuse to load through another copy of blockswap_zoo: one imported before this hubconf (an installed or
    other checkout) would serve its own records and weight files, not this repository's."""
    mine = _Path(_package.__file__).resolve().parent.parent
    if mine != _HERE:
        raise ImportError(
            f"blockswap_zoo is already imported from {mine}, not from this repository ({_HERE}); torch.hub would "
            "load that copy's records and weights. Call torch.hub.load in a process that has not imported "
            "blockswap_zoo, or use that copy's create_model directly"
        )


def _entrypoint(w: _Weights):  # noqa: ANN202 - torch.hub reads the function and its docstring
    def load(pretrained: bool = True, num_classes: int | None = None, in_chans: int | None = None, **kwargs):  # noqa: ANN003
        _check_own_package()
        if not pretrained and in_chans is None:
            in_chans = w.in_chans  # the published configuration, randomly initialised
        return _create_model(w.name if pretrained else w.arch, pretrained=pretrained, num_classes=num_classes,
                             in_chans=in_chans, **kwargs)  # fmt: skip

    top1 = w.metrics.get("top1", float("nan"))
    load.__name__ = w.hub_entrypoint
    load.__doc__ = (
        f"{w.name}: BlockSwap `{w.arch}` on {w.dataset}, top-1 {top1:.2f}% ({w.params:,} params, "
        f"{w.macs / 1e6:.2f}M MACs).\n\n"
        f"Args:\n    pretrained: load the published weights (sha256-verified safetensors).\n"
        f"    num_classes: a new classifier size for fine-tuning (the rest loads strictly); 0: features only.\n"
        f"    in_chans: input channels ({w.in_chans}; the weights need exactly that).\n\n"
        f"Recipe: {w.recipe}. Teacher: {w.teacher or 'none'}. Training: {w.training}"
    )
    return load


globals().update({w.hub_entrypoint: _entrypoint(w) for w in _load_records().values()})
