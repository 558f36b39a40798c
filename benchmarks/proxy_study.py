"""Does Fisher potential pick better students? Random WRN-40-2 students per budget, each trained with one
short fixed schedule (no distillation) and scored at initialisation by every proxy the package has, plus
params and MACs; then rank correlations, picks against random and best, and the paper's sample-count
experiment.

    python benchmarks/proxy_study.py score --out studies/proxy_study --budgets 200k,400k,800k --students 50 --seeds 0,1,2
    python benchmarks/proxy_study.py train --out studies/proxy_study --budgets 200k,400k,800k --students 50 --epochs 5
    python benchmarks/proxy_study.py analyse --out studies/proxy_study

``train`` and ``score`` draw the same students from ``--budgets``, ``--students`` and ``--seed`` and run
apart: ``score`` on any CPU, ``train`` on a GPU. Both are resumable (a student is done once its line is in
``students*.jsonl`` / ``scores.jsonl``); ``train`` shards with ``--shard I/K``: K processes (e.g. under
NVIDIA MPS on one GPU) each train every K-th student into their own file. ``analyse`` checks that both
hold the same genotypes and writes ``results.json`` and ``proxy_study.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_stats import bootstrap_ci, expected_pick_accuracy, kendall_tau_b, spearman  # noqa: E402

from blockswap_zoo import Genotype, build_model  # noqa: E402
from blockswap_zoo.data import get_dataset_info  # noqa: E402
from blockswap_zoo.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from blockswap_zoo.search import PROXIES, parse_budget, sample_genotypes  # noqa: E402
from blockswap_zoo.search.minibatch import load_search_batch  # noqa: E402
from blockswap_zoo.train import TrainConfig, train  # noqa: E402
from blockswap_zoo.train.distributed import device_name, resolve_device  # noqa: E402

BACKBONE = "wrn_40_2"
DATASET = "fashion_mnist"
SCORES = ("params", "macs", *PROXIES)


def _read_jsonl(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _append(path: Path, row: dict[str, Any]) -> None:
    """Add one line atomically: the file is rewritten whole, so a crash leaves the old or the new file."""
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(row) + "\n")


def plan(budgets: list[str], students: int, seed: int) -> list[dict[str, Any]]:
    """Every student of the study: (budget, index, genotype), drawn exactly uniformly at each budget."""
    info = get_dataset_info(DATASET)
    out = []
    for budget in budgets:
        genotypes = sample_genotypes(
            BACKBONE, budget, students, seed=seed, num_classes=info.num_classes, in_chans=info.in_chans,
            input_size=info.input_size[1:],
        )  # fmt: skip
        out += [
            {"budget": parse_budget(budget), "index": i, "genotype": g.to_string()} for i, g in enumerate(genotypes)
        ]
    return out


def _fix_settings(path: Path, settings: dict[str, Any]) -> None:
    """Record a step's settings on its first run; refuse to resume a study made with others."""
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise SystemExit(f"{path.parent} holds a study with other settings ({path}); use another --out")
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"budgets": args.budgets.split(","), "students": args.students, "seed": args.seed}


def train_students(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**_sampling(args),
                "schedule": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                             "max_steps": args.max_steps, "eval_subset": args.eval_subset}}  # fmt: skip
    _fix_settings(out / "settings.json", settings)
    shard, shards = (int(v) for v in args.shard.split("/"))
    mine = [s for i, s in enumerate(plan(settings["budgets"], args.students, args.seed)) if i % shards == shard]
    results = out / f"students.{shard}.jsonl"
    done = {(r["budget"], r["index"]) for r in _read_jsonl(sorted(out.glob("students*.jsonl")))}
    todo = [s for s in mine if (s["budget"], s["index"]) not in done]
    print(f"shard {shard}/{shards}: {len(mine) - len(todo)} of {len(mine)} students already trained", flush=True)
    for s in todo:
        cfg = TrainConfig(
            arch=s["genotype"], dataset=DATASET, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, device=args.device, max_steps=args.max_steps, eval_subset=args.eval_subset,
            eval_every=args.epochs, progress=False, compile=args.compile,
        )  # fmt: skip
        t0 = time.perf_counter()
        result = train(cfg)
        row = {**s, "top1": result.metrics["top1"], "train_time_s": round(time.perf_counter() - t0, 2),
               "hardware": result.metrics["device_name"]}  # fmt: skip
        _append(results, row)
        print(f"{s['budget']} #{s['index']}: top-1 {row['top1']:.2f}% in {row['train_time_s']:.0f}s", flush=True)


