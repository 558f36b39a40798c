"""Training throughput of the real engine (``blockswap_zoo.train.train``) on real Fashion-MNIST: eager
(``--no-compile``) against the defaults, one run alone and K runs at once (K processes, under NVIDIA MPS
on a GPU), for a teacher and for a distillation.

Each run trains ``--repeats + 1`` short epochs of ``--steps`` batches; the first (warm-up and compiling) is
dropped and the median of the others' images/s is the run's figure. With K runs at once, the aggregate is
the sum of the K runs' figures (their timed epochs overlap, as they start together and run alike).

    python benchmarks/engine_speed.py --device cuda --concurrent 1,4,8
    python benchmarks/engine_speed.py --device cpu --steps 3 --repeats 2 --kinds teacher   # a CPU try-out
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

import torch

from blockswap_zoo.cpu_info import cpu_info
from blockswap_zoo.factory import create_model
from blockswap_zoo.train import TrainConfig, train

STUDENT_800K = "wrn_40_2_bs800k.fmnist_at_e30"  # the zoo's 800K student: its search's winner


def _student_genotype() -> str:
    """The 800K student's genotype, from the zoo's search report."""
    from pathlib import Path

    from blockswap_zoo.genotype import Genotype

    winner = Path(__file__).resolve().parents[1] / "searches" / "fmnist_zoo" / STUDENT_800K / "winner.json"
    return Genotype.load(winner).to_string()


def one_run(kind: str, setting: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train once in this process; the run's median images/s after the warm-up epoch."""
    arch = "wrn_40_2" if kind == "teacher" else _student_genotype()
    cfg = TrainConfig(
        arch=arch, dataset="fashion_mnist", epochs=args.repeats + 1, batch_size=args.batch_size,
        subset=args.steps * args.batch_size, eval_every=0, eval_subset=args.batch_size, progress=False,
        device=args.device, compile=False if setting == "eager" else None, num_workers=0,
    )  # fmt: skip
    teacher = create_model("wrn_40_2", num_classes=10, in_chans=1) if kind == "distill" else None
    result = train(cfg, teacher=teacher)
    rates = [r["images_per_s"] for r in result.history[1:]]
    return {"kind": kind, "setting": setting, "images_per_s": statistics.median(rates), "epochs": rates}


def _device_words(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    info = cpu_info()
    return f"{info.describe()}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kinds", default="teacher,distill", help="teacher (WRN-40-2) and/or distill (800K <- WRN-40-2)")
    p.add_argument("--settings", default="eager,default", help="eager (--no-compile) and/or default (no flags)")
    p.add_argument("--concurrent", default="1", help="runs at once, e.g. 1,4,8 (K processes)")
    p.add_argument("--steps", type=int, default=100, help="batches per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--worker", nargs=2, metavar=("KIND", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(one_run(*args.worker, args)), flush=True)
        return
    print(f"device: {_device_words(args.device)}; torch {torch.__version__}", flush=True)
    base = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps),
            "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]  # fmt: skip
    print("| run | setting | runs at once | img/s per run (median) | img/s together |")
    print("|---|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        for setting in args.settings.split(","):
            for k in map(int, args.concurrent.split(",")):
                procs = [subprocess.Popen([*base, "--worker", kind, setting], stdout=subprocess.PIPE, text=True)
                         for _ in range(k)]  # fmt: skip
                outs = [proc.communicate()[0] for proc in procs]
                if any(proc.returncode for proc in procs):
                    print(f"| {kind} | {setting} | {k} | failed (exit {[q.returncode for q in procs]}) | |")
                    continue
                rates = [json.loads(out.strip().splitlines()[-1])["images_per_s"] for out in outs]
                print(f"| {kind} | {setting} | {k} | {statistics.median(rates):,.0f} | {sum(rates):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
