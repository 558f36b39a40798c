"""Typed training settings: defaults < ``--config`` YAML (plain data, unknown keys refused) < options."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..limits import check_seed
from ..yaml_io import SettingsFileError, load_yaml, read_settings_text
from .distributed import parse_device

__all__ = ["ConfigError", "TrainConfig", "load_config_file", "paper_defaults", "resolve_config"]


class ConfigError(ValueError):
    """A settings file or value that is invalid; the message names the key (and file)."""


@dataclass
class TrainConfig:
    """Everything a teacher-training or distillation run needs (the paper's CIFAR settings by default).

    ``batch_size`` is global (split across ``torchrun`` processes); ``lr`` is used as given unless
    ``lr_scaling: linear`` (then ``lr * batch_size / base_batch_size``). ``beta`` and ``at_mode``
    apply when a teacher is given; ``kd_alpha`` > 0 adds Hinton KD.
    """

    arch: str = "wrn_40_2"
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = True
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 30
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    lr_scaling: str = "none"
    base_batch_size: int = 128
    teacher: str | None = None
    beta: float = 1000.0
    at_mode: str = "code"
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0
    drop_rate: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None  # None: compiled (CUDA graphs) on one GPU, eager on CPUs and under DDP
    compile_mode: str = "auto"  # torch.compile mode; auto: reduce-overhead (CUDA graphs) on GPUs
    deterministic: bool = False
    max_steps: int | None = None
    subset: int | None = None
    eval_subset: int | None = None
    eval_every: int = 1
    eval_batch_size: int = 128
    loader: str = "auto"
    num_workers: int = 4
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting."""
        choices = {
            "schedule": ("cosine", "step", "constant"),
            "lr_scaling": ("none", "linear"),
            "at_mode": ("code", "paper"),
            "amp": ("auto", "bf16", "none"),
            "loader": ("auto", "device", "dataloader"),
            "compile_mode": ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        positive = ("epochs", "batch_size", "base_batch_size", "eval_batch_size", "step_size")
        for key in positive:
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise ConfigError(f"{key} must be a positive integer; got {getattr(self, key)!r}")
        for key in ("max_steps", "subset", "eval_subset"):
            v = getattr(self, key)
            if v is not None and (not is_int(v) or v < 1):
                raise ConfigError(f"{key} must be a positive integer or null; got {v!r}")
        for key in ("eval_every", "num_workers"):
            v = getattr(self, key)
            if not is_int(v) or v < 0:
                raise ConfigError(f"{key} must be an integer >= 0; got {v!r}")
        try:
            check_seed(self.seed)
        except ValueError as e:
            raise ConfigError(f"seed {e}") from None
        for key in ("lr", "weight_decay", "beta", "warmup_epochs", "label_smoothing", "kd_alpha", "momentum"):
            if not is_number(getattr(self, key)) or getattr(self, key) < 0:
                raise ConfigError(f"{key} must be a finite number >= 0; got {getattr(self, key)!r}")
        if self.kd_alpha > 1 or self.label_smoothing >= 1:
            raise ConfigError("kd_alpha must be in [0, 1] and label_smoothing in [0, 1)")
        if not is_number(self.drop_rate) or not 0 <= self.drop_rate < 1:
            raise ConfigError(f"drop_rate must be in [0, 1); got {self.drop_rate!r}")
        if not is_number(self.gamma) or self.gamma <= 0:
            raise ConfigError(f"gamma must be a finite number > 0; got {self.gamma!r}")
        if not is_number(self.kd_temperature) or self.kd_temperature <= 0:
            raise ConfigError(f"kd_temperature must be a finite number > 0; got {self.kd_temperature!r}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0; set --momentum (0.9) or drop --nesterov")
        for key in ("download", "nesterov", "deterministic", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false; got {getattr(self, key)!r}")
        for key in ("channels_last", "compile"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true, false or null (auto); got {getattr(self, key)!r}")
        for key in ("arch", "dataset", "device"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ConfigError(f"{key} must be a non-empty string; got {getattr(self, key)!r}")
        for key in ("data_dir", "teacher"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key} must be a string or null; got {getattr(self, key)!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a mapping; got {self.extra!r}")
        if self.device != "auto":
            try:
                parse_device(self.device)
            except ValueError:
                raise ConfigError(f"device must be auto, cpu, cuda or cuda:<index>; got {self.device!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> TrainConfig:
        """Build from a mapping; an unknown key is an error naming the key and ``source``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                import difflib

                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
        floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
        data = {k: _yaml_float(v) if k in floats else v for k, v in data.items()}
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def _yaml_float(value: Any) -> Any:  # noqa: ANN401
    """``'5e-4'`` -> 5e-4: YAML 1.1 (PyYAML) reads exponents without a dot as strings. Other values pass."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML settings file (safe tags only, no code, no aliases: ``load_yaml``) into a dict."""
    path = Path(path)
    try:
        data = load_yaml(read_settings_text(path))
    except SettingsFileError as e:
        raise ConfigError(f"config file {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def paper_defaults(dataset: str) -> dict[str, Any]:
    """The paper's settings for a dataset where they differ from the CIFAR defaults (ImageNet)."""
    if dataset.lower().startswith(("imagenet", "ilsvrc")):
        return {
            "arch": "resnet34",
            "epochs": 100,
            "batch_size": 256,
            "base_batch_size": 256,
            "weight_decay": 1e-4,
            "schedule": "step",
            "step_size": 30,
            "beta": 750.0,
        }
    return {}


def resolve_config(
    config_file: str | Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None
) -> TrainConfig:
    """paper defaults for the dataset < ``defaults`` < config file < overrides (options given, i.e. not None)."""
    file_data = load_config_file(config_file) if config_file is not None else {}
    source = str(config_file) if config_file is not None else "settings"
    if config_file is not None:
        TrainConfig.from_dict(file_data, source=source)  # names the file on an unknown or bad key
    given = {k: v for k, v in overrides.items() if v is not None}
    dataset = given.get("dataset") or file_data.get("dataset") or (defaults or {}).get("dataset") or "cifar10"
    merged: dict[str, Any] = {**paper_defaults(str(dataset)), **(defaults or {}), **file_data}
    merged.update(given)
    return TrainConfig.from_dict(merged, source=source)