def score_students(args: argparse.Namespace) -> None:
    """Every proxy at initialisation (one minibatch, several init seeds), params and MACs, per student."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**_sampling(args), "init_seeds": args.seeds, "batch": args.batch}
    _fix_settings(out / "score_settings.json", settings)
    info = get_dataset_info(DATASET)
    batch = load_search_batch(DATASET, batch_size=args.batch, seed=0)
    device = resolve_device(args.device)
    images, labels = batch.images.to(device), batch.labels.to(device)
    results = out / "scores.jsonl"
    done = {(r["budget"], r["index"]) for r in _read_jsonl([results] if results.is_file() else [])}
    todo = [s for s in plan(settings["budgets"], args.students, args.seed) if (s["budget"], s["index"]) not in done]
    print(f"{len(done)} students already scored, {len(todo)} to go", flush=True)
    for s in todo:
        t0 = time.perf_counter()
        g = Genotype.from_string(s["genotype"])
        row: dict[str, Any] = {**s, "params": g.num_params(info.num_classes, info.in_chans),
                               "macs": g.macs(info.num_classes, info.in_chans, info.input_size[1:])}  # fmt: skip
        for name, proxy in PROXIES.items():
            values = []
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = build_model(g, num_classes=info.num_classes, in_chans=info.in_chans).to(device)
                values.append(float(proxy(model, images, labels)))
            row[name] = values
        row["hardware"] = device_name(device)
        _append(results, row)
        print(f"{s['budget']} #{s['index']}: scored in {time.perf_counter() - t0:.1f}s", flush=True)


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    """Per budget and score: Spearman and Kendall with accuracy (bootstrap 95% intervals), the accuracy of
    its pick among N against a random pick and the best of N, and the sample-count experiment."""
    out = Path(args.out)
    accuracy = {(r["budget"], r["index"]): r for r in _read_jsonl(sorted(out.glob("students*.jsonl")))}
    scores = [r for r in _read_jsonl([out / "scores.jsonl"]) if (r["budget"], r["index"]) in accuracy]
    for r in scores:
        if r["genotype"] != accuracy[(r["budget"], r["index"])]["genotype"]:
            raise SystemExit(
                f"{out}: student {r['index']} at {r['budget']} was scored and trained as two different genotypes; "
                "run score and train with the same --budgets, --students and --seed"
            )
    results: dict[str, Any] = {"settings": json.loads((out / "settings.json").read_text()),
                               "score_settings": json.loads((out / "score_settings.json").read_text()),
                               "budgets": {}}  # fmt: skip
    for budget in sorted({r["budget"] for r in scores}):
        rows = [r for r in scores if r["budget"] == budget]
        acc = np.array([accuracy[(r["budget"], r["index"])]["top1"] for r in rows])
        per: dict[str, Any] = {"students": len(rows), "mean_top1": float(acc.mean()), "best_top1": float(acc.max())}
        for name in SCORES:
            value = np.array([np.mean(r[name]) if isinstance(r[name], list) else r[name] for r in rows], dtype=float)
            per[name] = {
                "spearman": spearman(value, acc),
                "spearman_ci95": bootstrap_ci(value, acc, spearman, n_boot=args.bootstrap),
                "kendall": kendall_tau_b(value, acc),
                "kendall_ci95": bootstrap_ci(value, acc, kendall_tau_b, n_boot=args.bootstrap),
                "pick_top1": expected_pick_accuracy(value, acc, len(rows)),
                "pick_of_k": {
                    k: expected_pick_accuracy(value, acc, k) for k in (1, 10, 100, len(rows)) if k <= len(rows)
                },
            }
        results["budgets"][str(budget)] = per
    results["command"] = " ".join(sys.argv)
    results["hardware"] = {"train": sorted({r.get("hardware", "?") for r in accuracy.values()}),
                           "score": sorted({r.get("hardware", "?") for r in scores})}  # fmt: skip
    results["python"], results["torch"] = platform.python_version(), torch.__version__
    atomic_write_text(out / "results.json", json.dumps(_nan_to_null(results), indent=2, allow_nan=False) + "\n")
    _plot(out, scores, accuracy)
    return results


def _nan_to_null(value: Any) -> Any:  # noqa: ANN401
    """NaN (a correlation of a constant column) as JSON null, so results.json is standard JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_null(v) for v in value]
    return value


def _plot(out: Path, scores: list[dict[str, Any]], accuracy: dict[tuple[int, int], dict[str, Any]]) -> None:
    """One panel per budget: each proxy's score (rank, so all fit one axis) against trained accuracy."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from study_stats import rankdata

    budgets = sorted({r["budget"] for r in scores})
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        rows = [r for r in scores if r["budget"] == budget]
        acc = [accuracy[(r["budget"], r["index"])]["top1"] for r in rows]
        for name in SCORES:
            value = [np.mean(r[name]) if isinstance(r[name], list) else r[name] for r in rows]
            ax.scatter(rankdata(np.array(value)) / len(rows), acc, s=10, label=name, alpha=0.7)
        ax.set(title=f"{budget / 1e3:.0f}K parameters", xlabel="score rank (fraction)", ylabel="test top-1 (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out / "proxy_study.png", buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="train the students (resumable, shardable)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--max-steps", type=int, default=None, help="cap on steps per student (smoke runs)")
    t.add_argument("--eval-subset", type=int, default=None, help="only the first N test images")
    t.add_argument("--device", default="auto")
    t.add_argument("--compile", action="store_true")
    t.add_argument("--shard", default="0/1", help="I/K: train every K-th student starting at I")
    s = sub.add_parser("score", help="score every student at initialisation with every proxy (resumable)")
    for p in (t, s):
        p.add_argument("--budgets", default="200k,400k,800k")
        p.add_argument("--students", type=int, default=50)
        p.add_argument("--seed", type=int, default=0, help="sampling seed (and train's training seed)")
    s.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2])
    s.add_argument("--batch", type=int, default=128, help="minibatch size (the search's)")
    s.add_argument("--device", default="auto")
    a = sub.add_parser("analyse", help="correlations, picks and the sample-count experiment")
    a.add_argument("--bootstrap", type=int, default=2000)
    for p in (t, s, a):
        p.add_argument("--out", required=True, help="the study's folder")
    args = parser.parse_args(argv)
    {"train": train_students, "score": score_students, "analyse": analyse}[args.step](args)


if __name__ == "__main__":
    main()
