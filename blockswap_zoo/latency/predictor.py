"""Whole-network latency from a table: the sum of block, stem and tail timings, corrected by a per-network
linear calibration fitted on a few measured networks (what the sum misses: launch overhead, caches, fusion)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..blocks import get_block_type
from ..genotype import Genotype
from ..search.sampler import BudgetSpace, reachable_range, sample_genotypes
from .device import LatencyError
from .table import LatencyTable, NetworkShape, Progress

__all__ = [
    "Calibration",
    "calibrate",
    "latency_space",
    "parse_latency",
    "predict_ms",
    "spread_genotypes",
]

UNITS_PER_NETWORK = 50_000  # the latency sampler's resolution: the slowest network spans this many units


@dataclass(frozen=True)
class Calibration:
    """measured ~ scale * (sum of table entries) + offset_ms, fitted for one network shape."""

    scale: float
    offset_ms: float
    networks: int
    max_rel_error: float  # the fit's largest relative error on the networks it was fitted on

    def apply(self, raw_ms: float) -> float:
        return self.scale * raw_ms + self.offset_ms

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def parse_latency(text: str | float) -> float:
    """``'2.5ms'``, ``'800us'``, ``'0.01s'`` (a bare number is milliseconds) -> milliseconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        for suffix, scale in (("ms", 1.0), ("us", 1e-3), ("µs", 1e-3), ("s", 1e3), ("", 1.0)):
            if s.endswith(suffix):
                try:
                    value = float(s[: len(s) - len(suffix)] if suffix else s) * scale
                except ValueError:
                    raise LatencyError(
                        f"latency {text!r} is not a duration; write e.g. 2.5ms, 800us or 0.01s"
                    ) from None
                break
    if not math.isfinite(value) or value <= 0:
        raise LatencyError(f"latency budget must be a positive duration, got {text!r}")
    return value


def raw_sum_ms(table: LatencyTable, shape: NetworkShape, genotype: Genotype) -> float:
    """Stem + tail + every block's entry: the uncalibrated prediction."""
    blocks = sum(table.block_ms(shape, bt, slot) for bt, slot in zip(genotype.block_types, shape.slots(), strict=True))
    return table.fixed_ms(shape) + blocks


def calibration_of(table: LatencyTable, shape: NetworkShape) -> Calibration | None:
    raw = table.calibrations.get(shape.key)
    return Calibration(**raw) if raw else None


def predict_ms(table: LatencyTable, shape: NetworkShape, genotype: Genotype) -> float:
    """The predicted latency of ``genotype``: calibrated when the table holds a calibration for ``shape``."""
    raw = raw_sum_ms(table, shape, genotype)
    cal = calibration_of(table, shape)
    return cal.apply(raw) if cal is not None else raw


def spread_genotypes(
    shape: NetworkShape, n: int, seed: int, block_types: Sequence[str] | None = None
) -> list[Genotype]:
    """``n`` genotypes spread evenly over the backbone's parameter range (one uniform draw near each of ``n``
    budgets): small and large networks alike, for calibration and validation."""
    if n < 1:
        return []
    lo, hi = reachable_range(shape.backbone, "params", shape.num_classes, shape.in_chans, shape.input_hw, block_types)
    out = []
    for i in range(n):
        budget = round(lo + (hi - lo) * (0.05 + 0.9 * (i + 0.5) / n))
        (g,) = sample_genotypes(
            shape.backbone, budget, 1, seed * 100_003 + i, 0.05, "params",
            shape.num_classes, shape.in_chans, shape.input_hw, block_types,
        )  # fmt: skip
        out.append(g)
    return out


def calibrate(
    table: LatencyTable,
    shape: NetworkShape,
    networks: int = 10,
    seed: int = 0,
    block_types: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> Calibration:
    """Measure ``networks`` whole networks of ``shape`` and fit scale and offset minimising relative error;
    stored in the table (saved when it has a file)."""
    if networks < 2:
        raise LatencyError(f"calibration needs at least 2 networks (scale and offset), got {networks}")
    genotypes = spread_genotypes(shape, networks, seed, block_types)
    table.measure(shape, {b for g in genotypes for b in g.blocks})
    timings = table.time_networks([shape.build(g) for g in genotypes], shape, progress=progress)
    r = np.array([raw_sum_ms(table, shape, g) for g in genotypes])
    m = np.array([t.median_ms for t in timings])
    design = np.stack([r / m, 1.0 / m], axis=1)  # (scale r + offset) / m ~ 1: least relative squares
    (scale, offset), *_ = np.linalg.lstsq(design, np.ones_like(m), rcond=None)
    fitted = scale * r + offset
    cal = Calibration(float(scale), float(offset), networks, float(np.max(np.abs(fitted - m) / m)))
    table.calibrations[shape.key] = cal.to_dict()
    if table.path is not None:
        table.save()
    return cal


def latency_space(table: LatencyTable, shape: NetworkShape, block_types: Sequence[str] | None = None) -> BudgetSpace:
    """The sampler's search space with predicted latency as the cost, in integer units of ``space.unit`` ms
    (a slowest network spans about ``UNITS_PER_NETWORK`` of them; rounding moves a sum by under 0.05%)."""
    base = BudgetSpace.build(shape.backbone, "params", shape.num_classes, shape.in_chans, shape.input_hw, block_types)
    cal = calibration_of(table, shape) or Calibration(1.0, 0.0, 0, 0.0)
    slots = shape.slots()
    block_ms = [[cal.scale * table.block_ms(shape, get_block_type(t), slot) for t in ts] for ts, slot in
                zip(base.types, slots, strict=True)]  # fmt: skip
    fixed_ms = cal.scale * table.fixed_ms(shape) + cal.offset_ms
    slowest = fixed_ms + sum(max(ms) for ms in block_ms)
    if slowest <= 0:
        raise LatencyError(f"the table predicts a non-positive latency ({slowest:.4f} ms) for {shape.key}")
    unit = slowest / UNITS_PER_NETWORK
    costs = tuple(tuple(round(ms / unit) for ms in row) for row in block_ms)
    return BudgetSpace(base.backbone, "latency", base.types, costs, round(fixed_ms / unit), unit)
