"""A device's latency table: measured milliseconds per block (type and shape), stem and tail, plus the
per-network calibration that corrects their sum; one JSON file per measuring setting, measured once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone, Slot
from ..blocks import BlockConfigError, BlockType, get_block_type, sampled_block_names
from ..genotype import Genotype
from ..io import atomic_write_text
from ..models import block_class, build_block, build_model
from ..models.base import SwapNet, init_weights
from .device import LatencyError, MeasureSetting
from .timing import Timing, time_interleaved

__all__ = ["FORMAT", "LatencyTable", "NetworkShape", "default_table_path"]

FORMAT = "blockswap-latency-table/1"
Progress = Callable[[int, int, str], None]  # (done, total, what is being measured)


@dataclass(frozen=True)
class NetworkShape:
    """What fixes every block's shape: the backbone, input channels and size, and the classes."""

    backbone: Backbone
    in_chans: int
    input_hw: tuple[int, int]
    num_classes: int

    @property
    def key(self) -> str:
        return f"{self.backbone.name} {self.in_chans}x{self.input_hw[0]}x{self.input_hw[1]} {self.num_classes} classes"

    def slots(self) -> list[Slot]:
        return self.backbone.slots(self.input_hw)

    def build(self, genotype: Genotype) -> SwapNet:
        if genotype.backbone != self.backbone.name:
            raise LatencyError(f"genotype of {genotype.backbone} given for a {self.backbone.name} table entry")
        return build_model(genotype, self.num_classes, self.in_chans)

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.in_chans, *self.input_hw)


