"""Why grouped and depthwise students train slowly on a GPU: one training step (forward, backward, SGD) of
WRN-40-2 with every block of one type, per block type and memory layout, in bf16 autocast with cuDNN
autotuning as the engine trains. Beside each type's images/s: its MACs per image and the multiply-adds
per second it reaches, so a type that wastes the GPU shows at once.

    python benchmarks/blocktype_train_speed.py --device cuda
    python benchmarks/blocktype_train_speed.py --device cpu --steps 2 --repeats 1 --batch-size 16 --types "S;G(N)"
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from blockswap_zoo import Genotype, build_model
from blockswap_zoo.numerics import training_flags
from blockswap_zoo.train.distributed import device_name

TYPES = "S;G(2);G(4);G(16);G(N/4);G(N);B(2);B(4);BG(2,2);BG(2,M/2);BG(2,M)"  # as a genotype lists them
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def step_rate(block: str, layout: str, args: argparse.Namespace, device: torch.device) -> tuple[float, int]:
    """Median images/s of ``--steps`` training steps over ``--repeats`` (after warm-up); and MACs per image."""
    genotype = Genotype.uniform("wrn_40_2", block)
    torch.manual_seed(0)
    model = build_model(genotype, num_classes=10, in_chans=1).to(device, memory_format=LAYOUTS[layout])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch_size, 1, 28, 28, device=device).contiguous(memory_format=LAYOUTS[layout])
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def run(n: int) -> None:
        for _ in range(n):
            with autocast:
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(args.warmup)
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run(args.steps)
        rates.append(args.steps * args.batch_size / (time.perf_counter() - t0))
    return statistics.median(rates), genotype.macs(10, 1, (28, 28))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--types", default=TYPES, help="block types, ';'-separated as in a genotype")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    where = device_name(device)
    print(f"{where}; torch {torch.__version__}; batch {args.batch_size}, {'bf16' if args.bf16 else 'fp32'}, "
          f"{args.steps} steps x {args.repeats} repeats, WRN-40-2 on 1x28x28, every block one type")  # fmt: skip
    print("| block type | layout | img/s | MMACs per image | GMAC/s (forward) |\n|---|---|---:|---:|---:|")
    with training_flags(deterministic=False, cuda=device.type == "cuda"):
        for block in args.types.split(";"):
            for layout in args.layouts.split(","):
                rate, macs = step_rate(block, layout, args, device)
                print(f"| {block} | {layout} | {rate:,.0f} | {macs / 1e6:.1f} | {rate * macs / 1e9:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
