"""Checkpoints as safetensors directories, verified by sha256 before use: the directory format
(``model.safetensors`` + ``config.json``), saving, and verified loading. Pulling and publishing on the
Hugging Face Hub is ``hf``.

A checkpoint directory holds ``model.safetensors``, ``config.json`` (arch, genotype, classes,
input size, normalisation, metrics, params, MACs, teacher, recipe, the weights' sha256 ...)
and, when written by a training run, the recipe, per-epoch metrics and a model card.
This module imports torch and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .genotype import Genotype
from .io import atomic_write_bytes, atomic_write_text
from .models import SwapNet, build_model

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "WeightsError",
    "load_checkpoint_dir",
    "load_model_weights",
    "load_verified_state_dict",
    "read_checkpoint_config",
    "save_checkpoint_dir",
    "sha256_file",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CHECKPOINT_FILES = (WEIGHTS_NAME, CONFIG_NAME, "README.md", "recipe.yaml", "metrics.jsonl")  # what is published


class WeightsError(ValueError):
    """A weights file that is missing, corrupt, truncated, not safetensors or does not fit the model."""


def sha256_file(path: str | Path) -> str:
    """Full sha256 of a file, streamed."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_verified_state_dict(path: str | Path, sha256: str, size: int | None = None) -> dict[str, torch.Tensor]:
    """Check size and the full sha256 *before* parsing, then read the safetensors file (never pickle).

    There is no unverified path: a missing or malformed ``sha256`` is a WeightsError.
    """
    path = Path(path)
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise WeightsError(
            f"no valid sha256 recorded for {path} (got {sha256!r}): weights are only loaded after a full sha256 check"
        )
    sha256 = sha256.lower()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise WeightsError(
            f"{path} is {actual_size:,} bytes but the record says {size:,}: the file is truncated or replaced; "
            "delete it and download it again"
        )
    digest = sha256_file(path)
    if digest != sha256:
        raise WeightsError(
            f"sha256 mismatch for {path}: expected {sha256}, got {digest}; the file is corrupt or not the "
            "published one: delete it and download it again"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a valid safetensors file ({e}); weights must be safetensors") from None


def load_model_weights(model: SwapNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; if the model's classifier was resized (fine-tuning), drop only the classifier."""
    model_sd = model.state_dict()
    head = [k for k in state if k.startswith("fc.")]
    if head and any(k not in model_sd or model_sd[k].shape != state[k].shape for k in head):
        state = {k: v for k, v in state.items() if k not in head}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise WeightsError(f"{source} does not fit the model: missing {missing}, unexpected {unexpected}")
        return
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{source} does not fit the model: {e}") from None


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """A checkpoint directory's config.json, checked (genotype, classes, channels, input size, sha256)."""
    return _read_config(Path(directory))


def _read_config(directory: Path) -> dict[str, Any]:
    """A checkpoint directory's config.json, with the keys a model is built from checked."""
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise WeightsError(f"{directory} is not a checkpoint directory: {CONFIG_NAME} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{cfg_path} must hold a JSON object")
    for key in ("genotype", "num_classes", "in_chans", "weights_sha256"):
        if key not in cfg:
            raise WeightsError(f"{cfg_path} lacks {key!r}; it was not written by blockswap-zoo")

    def positive_int(v: object, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not positive_int(cfg["num_classes"], 0) or not positive_int(cfg["in_chans"], 1):
        raise WeightsError(f"{cfg_path}: num_classes (>= 0) and in_chans (>= 1) must be integers")
    size = cfg.get("input_size")
    if size is not None and (
        not isinstance(size, list) or len(size) != 3 or not all(positive_int(v, 1) for v in size)
        or size[0] != cfg["in_chans"]
    ):  # fmt: skip
        raise WeightsError(f"{cfg_path}: input_size must be [in_chans, height, width] (in_chans {cfg['in_chans']})")
    if cfg.get("weights_size") is not None and not positive_int(cfg["weights_size"], 0):
        raise WeightsError(f"{cfg_path}: weights_size must be the file's size in bytes, got {cfg['weights_size']!r}")
    return cfg


def load_checkpoint_dir(
    directory: str | Path, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any
) -> SwapNet:
    """Rebuild the model a checkpoint directory describes and load its verified weights.

    ``num_classes`` different from the checkpoint's gives a fresh classifier (the rest loads
    strictly), for fine-tuning.
    """
    directory = Path(directory)
    cfg = _read_config(directory)
    if in_chans is not None and in_chans != cfg["in_chans"]:
        raise WeightsError(f"the checkpoint takes {cfg['in_chans']} input channels, not {in_chans}")
    genotype = Genotype.from_dict(cfg["genotype"])
    # verified first, then checked against config.json (not itself hashed), then built: a config that asks
    # for a network the weights do not hold fails here, not in allocating it
    state = load_verified_state_dict(directory / WEIGHTS_NAME, cfg["weights_sha256"], cfg.get("weights_size"))
    _check_config_fits_weights(cfg, genotype, state, directory / CONFIG_NAME)
    classes = cfg["num_classes"] if num_classes is None else num_classes  # 0: features only, as timm
    model = build_model(genotype, num_classes=classes, in_chans=cfg["in_chans"], **kwargs)
    load_model_weights(model, state, str(directory / WEIGHTS_NAME))
    model.pretrained_cfg = cfg  # type: ignore[assignment]  # a plain attribute (timm's), not a Tensor or Module
    return model


def _check_config_fits_weights(
    cfg: dict[str, Any], genotype: Genotype, state: dict[str, torch.Tensor], cfg_path: Path
) -> None:
    """The network config.json describes holds the verified weights: as many classes as the classifier and no
    more parameters than the file (counted analytically, nothing built); WeightsError naming the file if not."""
    head = state.get("fc.weight")
    classes = 0 if head is None else head.shape[0]
    if cfg["num_classes"] != classes:
        raise WeightsError(f"{cfg_path}: num_classes is {cfg['num_classes']} but the weights' classifier has {classes}")
    params = genotype.num_params(cfg["num_classes"], cfg["in_chans"])
    stored = sum(t.numel() for t in state.values())
    if params > stored:
        raise WeightsError(
            f"{cfg_path}: its genotype has {params:,} parameters but the weights hold {stored:,} values; "
            "config.json and model.safetensors are not from one checkpoint"
        )


def save_checkpoint_dir(
    model: SwapNet, directory: str | Path, config: dict[str, Any], overwrite: bool = False
) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``config.json`` atomically; returns the full config written.

    ``config`` adds metadata (dataset, label names, mean/std, metrics, teacher, recipe ...);
    genotype, classes, params, MACs and the weights' sha256 and size are filled in here.
    """
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    if weights.exists() and not overwrite:
        raise FileExistsError(f"{weights} exists; pass overwrite=True (--force) to replace it")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state, metadata={"format": "pt"}))  # unique temp, fsync, umask permissions
    g = model.genotype
    input_size = config.get("input_size") or [model.in_chans, *g.backbone_spec.default_input_size[1:]]
    full = {
        "arch": config.get("arch", g.backbone),
        "genotype": g.to_dict(),
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "input_size": list(input_size),
        "params": g.num_params(model.num_classes, model.in_chans),
        "macs": g.macs(model.num_classes, model.in_chans, tuple(input_size[-2:])),
        **{k: v for k, v in config.items() if k not in ("genotype", "num_classes", "in_chans", "input_size")},
        "weights_sha256": sha256_file(weights),
        "weights_size": weights.stat().st_size,
    }
    atomic_write_text(directory / CONFIG_NAME, json.dumps(full, indent=2) + "\n")
    return full