class _Stem(nn.Module):
    def __init__(self, model: SwapNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_stem(x)


class _Tail(nn.Module):
    def __init__(self, model: SwapNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_final_norm(x))


SAVE_EVERY = 16  # entries measured (interleaved) between two saves of the table


def block_key(shape: NetworkShape, block_type: BlockType, slot: Slot) -> str:
    """The entry of one block: its module class, type and shape (shared by backbones with equal blocks)."""
    cls = block_class(shape.backbone, block_type).__name__
    h, w = slot.in_hw
    return f"block {cls} {block_type.name} {slot.in_chs}->{slot.out_chs} s{slot.stride} {h}x{w}"


def default_table_path(setting: MeasureSetting) -> Path:
    """``$BLOCKSWAP_ZOO_LATENCY_DIR`` or the weights cache's ``latency/``, then the setting's file name."""
    env = os.environ.get("BLOCKSWAP_ZOO_LATENCY_DIR")
    if env:
        return Path(env) / setting.file_name()
    from ..pretrained import cache_dir

    return cache_dir() / "latency" / setting.file_name()


@dataclass
class LatencyTable:
    """Measured entries (block, stem and tail timings) and network calibrations of one setting."""

    setting: MeasureSetting
    entries: dict[str, dict] = field(default_factory=dict)
    calibrations: dict[str, dict] = field(default_factory=dict)
    path: Path | None = None

    # --- file ---------------------------------------------------------------------------------------

    @classmethod
    def open(cls, setting: MeasureSetting, path: str | Path | None = None) -> LatencyTable:
        """The table of ``setting`` at ``path`` (default: the cache), or a new empty one if none is there."""
        p = Path(path) if path is not None else default_table_path(setting)
        if not p.exists():
            return cls(setting, path=p)
        table = cls.load(p)
        if table.setting != setting:
            diff = [
                f"{k}: table {v!r}, here {setting.to_dict()[k]!r}"
                for k, v in table.setting.to_dict().items()
                if v != setting.to_dict()[k]
            ]
            raise LatencyError(
                f"latency table {p} was measured in another setting ({'; '.join(diff)}); "
                "measure a table here (`blockswap-zoo latency-table` without --table) or match its setting"
            )
        return table

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table file (JSON, no code), checking its format."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except FileNotFoundError:
            raise LatencyError(f"no latency table at {p}; build one with `blockswap-zoo latency-table`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LatencyError(f"latency table {p} cannot be read ({e}); delete it and measure again") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise LatencyError(f"{p} is not a latency table (format {found!r}, expected {FORMAT!r})")
        try:
            setting = MeasureSetting(**raw["setting"])
            entries, calibrations = dict(raw["entries"]), dict(raw["calibrations"])
        except (KeyError, TypeError, ValueError) as e:
            raise LatencyError(f"latency table {p} is damaged ({e}); delete it and measure again") from None
        return cls(setting, entries, calibrations, p)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the table atomically (to ``path``, else where it was opened)."""
        p = Path(path) if path is not None else self.path
        if p is None:
            raise LatencyError("this table has no file yet; pass a path")
        p.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "setting": self.setting.to_dict(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "entries": dict(sorted(self.entries.items())),
            "calibrations": dict(sorted(self.calibrations.items())),
        }
        atomic_write_text(p, json.dumps(data, indent=1) + "\n")
        self.path = p
        return p

    # --- entries ------------------------------------------------------------------------------------

    def block_ms(self, shape: NetworkShape, block_type: BlockType, slot: Slot) -> float:
        return self._ms(block_key(shape, block_type, slot))

    def fixed_ms(self, shape: NetworkShape) -> float:
        """Stem plus tail (final norm, pooling, classifier): the same in every genotype of ``shape``."""
        return self._ms(self._stem_key(shape)) + self._ms(self._tail_key(shape))

    def _ms(self, key: str) -> float:
        try:
            return float(self.entries[key]["median_ms"])
        except KeyError:
            raise LatencyError(
                f"latency table {self.path or '(new)'} has no entry {key!r}; measure it with "
                "`blockswap-zoo latency-table` for this backbone, input size and block types"
            ) from None

    @staticmethod
    def _stem_key(shape: NetworkShape) -> str:
        return f"stem {shape.backbone.name} {shape.in_chans}x{shape.input_hw[0]}x{shape.input_hw[1]}"

    @staticmethod
    def _tail_key(shape: NetworkShape) -> str:
        return f"tail {shape.key}"

    def missing(
        self, shape: NetworkShape, block_types: Iterable[str] | None = None
    ) -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
        """The entries ``shape`` needs (for ``block_types``, default the 23 sampled) that the table lacks:
        each as (key, a builder of the module to time, its input shape without the batch)."""
        names = list(dict.fromkeys(get_block_type(n).name for n in (block_types or sampled_block_names())))
        need: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {}
        uniform = shape.build(Genotype.uniform(shape.backbone.name))
        with torch.no_grad():
            feats = uniform.forward_features(torch.zeros(shape.input_shape(1)))
        need[self._stem_key(shape)] = (lambda: _Stem(shape.build(Genotype.uniform(shape.backbone.name))),
                                       shape.input_shape(1)[1:])  # fmt: skip
        need[self._tail_key(shape)] = (lambda: _Tail(shape.build(Genotype.uniform(shape.backbone.name))),
                                       tuple(feats.shape[1:]))  # fmt: skip
        for slot in shape.slots():
            for n in names:
                bt = get_block_type(n)
                try:
                    shape.backbone.block_cost(bt, slot)  # raises where the type cannot be built here
                except BlockConfigError:
                    continue
                key = block_key(shape, bt, slot)
                if key not in need:
                    need[key] = (_block_builder(shape.backbone, bt, slot), (slot.in_chs, *slot.in_hw))
        return [(k, build, s) for k, (build, s) in need.items() if k not in self.entries]

    def measure(
        self,
        shape: NetworkShape,
        block_types: Iterable[str] | None = None,
        progress: Progress | None = None,
        passes: int = 3,
    ) -> int:
        """Measure every entry ``shape`` needs that is missing, in interleaved passes over chunks of
        :data:`SAVE_EVERY` entries, saving the table (when it has a file) after each chunk: a run that is stopped
        keeps what it measured, and the next one measures only the rest. Returns how many entries were measured."""
        todo = self.missing(shape, block_types)
        total = len(todo)
        for start in range(0, total, SAVE_EVERY):
            chunk = todo[start : start + SAVE_EVERY]
            jobs = [(build(), (self.setting.batch, *in_shape)) for _, build, in_shape in chunk]

            def report(done: int, of: int, chunk: list = chunk, start: int = start) -> None:
                if progress is not None:  # the chunk's passes, shown as the share of the whole table
                    share = start + done * len(chunk) // max(of, 1)
                    progress(share, total, chunk[done % len(chunk)][0] if done < of else "")

            timings = time_interleaved(jobs, self._device, self.setting.dtype, passes, progress=report)
            for (key, _, _), timing in zip(chunk, timings, strict=True):
                self.entries[key] = timing.to_dict()
            if self.path is not None:
                self.save()
        return total

    def time_networks(
        self, models: Sequence[nn.Module], shape: NetworkShape, passes: int = 3, progress: Progress | None = None
    ) -> list[Timing]:
        """Whole networks' measured latencies in this table's setting (interleaved passes)."""
        jobs = [(m, shape.input_shape(self.setting.batch)) for m in models]

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total, f"network {done % len(jobs) + 1}/{len(jobs)}" if done < total else "")

        return time_interleaved(jobs, self._device, self.setting.dtype, passes, progress=report)

    @property
    def _device(self) -> str:
        return "cuda" if self.setting.device_type == "cuda" else "cpu"


def _block_builder(backbone: Backbone, block_type: BlockType, slot: Slot) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        block = build_block(backbone, block_type, slot)
        init_weights(block)
        return block

    return build
