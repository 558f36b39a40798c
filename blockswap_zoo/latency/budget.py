"""A search's latency budget: the candidates drawn under it, and the winner measured against it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from ..genotype import Genotype
from ..search.sampler import BudgetError, BudgetSpace, sample_space
from .device import MeasureSetting
from .predictor import calibrate, calibration_of, latency_space, predict_ms
from .table import LatencyTable, NetworkShape

__all__ = ["LatencyBudget", "LatencyDraw", "draw_under_latency", "measure_against_budget"]


@dataclass(frozen=True)
class LatencyBudget:
    """Milliseconds per forward in one measuring setting; optionally a parameter cap as well."""

    ms: float
    device: str = "cpu"
    batch: int = 1
    dtype: str = "float32"
    table: str | None = None  # the table file (default: the cache's file for the setting)
    max_params: int | None = None
    calibration_networks: int = 10
    settle_seconds: float = 30.0  # rest before the winner is measured (see measure_against_budget)


@dataclass(frozen=True)
class LatencyDraw:
    """The candidates of a latency-budgeted search and what they were drawn against."""

    genotypes: list[Genotype]
    table: LatencyTable
    record: dict[str, object]  # kept in the search's settings: a resume must draw against the same table


def table_sha256(table: LatencyTable) -> str:
    """The table's identity: its setting, entries and calibrations (not when it was written)."""
    data = {"setting": table.setting.to_dict(), "entries": table.entries, "calibrations": table.calibrations}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def draw_under_latency(
    budget: LatencyBudget,
    shape: NetworkShape,
    n: int,
    seed: int,
    tolerance: float,
    block_types: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> LatencyDraw:
    """``n`` genotypes uniform over those whose predicted latency is within ``tolerance`` of the budget (and
    under the parameter cap); the table's missing entries and calibration are measured first."""
    table = LatencyTable.open(MeasureSetting.here(budget.device, budget.batch, budget.dtype), budget.table)
    missing = len(table.missing(shape, block_types))
    if missing and log is not None:
        log(f"latency table: measuring {missing} missing entries for {shape.key} ({table.setting.describe()})")
    table.measure(shape, block_types)
    if calibration_of(table, shape) is None:
        if log is not None:
            log(f"latency table: calibrating on {budget.calibration_networks} whole networks")
        calibrate(table, shape, budget.calibration_networks, block_types=block_types)
    space = latency_space(table, shape, block_types)
    cap = budget.max_params
    accept = None if cap is None else _under_params(shape, cap, block_types)
    genotypes = sample_space(
        space, round(budget.ms / space.unit), n, seed, tolerance, accept, f"the cap of {cap or 0:,} parameters"
    )
    record: dict[str, object] = {
        "budget_ms": budget.ms,
        "max_params": cap,
        "setting": table.setting.to_dict(),
        "table": str(table.path) if table.path else None,
        "table_sha256": table_sha256(table),
    }
    return LatencyDraw(genotypes, table, record)


def _under_params(shape: NetworkShape, cap: int, block_types: Sequence[str] | None) -> Callable[[Genotype], bool]:
    """A fast test of ``params <= cap`` from the per-slot costs (the sampler may test a million draws);
    BudgetError at once when even the smallest genotype exceeds the cap."""
    p = BudgetSpace.build(shape.backbone, "params", shape.num_classes, shape.in_chans, shape.input_hw, block_types)
    if p.reachable[0] > cap:
        raise BudgetError(
            f"the parameter cap {cap:,} is below the smallest {shape.backbone.name} genotype ({p.reachable[0]:,} "
            "parameters); raise --max-params"
        )
    costs = [dict(zip(ts, cs, strict=True)) for ts, cs in zip(p.types, p.costs, strict=True)]
    return lambda g: p.fixed + sum(c[b] for c, b in zip(costs, g.blocks, strict=True)) <= cap


def measure_against_budget(
    table: LatencyTable,
    shape: NetworkShape,
    genotype: Genotype,
    budget_ms: float,
    fresh_process: bool = True,
    settle_seconds: float = 30.0,
) -> dict[str, float | str]:
    """The genotype's predicted and measured latency, and how far the measurement is from the budget.

    By default it is measured as ``blockswap-zoo latency`` measures: in a fresh interpreter, after
    ``settle_seconds`` of rest (for half a minute after scoring, this CPU ran the same network up to 80%
    slower; docs/benchmarks.md).
    """
    if fresh_process and table.path is not None:
        spec = [shape.backbone.name, shape.in_chans, list(shape.input_hw), shape.num_classes]
        job = json.dumps([str(table.path), spec, genotype.to_string(), budget_ms, settle_seconds])
        code = "import json, sys; from blockswap_zoo.latency.budget import _measure_job; print(json.dumps(_measure_job(*json.loads(sys.argv[1]))))"
        done = subprocess.run([sys.executable, "-c", code, job], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"measuring the winner's latency failed: {done.stderr.strip()[-2000:]}")
        return cast(dict[str, float | str], json.loads(done.stdout.strip().splitlines()[-1]))
    time.sleep(settle_seconds)
    (measured,) = table.time_networks([shape.build(genotype)], shape)
    return {
        "budget_ms": budget_ms,
        "predicted_ms": round(predict_ms(table, shape, genotype), 4),
        "measured_ms": round(measured.median_ms, 4),
        "measured_vs_budget_pct": round(100 * (measured.median_ms - budget_ms) / budget_ms, 2),
        "measured_on": table.setting.describe(),
    }


def _measure_job(table_path: str, spec: list, genotype: str, budget_ms: float, settle: float) -> dict[str, float | str]:
    """measure_against_budget in the fresh interpreter, in the table's setting (its thread count included)."""
    import torch

    from ..backbones import parse_backbone

    table = LatencyTable.load(table_path)
    if table.setting.device_type == "cpu":
        torch.set_num_threads(table.setting.threads)
    shape = NetworkShape(parse_backbone(spec[0]), spec[1], (spec[2][0], spec[2][1]), spec[3])
    return measure_against_budget(table, shape, Genotype.from_string(genotype), budget_ms, False, settle)
