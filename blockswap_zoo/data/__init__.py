"""Datasets (Fashion-MNIST, CIFAR-10/100, ImageNet folders), their transforms and the fast loader.

The contract the search uses::

    info = get_dataset_info("fashion_mnist")
    images, labels = load_minibatch("fashion_mnist", batch_size=128, seed=0)
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from .datasets import (
    DATA_ENV,
    ArrayDataset,
    DatasetError,
    DatasetInfo,
    DatasetNotFoundError,
    get_dataset_info,
    image_folder,
    list_datasets,
    load_arrays,
)
from .fast_loader import DeviceLoader, apply_augment, normalize, sample_augment

__all__ = [
    "DATA_ENV",
    "ArrayDataset",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DeviceLoader",
    "apply_augment",
    "get_dataset_info",
    "image_folder",
    "list_datasets",
    "load_arrays",
    "load_minibatch",
    "normalize",
    "sample_augment",
]


def _check_batch_fits(batch_size: int, available: int, dataset: str) -> None:
    if batch_size > available:
        raise ValueError(
            f"a minibatch of {batch_size} needs {batch_size} training images but {dataset} has {available}; "
            "lower the batch size"
        )


def load_minibatch(
    dataset: str,
    batch_size: int = 128,
    seed: int = 0,
    data_dir: str | Path | None = None,
    augment: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded minibatch of the train split with the training augmentation.

    Returns float32 normalised N x C x H x W images and int64 labels (CPU). The same seed gives
    the same batch. A missing dataset raises :class:`DatasetNotFoundError` saying where we looked.
    """
    info = get_dataset_info(dataset)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = torch.Generator().manual_seed(seed)
    if info.in_memory:
        data = load_arrays(info.name, "train", data_dir)
        _check_batch_fits(batch_size, len(data), info.name)
        idx = torch.randperm(len(data), generator=g)[:batch_size]
        x = data.images[idx]
        if augment:
            return apply_augment(x, sample_augment(len(idx), info, g, x.device), info), data.labels[idx]
        return normalize(x, info), data.labels[idx]
    from .transforms import eval_transform, train_transform

    ds = image_folder(info.name, "train", data_dir, train_transform(info) if augment else eval_transform(info))
    _check_batch_fits(batch_size, len(ds), info.name)
    picks = torch.randperm(len(ds), generator=g)[:batch_size].tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        items = [ds[i] for i in picks]
    xs = [cast(torch.Tensor, x) for x, _ in items]  # the transforms end in a tensor
    return torch.stack(xs), torch.tensor([y for _, y in items], dtype=torch.int64)
