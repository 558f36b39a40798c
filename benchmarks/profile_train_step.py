"""Where the time of one fast teacher training step goes on a GPU: wall time per step, then the
top operators by GPU time and by CPU time (torch.profiler).

    python benchmarks/profile_train_step.py            # WRN-40-2, batch 128, CIFAR-size random images

If the GPU time per step is far below the wall time, the step is bound by the CPU launching kernels.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from blockswap_zoo.data import DeviceLoader, get_dataset_info
from blockswap_zoo.factory import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="wrn_40_2")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this profile needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (4096,), generator=g)
    model = create_model(args.arch).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = DeviceLoader(images, labels, get_dataset_info("cifar10"), args.batch_size, dev, channels_last=True)

    def batches():
        while True:
            yield from loader

    it = batches()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(20):  # warm-up: cuDNN autotuning, allocator
        step(*next(it))
    torch.cuda.synchronize()
    x0, y0 = next(it)
    for what, run in [("loader only", lambda: next(it)), ("step on a fixed batch", lambda: step(x0, y0)),
                      ("loader + step", lambda: step(*next(it)))]:  # fmt: skip
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        print(f"{what}: {dt * 1e3:.2f} ms/step, {args.batch_size / dt:.0f} img/s")
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(10):
            step(*next(it))
        torch.cuda.synchronize()
    print("10 steps:")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
