"""How well the latency table predicts whole networks on this machine: share within +-10% and rank correlation.

    python benchmarks/latency_predictor.py                           # CPU, batch 1 and 128 (about 10 min on 2 cores)
    python benchmarks/latency_predictor.py --device cuda --batch 1 --batch 128
    python benchmarks/latency_predictor.py --networks 10 --out lat.json

For each batch size: the table of this setting (the cache's, measured first where missing, as
``blockswap-zoo latency-table`` does; or ``--table-dir``), its calibration (10 networks, seed 0),
then ``--networks`` validation genotypes of WRN-40-2 on Fashion-MNIST's shape (1x28x28, 10 classes),
spread evenly over the parameter range (seed 1; calibration's are seed 0). Every validation network
is measured whole (median per call, three interleaved passes) and compared with its prediction. Prints
the share of predictions within +-10%, Spearman's rho, the median and largest absolute error, and the
raw (uncalibrated) sum's share for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_stats import spearman  # noqa: E402

from blockswap_zoo.backbones import parse_backbone  # noqa: E402
from blockswap_zoo.latency import LatencyTable, MeasureSetting, NetworkShape, calibrate, predict_ms  # noqa: E402
from blockswap_zoo.latency.predictor import calibration_of, raw_sum_ms, spread_genotypes  # noqa: E402


def validate(setting: MeasureSetting, shape: NetworkShape, networks: int, table_dir: Path | None) -> dict:
    t0 = time.perf_counter()
    table = LatencyTable.open(setting, None if table_dir is None else table_dir / setting.file_name())
    measured_entries = table.measure(shape)
    if calibration_of(table, shape) is None:
        calibrate(table, shape, 10, seed=0)
    t_table = time.perf_counter() - t0
    genotypes = spread_genotypes(shape, networks, seed=1)
    timings = table.time_networks([shape.build(g) for g in genotypes], shape)
    measured = np.array([t.median_ms for t in timings])
    predicted = np.array([predict_ms(table, shape, g) for g in genotypes])
    raw = np.array([raw_sum_ms(table, shape, g) for g in genotypes])
    rel = (predicted - measured) / measured
    cal = calibration_of(table, shape)
    return {
        "setting": setting.to_dict(),
        "measured_on": setting.describe(),
        "networks": networks,
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
        "spearman": spearman(predicted, measured),
        "median_abs_error_pct": float(100 * statistics.median(np.abs(rel))),
        "max_abs_error_pct": float(100 * np.max(np.abs(rel))),
        "raw_sum_within_10pct": float(np.mean(np.abs((raw - measured) / measured) <= 0.10)),
        "measured_ms_range": [float(measured.min()), float(measured.max())],
        "calibration": None if cal is None else cal.to_dict(),
        "table": str(table.path),
        "table_entries_measured_now": measured_entries,
        "table_seconds": round(t_table, 1),
        "validation_seconds": round(time.perf_counter() - t0 - t_table, 1),
        "rows": [
            {"genotype": g.to_string(), "predicted_ms": round(float(p), 4), "measured_ms": round(float(m), 4)}
            for g, p, m in zip(genotypes, predicted, measured, strict=True)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, action="append", help="repeatable (default: 1 and 128)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--networks", type=int, default=30)
    ap.add_argument("--backbone", default="wrn_40_2")
    ap.add_argument("--table-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    shape = NetworkShape(parse_backbone(args.backbone), 1, (28, 28), 10)
    results = []
    for batch in args.batch or [1, 128]:
        r = validate(MeasureSetting.here(args.device, batch, args.dtype), shape, args.networks, args.table_dir)
        results.append(r)
        print(
            f"batch {batch}: {r['within_10pct']:.0%} of {r['networks']} predictions within +-10% "
            f"(raw sum: {r['raw_sum_within_10pct']:.0%}), Spearman {r['spearman']:.3f}, median |error| "
            f"{r['median_abs_error_pct']:.1f}%, max {r['max_abs_error_pct']:.1f}%; measured "
            f"{r['measured_ms_range'][0]:.3g}-{r['measured_ms_range'][1]:.3g} ms; table {r['table_seconds']} s, "
            f"validation {r['validation_seconds']} s\n  on {r['measured_on']}",
            flush=True,
        )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
