"""Does the fast path train as well as eager fp32? The same network from the same seeds, trained once per
variant on Fashion-MNIST, each evaluated in fp32 on the full test set; per-seed top-1, the mean and
spread per variant, and the paired differences.

    fp32   eager fp32 NCHW (``--amp none --no-channels-last --no-compile``)
    fast   the defaults: on a GPU bf16, channels_last, torch.compile with CUDA graphs; on a CPU with native
           bf16, bf16 autocast and channels_last (``--amp bf16 --channels-last`` on other CPUs)

    python benchmarks/fast_defaults_accuracy.py --device cpu --seeds 0,1,2     # WRN-16-2, 3 epochs on 20,000 images
    python benchmarks/fast_defaults_accuracy.py --device cuda --seeds 0,1,2 --epochs 5 --subset 60000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from blockswap_zoo.io import atomic_write_text
from blockswap_zoo.train.config import TrainConfig
from blockswap_zoo.train.distributed import device_name
from blockswap_zoo.train.engine import train
from blockswap_zoo.train.evaluate import evaluate

FP32: dict[str, Any] = {"amp": "none", "channels_last": False, "compile": False}


def fast_settings(device: str) -> dict[str, Any]:
    """The fast variant: the defaults on a GPU and on a CPU with native bf16, the bf16 channels_last opt-in on
    other CPUs."""
    from blockswap_zoo.cpu_info import cpu_info

    return {} if device.startswith("cuda") or cpu_info().native_bf16 else {"amp": "bf16", "channels_last": True}


def one_run(variant: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    settings = FP32 if variant == "fp32" else fast_settings(args.device)
    cfg = TrainConfig(
        arch=args.arch, dataset="fashion_mnist", epochs=args.epochs, subset=args.subset, batch_size=args.batch_size,
        eval_every=0, eval_subset=128, device=args.device, seed=seed, progress=False, **settings,
    )  # fmt: skip  # eval_subset: the engine's own evaluation is a token; the fp32 one below counts
    t0 = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - t0
    model = result.model.float().to(memory_format=torch.contiguous_format)
    m = evaluate(model, "fashion_mnist", device=args.device)
    losses = [round(h["train_loss"], 4) for h in result.history]
    return {"top1": m["top1"], "top5": m["top5"], "train_s": seconds, "epoch_losses": losses}


def _spread(values: list[float], sign: str = "") -> str:
    """Mean (sample sd, range); ``sign="+"`` for differences."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    m, lo, hi = statistics.mean(values), min(values), max(values)
    return f"{m:{sign}.2f} (sd {sd:.2f}, {lo:{sign}.2f} to {hi:{sign}.2f})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="wrn_16_2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--subset", type=int, default=20000, help="training images (the first N)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2])
    ap.add_argument("--json", default=None, help="also write every run to this file")
    args = ap.parse_args(argv)
    where = device_name(torch.device(args.device))
    print(f"torch {torch.__version__}, {where}, threads {torch.get_num_threads()}")
    print(f"{args.arch} on Fashion-MNIST, {args.epochs} epochs on {args.subset} images, seeds {args.seeds}")
    print(f"fast = {fast_settings(args.device) or 'the defaults'}; both evaluated in fp32 on the full test set")
    print("| seed | variant | top-1 | top-5 | train s | loss per epoch |\n|---:|---|---:|---:|---:|---|")
    runs: dict[str, list[dict[str, Any]]] = {"fp32": [], "fast": []}
    for seed in args.seeds:
        for variant in runs:
            r = one_run(variant, seed, args)
            runs[variant].append({"seed": seed, **r})
            print(f"| {seed} | {variant} | {r['top1']:.2f} | {r['top5']:.2f} | {r['train_s']:.0f} | "
                  f"{' '.join(f'{v:.3f}' for v in r['epoch_losses'])} |", flush=True)  # fmt: skip
    top1 = {v: [r["top1"] for r in rs] for v, rs in runs.items()}
    diffs = [f - e for f, e in zip(top1["fast"], top1["fp32"], strict=True)]
    print(f"top-1, mean (sd, range) over {len(args.seeds)} seeds: fp32 {_spread(top1['fp32'])}; "
          f"fast {_spread(top1['fast'])}; fast minus fp32 per seed {_spread(diffs, '+')}")  # fmt: skip
    if args.json:
        payload = {"device": where, "torch": torch.__version__, "settings": vars(args), "runs": runs}
        atomic_write_text(Path(args.json), json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
