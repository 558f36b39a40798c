"""Detection training settings as typed data, and detection recipes: YAML read as plain data into them.

Defaults are torchvision's Mask R-CNN reference recipe (SGD lr 0.02 at batch 16, momentum 0.9, weight decay
1e-4, 26 epochs with /10 at 16 and 22, 1000 warmup iterations from 0.001, horizontal flips, 800/1333
resizing). A recipe is this config plus a name and description; data paths are relative to ``data_root``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from ..limits import check_seed
from ..recipe import RecipeError
from ..yaml_io import SettingsFileError, load_yaml, read_settings_text

__all__ = [
    "RECIPES_DIR",
    "DetectionRecipe",
    "DetectionTrainConfig",
    "list_detection_recipes",
    "load_detection_recipe",
]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def _convert(value: Any, tp: Any, where: str) -> Any:  # noqa: ANN401 - plain YAML data in, typed data out
    """``value`` checked against the annotation ``tp``: scalars, Optional, ``tuple[int, ...]``, ``dict[str, float]``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _convert(value, inner, where)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(_convert(v, get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict and isinstance(value, dict):
        return {str(_convert(k, str, where)): _convert(v, get_args(tp)[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise RecipeError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")


def _typed(cls: type, data: Any, where: str) -> Any:  # noqa: ANN401
    """A dataclass from a mapping: unknown keys, missing required keys and wrong types are errors naming the key."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(
            f"{where or 'recipe'}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            tp = hints[name]
            kwargs[name] = (
                _typed(tp, data[name], path)
                if isinstance(tp, type) and dataclasses.is_dataclass(tp)
                else _convert(data[name], tp, path)
            )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{path}: required key is missing")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise RecipeError(f"{where or 'recipe'}: {e}") from None


@dataclass(frozen=True)
class DetectionTrainConfig:
    """Everything a detector training run needs; ``batch_size`` is global (split across torchrun processes)."""

    detector: str = "maskrcnn_resnet34_gn3m"
    data_root: str = "."
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    backbone_weights: str | None = None  # a classification checkpoint of the same genotype; None: from scratch
    epochs: int = 26
    batch_size: int = 16
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[int, ...] = (16, 22)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    flip: bool = True
    fpn_channels: int = 256
    head_channels: int | None = None
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    seed: int = 0
    device: str = "auto"
    num_workers: int = 4
    max_steps: int | None = None
    eval_every: int = 0  # evaluate every N epochs (0: only at the end)
    eval_batch_size: int = 4
    threads: int | None = None  # torch CPU threads (None: torch's default)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "fpn_channels", "min_size", "max_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or unset), got {self.threads}")
        if not math.isfinite(self.lr) or self.lr <= 0 or self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError("lr must be > 0, warmup_iters >= 0 and warmup_factor in (0, 1]")
        if list(self.lr_steps) != sorted(self.lr_steps):
            raise ValueError(f"lr_steps must be increasing epochs, got {list(self.lr_steps)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.eval_every < 0 or self.num_workers < 0:
            raise ValueError("eval_every and num_workers must be >= 0")
        try:
            check_seed(self.seed)
        except ValueError as e:
            raise ValueError(f"seed: {e}") from None

    def path(self, name: str) -> Path:
        """One of the four data paths, resolved against ``data_root``."""
        return Path(self.data_root).expanduser() / getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_steps"], d["anchor_sizes"] = list(self.lr_steps), list(self.anchor_sizes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> DetectionTrainConfig:
        """Typed and checked (unknown keys and wrong types are errors naming the key)."""
        return _typed(cls, data, where)


@dataclass(frozen=True)
class DetectionRecipe:
    """A named detection experiment: a training config and what the paper reports for it."""

    name: str
    description: str
    train: DetectionTrainConfig
    paper: dict[str, float] = field(default_factory=dict)  # the paper's figures for this setting (box AP ...)
    notes: str = ""


def list_detection_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))


def load_detection_recipe(name_or_path: str | Path) -> DetectionRecipe:
    """A detection recipe file, or the shipped one whose file stem matches; RecipeError naming file and field."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        shipped = {p.stem: p for p in list_detection_recipes()}
        if str(name_or_path) not in shipped:
            raise RecipeError(
                f"no detection recipe {str(name_or_path)!r}: not a file, and not one of the shipped ones "
                f"({', '.join(shipped) or 'none'})"
            )
        path = shipped[str(name_or_path)]
    try:
        data = load_yaml(read_settings_text(path))
    except SettingsFileError as e:
        raise RecipeError(str(e)) from None
    except Exception as e:  # yaml.YAMLError and its subclasses
        raise RecipeError(f"{path}: not valid YAML (plain YAML only, no tags or aliases): {e}") from None
    try:
        return _typed(DetectionRecipe, data, "")
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
