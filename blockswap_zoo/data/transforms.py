"""Per-sample (torchvision) transforms: the paper's augmentation, the eval transform, and the
baseline ``Dataset`` that applies them image by image, as the reference code trains."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from .datasets import DatasetInfo

__all__ = ["Cutout", "PerSampleDataset", "eval_transform", "train_transform"]


class Cutout:
    """One ``size`` x ``size`` hole of zeros (DeVries & Taylor, 2017) on a normalised C x H x W tensor.

    The hole's centre is uniform over the image and the hole is clipped at the borders, as in
    the reference implementation; zero after normalisation is the dataset mean.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y1, y2 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x1, x2 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        img = img.clone()
        img[..., y1:y2, x1:x2] = 0.0
        return img

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


def train_transform(info: DatasetInfo) -> Callable[[Image.Image], torch.Tensor]:
    """The training augmentation: CIFAR/Fashion-MNIST crop (pad) + flip + Cutout; ImageNet resized crop + flip."""
    ops: list[Callable] = []
    if info.in_memory:
        ops.append(T.RandomCrop(info.input_size[1:], padding=info.crop_padding))
    else:
        ops.append(T.RandomResizedCrop(info.input_size[1:]))
    if info.hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if info.cutout:
        ops.append(Cutout(info.cutout))
    return T.Compose(ops)


def eval_transform(info: DatasetInfo) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform: normalise (ImageNet: resize 256, centre crop 224 first)."""
    ops: list[Callable] = []
    if not info.in_memory:
        ops += [T.Resize(256), T.CenterCrop(info.input_size[1:])]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(info.mean, info.std)])


class PerSampleDataset(Dataset):
    """uint8 N x C x H x W images served one PIL image at a time through ``transform`` (the baseline path)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # NHWC, as torchvision's CIFAR10 keeps them
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        a = self.images[i]
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else np.ascontiguousarray(a))
        return self.transform(img), self.labels[i]
