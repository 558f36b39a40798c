"""Published weights: one frozen record per checkpoint, read from ``pretrained.json`` (data, written
by ``blockswap-zoo release``), and how a record's file is found, downloaded and verified.

A record's file lives in the repository (``weights/<arch.tag>/model.safetensors``): a checkout or
torch.hub clone reads it in place; a pip install downloads it once into the cache. Every use
verifies the full sha256 first.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from .checkpoint import WEIGHTS_NAME, WeightsError, load_verified_state_dict
from .genotype import Genotype
from .hf import OfflineError, is_offline
from .io import missing_dirs, remove_failed_download

__all__ = [
    "GITHUB_REPO",
    "EvalTransform",
    "Weights",
    "cache_dir",
    "get_weights",
    "list_pretrained",
    "load_records",
    "resolve_weights_file",
]

GITHUB_REPO = "blockswap-zoo/blockswap-zoo"
RECORDS_FILE = Path(__file__).with_name("pretrained.json")
REPO_ROOT = Path(__file__).resolve().parents[1]


def is_checkout() -> bool:
    """Whether the package runs from a repository checkout (or torch.hub clone), which holds ``weights/``
    and ``recipes/``, rather than from an installed wheel."""
    return (REPO_ROOT / "hubconf.py").is_file() and (REPO_ROOT / "blockswap_zoo").is_dir()


@dataclass(frozen=True)
class Weights:
    """What a published checkpoint is, where its file is, and how it was made and measured."""

    name: str  # arch.tag
    file: str  # path inside the repository
    sha256: str
    size: int
    dataset: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label_names: tuple[str, ...]
    metrics: dict[str, float]
    params: int
    macs: int
    genotype: str  # compact form
    teacher: str | None
    recipe: str
    license: str
    hf_repo: str
    eval_transform: str
    training: str  # hardware, schedule and wall time, in words
    eval_command: str
    extra: dict[str, Any] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)  # `blockswap-zoo latency NAME --record`, per setting

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def url(self) -> str:
        base = os.environ.get("BLOCKSWAP_ZOO_BASE_URL", f"https://github.com/{GITHUB_REPO}/raw/main").rstrip("/")
        return f"{base}/{self.file}"

    @property
    def hub_entrypoint(self) -> str:
        return self.name.replace(".", "_")

    def transforms(self) -> EvalTransform:
        """The eval transform the metrics were measured with, as a callable on image tensors (as torchvision's
        ``Weights.transforms()``): ``model(w.transforms()(images))``."""
        return EvalTransform(self.input_size, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """The record as ``pretrained.json`` holds it (tuples as JSON lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Weights:
        """A record from its ``pretrained.json`` object (``to_dict``'s inverse)."""
        kwargs: dict[str, Any] = {k: tuple(raw[k]) if k in _TUPLE_FIELDS else v for k, v in raw.items()}
        return cls(**kwargs)

    @classmethod
    def from_checkpoint_config(cls, name: str, cfg: dict[str, Any]) -> Weights:
        """The record ``release`` publishes for a checkpoint directory's ``config.json`` under ``name``
        (KeyError, TypeError or ValueError for a config that cannot make one)."""
        metrics = {k: round(v, 2) for k, v in cfg["metrics"].items() if k in ("top1", "top5")}
        return cls(
            name=name, file=f"weights/{name}/{WEIGHTS_NAME}", sha256=cfg["weights_sha256"],
            size=cfg["weights_size"], dataset=cfg["dataset"], num_classes=cfg["num_classes"],
            in_chans=cfg["in_chans"], input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]), label_names=tuple(cfg["label_names"]), metrics=metrics, params=cfg["params"],
            macs=cfg["macs"], genotype=Genotype.from_dict(cfg["genotype"]).to_string(), teacher=cfg.get("teacher"),
            recipe=cfg["recipe"], license=cfg.get("license", "mit"), hf_repo=f"blockswap-zoo/{name.replace('.', '-')}",
            eval_transform=cfg["eval_transform"], training=cfg["training"], eval_command=cfg["eval_command"],
            extra={"description": cfg.get("description", ""), "recipe_sha256": cfg.get("recipe_sha256", ""),
                   "role": cfg.get("role", "student")} | ({"budget": cfg["budget"]} if "budget" in cfg else {}),
        )  # fmt: skip


