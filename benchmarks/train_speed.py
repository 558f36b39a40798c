"""Training throughput: the fast path vs. how the paper's code trains, in one process.

fast:     uint8 images on the device, whole-batch augmentation (DeviceLoader), bf16 autocast and
          channels_last on GPU, optional torch.compile, metrics kept on the device.
baseline: torchvision DataLoader with per-sample PIL transforms (crop, flip, Cutout), fp32, NCHW.

Both run the same step (SGD, momentum 0.9, wd 5e-4; distillation: CE + 1000 * AT at the stage
outputs from a frozen WRN-40-2). Data are random uint8 CIFAR-shaped images (speed does not depend
on content; the real CIFAR-10 is not downloadable here). Reports medians of repeats in images/s.

    python benchmarks/train_speed.py                       # defaults sized for the device
    python benchmarks/train_speed.py --device cuda --steps 50 --repeats 5 --compile
    python benchmarks/train_speed.py --device cuda --compile --compile-mode reduce-overhead   # CUDA graphs
    python benchmarks/train_speed.py --amp bf16 --channels-last   # on a CPU with native bf16 (AVX512-BF16)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from blockswap_zoo.cpu_info import cpu_info
from blockswap_zoo.data import DeviceLoader, get_dataset_info
from blockswap_zoo.data.transforms import PerSampleDataset, train_transform
from blockswap_zoo.factory import create_model
from blockswap_zoo.train.losses import attention_transfer


def _batches(loader, device, fmt):
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device, non_blocking=True)


def measure(kind: str, fast: bool, args, images, labels, device) -> list[float]:
    """images/s of ``steps`` optimiser steps, once per repeat (after warmup steps)."""
    info = get_dataset_info("cifar10")
    torch.manual_seed(0)
    gpu = device.type == "cuda"  # the engine's defaults: bf16 and channels_last on GPUs only
    fmt = torch.channels_last if fast and (gpu or args.channels_last) else torch.contiguous_format
    amp = fast and (gpu or args.amp == "bf16")
    student = create_model(args.student if kind == "distill" else args.teacher).to(device, memory_format=fmt)
    teacher = create_model(args.teacher).to(device, memory_format=fmt).eval() if kind == "distill" else None
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step_fn(x, y):
        final, feats = student.forward_intermediates(x)
        loss = F.cross_entropy(student.forward_head(final).float(), y)
        if teacher is not None:
            with torch.no_grad():
                t_feats = teacher.forward_intermediates(x, intermediates_only=True)
            loss = loss + 1000.0 * attention_transfer(feats, t_feats)
        return loss

    if fast and args.compile:
        step_fn = torch.compile(step_fn, mode=args.compile_mode)
    if fast:
        it = _batches(
            DeviceLoader(images, labels, info, args.batch_size, device, channels_last=fmt != torch.contiguous_format),
            device,
            fmt,
        )
    else:
        ds = PerSampleDataset(images, labels, train_transform(info))
        dl = DataLoader(
            ds,
            batch_size=args.batch_size,
            sampler=RandomSampler(ds),
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=args.workers > 0,
        )
        it = _batches(dl, device, fmt)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    loss_sum = torch.zeros((), device=device)

    def run(n: int) -> None:
        nonlocal loss_sum
        for _ in range(n):
            x, y = next(it)
            if fast and args.compile:  # as the engine: each step may reuse the last one's CUDA-graph outputs
                torch.compiler.cudagraph_mark_step_begin()
            with autocast():
                loss = step_fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(args.warmup)
    sync()
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run(args.steps)
        sync()
        rates.append(args.steps * args.batch_size / (time.perf_counter() - t0))
    assert torch.isfinite(loss_sum).item()
    return rates


def measure_data(fast: bool, args, images, labels, device) -> list[float]:
    """images/s of the input pipeline alone (augmented batches delivered on the device)."""
    info = get_dataset_info("cifar10")
    if fast:
        it = _batches(DeviceLoader(images, labels, info, args.batch_size, device), device, torch.contiguous_format)
    else:
        ds = PerSampleDataset(images, labels, train_transform(info))
        dl = DataLoader(
            ds,
            batch_size=args.batch_size,
            sampler=RandomSampler(ds),
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=args.workers > 0,
        )
        it = _batches(dl, device, torch.contiguous_format)
    n = max(args.images // args.batch_size // 2, 1)
    for _ in range(3):
        next(it)
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            x, _y = next(it)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(n * args.batch_size / (time.perf_counter() - t0))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher", default="wrn_40_2")
    p.add_argument("--student", default="wrn_40_2_bs811k")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 on GPU, 32 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 50 GPU, 3 CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="baseline DataLoader workers (default: CPU count, max 8)")
    p.add_argument("--images", type=int, default=10000, help="synthetic training images")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast step")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode; reduce-overhead replays CUDA graphs (the step is launch-bound on GPUs)",
    )
    p.add_argument("--amp", choices=["auto", "bf16"], default="auto", help="bf16: autocast the fast step on a CPU too")
    p.add_argument("--channels-last", action="store_true", help="channels_last in the fast step on a CPU too")
    p.add_argument("--only", choices=["data", "teacher", "distill"], default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if gpu else 32)
    args.steps = args.steps or (50 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    import os

    args.workers = args.workers if args.workers is not None else min(os.cpu_count() or 1, 8)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    name = (
        torch.cuda.get_device_name(device)
        if gpu
        else f"CPU {cpu_info().describe()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"device: {name}; torch {torch.__version__}; "
        f"batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats"
    )
    results = {}
    for kind in ["data", "teacher", "distill"] if args.only is None else [args.only]:
        m = measure_data if kind == "data" else (lambda f, *a, k=kind: measure(k, f, *a))
        base = m(False, args, images, labels, device)
        fast = m(True, args, images, labels, device)
        b, f = statistics.median(base), statistics.median(fast)
        results[kind] = {"baseline_img_s": b, "fast_img_s": f, "ratio": f / b, "baseline_runs": base, "fast_runs": fast}
        what = {
            "data": "input pipeline only (augmented batches)",
            "teacher": f"{args.teacher} teacher",
            "distill": f"AT distillation {args.student} <- {args.teacher}",
        }[kind]
        print(f"{what:55s} baseline {b:9.1f} img/s   fast {f:9.1f} img/s   x{f / b:.2f}")
    if args.json:
        print(json.dumps({"device": name, **results}, indent=2))


if __name__ == "__main__":
    main()
