"""What bf16 autocast with channels_last (the CPU fast path of the training commands) does to accuracy.

    python benchmarks/cpu_bf16_accuracy.py            # WRN-16-2, Fashion-MNIST, 3 epochs on 20,000 images

Trains the same network from the same seed twice on the CPU, once in fp32 NCHW (the CPU default)
and once with ``amp=bf16, channels_last=True`` (``--amp bf16 --channels-last``), then evaluates
both on the full Fashion-MNIST test set in fp32. One seed per variant: a difference of a few
tenths of a point is within what another seed could give.
"""

from __future__ import annotations

import argparse
import time

import torch

from blockswap_zoo.cpu_info import cpu_info
from blockswap_zoo.train.config import TrainConfig
from blockswap_zoo.train.engine import train
from blockswap_zoo.train.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="wrn_16_2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--subset", type=int, default=20000, help="training images (the first N)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {cpu_info().describe()}, threads {torch.get_num_threads()}")
    print(f"{args.arch} on Fashion-MNIST, {args.epochs} epochs on {args.subset} images, seed {args.seed}")
    print(f"{'variant':<20} {'top-1':>7} {'top-5':>7} {'train img/s':>12}")
    for name, amp, channels_last in (("fp32 NCHW", "none", False), ("bf16 channels_last", "bf16", True)):
        cfg = TrainConfig(
            arch=args.arch,
            dataset="fashion_mnist",
            epochs=args.epochs,
            subset=args.subset,
            eval_every=0,
            eval_subset=128,  # the engine's own (bf16) evaluation: a token; the real one follows
            device="cpu",
            amp=amp,
            channels_last=channels_last,
            seed=args.seed,
            progress=False,
        )
        t0 = time.perf_counter()
        result = train(cfg)
        rate = args.epochs * (args.subset // cfg.batch_size) * cfg.batch_size / (time.perf_counter() - t0)
        m = evaluate(result.model.float().to(memory_format=torch.contiguous_format), "fashion_mnist", device="cpu")
        print(f"{name:<20} {m['top1']:>7.2f} {m['top5']:>7.2f} {rate:>12.0f}")


if __name__ == "__main__":
    main()