_TUPLE_FIELDS = ("input_size", "mean", "std", "label_names")


class EvalTransform:
    """Images (uint8 0..255 or float 0..1; C x H x W or N x C x H x W) to the model's normalised input: at
    the record's size they are only normalised, as the published metrics were measured; other sizes are
    first resized (shorter side to size / 0.875, bilinear, antialiased) and centre-cropped, as for ImageNet."""

    def __init__(self, input_size: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size, self.mean_std = tuple(input_size[-2:]), (tuple(mean), tuple(std))
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if tuple(x.shape[-2:]) != self.size:
            batch = x if x.dim() == 4 else x.unsqueeze(0)
            short = round(min(self.size) / 0.875)
            h, w = batch.shape[-2:]
            scale = short / min(h, w)
            batch = torch.nn.functional.interpolate(
                batch, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False
            )
            top, left = (batch.shape[-2] - self.size[0]) // 2, (batch.shape[-1] - self.size[1]) // 2
            batch = batch[..., top : top + self.size[0], left : left + self.size[1]]
            x = batch if x.dim() == 4 else batch[0]
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"EvalTransform(size={self.size}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
        )


@cache
def load_records(path: Path = RECORDS_FILE) -> dict[str, Weights]:
    """All records, keyed by ``arch.tag`` (a JSON list written by ``blockswap-zoo release``)."""
    if not path.is_file():
        return {}
    out: dict[str, Weights] = {}
    for raw in json.loads(path.read_text()):
        w = Weights.from_dict(raw)
        out[w.name] = w
    return out


def list_pretrained(pattern: str | Iterable[str] = "*") -> list[str]:
    """Published ``arch.tag`` names matching a wildcard pattern (or any of several)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(n for n in load_records() if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def get_weights(name: str) -> Weights:
    """The record of ``arch.tag``, or of the arch's first published tag when no tag is given."""
    records = load_records()
    if name in records:
        return records[name]
    if "." not in name:
        tags = [w for n, w in sorted(records.items()) if w.arch == name]
        if tags:
            return tags[0]
    available = ", ".join(records) or "none yet"
    raise WeightsError(f"no published weights named {name!r}; published: {available}")


def cache_dir() -> Path:
    """Where downloaded weights go: $BLOCKSWAP_ZOO_CACHE, else torch.hub's dir / blockswap_zoo."""
    env = os.environ.get("BLOCKSWAP_ZOO_CACHE")
    if env:
        return Path(env)
    import torch.hub

    return Path(torch.hub.get_dir()) / "blockswap_zoo"


def resolve_weights_file(w: Weights) -> Path:
    """The record's file: in the checkout if present, else the cache, else downloaded (not offline)."""
    in_repo = REPO_ROOT / w.file
    if in_repo.is_file():
        return in_repo
    cached = cache_dir() / w.name / Path(w.file).name
    if cached.is_file():
        return cached
    if is_offline():
        checkout = f" (or {in_repo} in this checkout)" if is_checkout() else ""
        raise OfflineError(
            f"offline mode: weights {w.name} are not cached; expected {cached}{checkout}. "
            "Copy the file there, or unset HF_HUB_OFFLINE / BLOCKSWAP_ZOO_OFFLINE to download it"
        )
    from torch.hub import download_url_to_file

    created = missing_dirs(cached.parent)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(w.url, str(cached), progress=False)  # writes a temp file, then renames
    except OSError as e:  # URLError included: no network, DNS, HTTP errors
        remove_failed_download(created)  # the folders made for it, if left empty: nothing behind
        raise OfflineError(
            f"could not download weights {w.name} from {w.url} ({type(e).__name__}: {e}). Put the file at "
            f"{cached} (sha256 {w.sha256}) and set HF_HUB_OFFLINE=1, or retry with network access"
        ) from None
    try:
        load_verified_state_dict(cached, w.sha256, w.size)
    except WeightsError:
        cached.unlink(missing_ok=True)
        raise
    return cached
