"""Training throughput of the real engine (``blockswap_zoo.train.train``): a WRN-40-2 teacher and an 800K
student's AT distillation from it, on real Fashion-MNIST and on CIFAR-shaped data, one run alone and K
runs at once (K processes, under NVIDIA MPS on a GPU). Kinds:

    teacher     WRN-40-2 trained with cross-entropy
    distill     the zoo's 800K searched student distilled from WRN-40-2
    students    each of the zoo's seven searched students (150K ... 1.6M) trained with cross-entropy
    alone       the seven searched students each distilled alone from WRN-40-2, one after another
    together    the same seven distilled together in one process (``train_together``: one teacher pass per batch)

For ``alone`` and ``together`` the figure is student-images per second over all seven (7 x images / seconds).

Settings, each a ``TrainConfig`` the CLI can express:

    paper    how the paper's code trains: torchvision DataLoader with per-sample transforms, fp32, NCHW, eager
    eager    the defaults with ``--no-compile`` (on GPUs: on-device batch augmentation, bf16, channels_last)
    default  no flags (on one GPU: torch.compile with CUDA graphs; on CPUs the same as eager)
    bf16     ``--amp bf16 --channels-last --no-compile`` (the default on a CPU with native bf16)
    fp32     ``--amp none --no-channels-last --no-compile``: eager fp32 NCHW with on-device augmentation

Each run trains ``--repeats + 1`` short epochs of ``--steps`` batches; the first (warm-up and compiling) is
dropped and the median of the others' images/s is the run's figure. The first epoch's seconds are reported
beside it: compiling included, so a second call shows what compiling costs with a warm cache. With K runs
at once, the aggregate is the sum of the K runs' figures (their timed epochs overlap, as they start
together and run alike).
CIFAR-shaped data are random uint8 3x32x32 images written in CIFAR-10's official format and read by the
engine's own CIFAR reader (the real CIFAR-10 cannot be downloaded here; speed does not depend on content).

    python benchmarks/train_speed.py --device cuda --settings eager,default --concurrent 1,4,8
    python benchmarks/train_speed.py --device cpu --settings paper,default,bf16 --steps 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blockswap_zoo.data.cifar import CIFAR_LAYOUTS, write_cifar_batch
from blockswap_zoo.factory import create_model
from blockswap_zoo.genotype import Genotype
from blockswap_zoo.io import atomic_write_text
from blockswap_zoo.train import TrainConfig, train
from blockswap_zoo.train.distributed import device_name

STUDENT_800K = "wrn_40_2_bs800k.fmnist_at_e30"  # the zoo's 800K student: its search's winner
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {"loader": "dataloader", "amp": "none", "channels_last": False, "compile": False},
    "eager": {"compile": False},
    "default": {},
    "bf16": {"amp": "bf16", "channels_last": True, "compile": False},
    "fp32": {"amp": "none", "channels_last": False, "compile": False},  # eager fp32 NCHW, on-device augmentation
}
KINDS = ("teacher", "distill", "students", "alone", "together")
BUDGETS = ("150k", "200k", "250k", "400k", "500k", "800k", "1600k")
DATA = {"fashion_mnist": "fashion_mnist", "cifar_shaped": "cifar10"}


def _student_genotype(budget: str = "800k") -> str:
    """A searched student's genotype (the 800K one by default), from the zoo's search report."""
    name = STUDENT_800K.replace("800k", budget)
    winner = Path(__file__).resolve().parents[1] / "searches" / "fmnist_zoo" / name / "winner.json"
    return Genotype.load(winner).to_string()


def write_cifar_shaped(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random uint8 images and labels in CIFAR-10's on-disk layout under ``root``; -> ``root``."""
    layout = CIFAR_LAYOUTS["cifar10"]
    folder = root / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = -(-n_train // len(layout.train))
    for name, n in [*((f, per_batch) for f in layout.train), *((f, n_test) for f in layout.test)]:
        write_cifar_batch(
            folder / name, rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()
        )
    meta = {layout.names_key.encode(): [f"class{i}".encode() for i in range(10)]}
    (folder / layout.meta).write_bytes(pickle.dumps(meta, protocol=2))
    return root


def one_run(kind: str, setting: str, data: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train once in this process; the run's median images/s after the warm-up epoch (for ``students``: each
    student's, and their median)."""
    from blockswap_zoo.train import train_together

    dataset = DATA[data]
    in_chans = 1 if dataset == "fashion_mnist" else 3

    def config(arch: str) -> TrainConfig:
        return TrainConfig(
            arch=arch, dataset=dataset, data_dir=args.data_dir, download=False, epochs=args.repeats + 1,
            batch_size=args.batch_size, subset=args.steps * args.batch_size, eval_every=0,
            eval_subset=args.batch_size, progress=False, device=args.device, num_workers=args.workers,
            **SETTINGS[setting],
        )  # fmt: skip

    teacher = create_model("wrn_40_2", num_classes=10, in_chans=in_chans) if kind != "teacher" else None
    if kind == "students":
        each = {b: _rates(train(config(_student_genotype(b))).history) for b in BUDGETS}
        medians = {b: statistics.median(r) for b, r in each.items()}
        return {"kind": kind, "setting": setting, "data": data, "images_per_s": statistics.median(medians.values()),
                "students": medians, "first_epoch_s": 0.0}  # fmt: skip
    if kind in ("alone", "together"):
        configs = [config(_student_genotype(b)) for b in BUDGETS]
        if kind == "alone":
            histories = [train(c, teacher=teacher).history for c in configs]
        else:
            histories = [r.history for r in train_together(configs, teacher=teacher)]
        n = args.steps * args.batch_size
        rates = [len(BUDGETS) * n / sum(h[e]["epoch_time_s"] for h in histories) for e in range(1, args.repeats + 1)]
        first = sum(h[0]["epoch_time_s"] for h in histories)
        return {"kind": kind, "setting": setting, "data": data, "images_per_s": statistics.median(rates),
                "epochs": rates, "first_epoch_s": first}  # fmt: skip
    arch = "wrn_40_2" if kind == "teacher" else _student_genotype()
    result = train(config(arch), teacher=teacher)
    rates = _rates(result.history)
    first = result.history[0]["epoch_time_s"]  # compiling included: compare a cold and a warm compile cache
    return {"kind": kind, "setting": setting, "data": data, "images_per_s": statistics.median(rates),
            "epochs": rates, "first_epoch_s": first}  # fmt: skip


def _rates(history: list[dict[str, Any]]) -> list[float]:
    """Images per second of the timed epochs (the first, warm-up and compiling, dropped)."""
    return [r["images_per_s"] for r in history[1:]]


def _device_words(device: str) -> str:
    words = device_name(torch.device(device))
    return words if device.startswith("cuda") else f"{words}, {torch.get_num_threads()} threads"


def _runs_at_once(k: int, worker: list[str]) -> list[dict[str, Any]] | str:
    """K worker processes started together; their results, or why they failed."""
    procs = [subprocess.Popen(worker, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        return f"failed (exit {[q.returncode for q in procs]})"
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kinds", default="teacher,distill", help=f"any of {', '.join(KINDS)}")
    p.add_argument("--settings", default="eager,default", help=f"any of {', '.join(SETTINGS)}")
    p.add_argument("--data", default="fashion_mnist,cifar_shaped", help=f"any of {', '.join(DATA)}")
    p.add_argument("--concurrent", default="1", help="runs at once, e.g. 1,4,8 (K processes)")
    p.add_argument("--steps", type=int, default=100, help="batches per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the paper setting")
    p.add_argument("--json", default=None, help="also write every run's figures to this file")
    p.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", nargs=3, metavar=("KIND", "SETTING", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(one_run(*args.worker, args)), flush=True)
        return
    for name, allowed in (("settings", SETTINGS), ("data", DATA), ("kinds", KINDS)):
        unknown = set(getattr(args, name).split(",")) - set(allowed)
        if unknown:
            p.error(f"--{name}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
    print(f"device: {_device_words(args.device)}; torch {torch.__version__}; batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} timed epochs per run", flush=True)  # fmt: skip
    print("| data | run | setting | runs at once | img/s per run (median) | img/s together | first epoch s |")
    print("|---|---|---|---:|---:|---:|---:|")
    base = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps), "--repeats",
            str(args.repeats), "--batch-size", str(args.batch_size), "--workers", str(args.workers)]  # fmt: skip
    table = []
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for data in args.data.split(","):
            extra = []
            if data == "cifar_shaped":
                n = (args.repeats + 1) * args.steps * args.batch_size
                extra = ["--data-dir", str(write_cifar_shaped(Path(tmp), n_train=n, n_test=args.batch_size))]
            for kind in args.kinds.split(","):
                for setting in args.settings.split(","):
                    for k in map(int, args.concurrent.split(",")):
                        runs = _runs_at_once(k, [*base, *extra, "--worker", kind, setting, data])
                        if isinstance(runs, str):
                            print(f"| {data} | {kind} | {setting} | {k} | {runs} | |", flush=True)
                            continue
                        rates = [r["images_per_s"] for r in runs]
                        table.append({"data": data, "kind": kind, "setting": setting, "runs_at_once": k,
                                      "per_run": statistics.median(rates), "together": sum(rates), "runs": runs})  # fmt: skip
                        first = statistics.median(r["first_epoch_s"] for r in runs)
                        for r in runs[:1]:  # the students' own figures, one line each
                            for budget, rate in r.get("students", {}).items():
                                print(f"| {data} | student {budget} | {setting} | {k} | {rate:,.0f} | | |")
                        print(f"| {data} | {kind} | {setting} | {k} | {statistics.median(rates):,.0f} | "
                              f"{sum(rates):,.0f} | {first:.1f} |", flush=True)  # fmt: skip
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"device": _device_words(args.device), "table": table}, indent=2))


if __name__ == "__main__":
    main()
