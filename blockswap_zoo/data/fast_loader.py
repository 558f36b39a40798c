"""Whole-batch augmentation of uint8 images kept on the device (GPU or CPU).

Same distribution as the per-sample transforms (RandomCrop with zero padding, horizontal
flip with p = 0.5, one clipped Cutout hole), but vectorised over the batch: one gather does
crop and flip, a mask does the padding and the hole, and every random number comes from one
``torch.Generator`` whose state is checkpointed, so a resumed run draws the same batches.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .datasets import DatasetInfo

__all__ = ["AugParams", "DeviceLoader", "apply_augment", "norm_constants", "normalize", "sample_augment"]


@dataclass(frozen=True)
class AugParams:
    """Per-sample draws: crop offsets in [0, 2*pad], flip flags, Cutout centres in [0, H) x [0, W)."""

    oy: torch.Tensor
    ox: torch.Tensor
    flip: torch.Tensor
    cy: torch.Tensor
    cx: torch.Tensor


def sample_augment(n: int, info: DatasetInfo, generator: torch.Generator, device: torch.device) -> AugParams:
    """Draw the augmentation of ``n`` samples (the same law as RandomCrop + RandomHorizontalFlip + Cutout)."""
    _, h, w = info.input_size
    p = info.crop_padding

    def randint(high: int) -> torch.Tensor:
        return torch.randint(high, (n,), generator=generator, device=device)

    oy, ox = randint(2 * p + 1), randint(2 * p + 1)
    if info.hflip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
    else:
        flip = torch.zeros(n, dtype=torch.bool, device=device)  # made on the device: no host copy
    cy, cx = randint(h), randint(w)
    return AugParams(oy, ox, flip, cy, cx)


def normalize(x: torch.Tensor, info: DatasetInfo, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 N x C x H x W -> (x / 255 - mean) / std, as ToTensor + Normalize."""
    shift, inv, _ = norm_constants(info, x.device, dtype)
    return (x.to(dtype) - shift) * inv


def norm_constants(
    info: DatasetInfo, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(255 * mean, 1 / (255 * std), value of a zero pixel) as 1 x C x 1 x 1 tensors, made once per device/dtype.

    Cached so the training loop never copies constants from the host (a blocking copy per batch on CUDA).
    """
    return _norm_constants(tuple(info.mean), tuple(info.std), torch.device(device), dtype)


@functools.lru_cache(maxsize=64)
def _norm_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shift = 255.0 * torch.tensor(mean, device=device, dtype=dtype).view(1, -1, 1, 1)  # same rounding as before
    inv = torch.tensor([1.0 / (255.0 * s) for s in std], device=device, dtype=dtype).view(1, -1, 1, 1)
    return shift, inv, -shift * inv


def apply_augment(x: torch.Tensor, params: AugParams, info: DatasetInfo, dtype: torch.dtype = torch.float32):
    """Crop (zero padding) + flip + normalise + Cutout a uint8 batch with the given draws -> float batch."""
    n, c, h, w = x.shape
    p = info.crop_padding
    dev = x.device
    rows = params.oy[:, None] - p + torch.arange(h, device=dev)  # N x H source rows
    ar = torch.arange(w, device=dev)
    cols = params.ox[:, None] - p + torch.where(params.flip[:, None], w - 1 - ar, ar)  # N x W (flip folded in)
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # N x H x W
    idx = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    out = torch.gather(x.reshape(n, c, h * w), 2, idx.reshape(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
    out = normalize(out, info, dtype)
    pad_value = norm_constants(info, dev, dtype)[2]  # a zero (padding) pixel after normalisation
    out = torch.where(valid[:, None], out, pad_value)
    if info.cutout:
        half = info.cutout // 2
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_y = (ys[None] >= params.cy[:, None] - half) & (ys[None] < params.cy[:, None] + half)
        in_x = (xs[None] >= params.cx[:, None] - half) & (xs[None] < params.cx[:, None] + half)
        out = out.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.0)
    return out


class DeviceLoader:
    """Shuffled, augmented minibatches of an in-memory dataset, produced on ``device`` without host sync.

    ``batch_size`` is the global batch; with ``world_size`` > 1 every rank draws the same
    permutation and augmentation for the global batch and keeps its slice ``rank::world_size``,
    so the data a step sees do not depend on how many processes share it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        batch_size: int,
        device: torch.device | str = "cpu",
        augment: bool = True,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.info, self.batch_size, self.augment = info, batch_size, augment
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        norm_constants(info, self.images.device)  # made here, once, not in the batch loop

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for b in range(len(self)):
            with _single_thread(self.device):
                x, y = self._batch(order[b * self.batch_size : (b + 1) * self.batch_size])
            yield x, y

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment:
            params = sample_augment(len(idx), self.info, self.generator, self.device)
            mine = slice(self.rank, None, self.world_size)
            params = AugParams(*(t[mine] for t in (params.oy, params.ox, params.flip, params.cy, params.cx)))
            idx = idx[mine]
            x = apply_augment(self.images[idx], params, self.info)
        else:
            idx = idx[self.rank :: self.world_size]
            x = normalize(self.images[idx], self.info)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """On CPU, augment with one thread: these ops are tiny, and a busy OpenMP pool makes them 10-30x slower."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
