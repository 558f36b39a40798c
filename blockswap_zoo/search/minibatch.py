"""The one minibatch every candidate of a search is scored on, and the network shape it implies.

``embedded`` is 128 real Fashion-MNIST training images shipped with the package (see
``tools/make_embedded_batch.py``), so a search runs offline on a fresh machine. Datasets come
through ``blockswap_zoo.data.load_minibatch`` (imported lazily). Either way the batch carries
the training augmentation, seeded by the search seed, and fixes in_chans, classes and input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import cast

import torch

__all__ = ["EMBEDDED", "SearchBatch", "load_embedded_batch", "load_search_batch"]

EMBEDDED = "embedded"
_ASSET = "fmnist_batch128.safetensors"


@dataclass(frozen=True)
class SearchBatch:
    """Images (normalised float NCHW), labels, and the network shape they imply."""

    images: torch.Tensor
    labels: torch.Tensor
    dataset: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]


def _embedded_raw() -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load

    data = resources.files("blockswap_zoo").joinpath("assets").joinpath(_ASSET).read_bytes()
    t = load(data)
    return t["images"], t["labels"]


def load_embedded_batch(seed: int = 0, augment: bool = True) -> SearchBatch:
    """The embedded 128-image Fashion-MNIST batch, augmented as in training (seeded) and normalised."""
    from ..data import apply_augment, get_dataset_info, normalize, sample_augment

    info = get_dataset_info("fashion_mnist")
    x, y = _embedded_raw()
    if augment:
        g = torch.Generator().manual_seed(seed)
        images = apply_augment(x, sample_augment(len(x), info, g, x.device), info)
    else:
        images = normalize(x, info)
    input_size = cast(tuple[int, int, int], tuple(info.input_size))
    return SearchBatch(images.float(), y.long(), EMBEDDED, info.num_classes, info.in_chans, input_size)


def load_search_batch(
    dataset: str = EMBEDDED, batch_size: int = 128, seed: int = 0, data_dir: str | Path | None = None
) -> SearchBatch:
    """The search minibatch: the embedded default, or one seeded training batch of ``dataset``."""
    if batch_size < 2:
        raise ValueError(
            f"batch_size must be >= 2, got {batch_size}: the scores need batch-norm statistics over the minibatch"
        )
    if dataset.strip().lower() == EMBEDDED:
        if data_dir is not None:
            raise ValueError(
                f"--data-dir {data_dir} is only read with --dataset (fashion_mnist, cifar10, cifar100 or imagenet); "
                "the embedded batch ships with the package"
            )
        if batch_size != 128:
            raise ValueError(f"the embedded batch has 128 images; batch_size={batch_size} needs --dataset")
        return load_embedded_batch(seed)
    from ..data import DatasetError, get_dataset_info, list_datasets, load_minibatch

    try:
        info = get_dataset_info(dataset)
    except DatasetError:
        raise DatasetError(
            f"unknown dataset {dataset!r}; choose {EMBEDDED} (the batch shipped with the package) or one of "
            f"{', '.join(list_datasets())}"
        ) from None
    images, labels = load_minibatch(info.name, batch_size=batch_size, seed=seed, data_dir=data_dir, augment=True)
    input_size = cast(tuple[int, int, int], tuple(info.input_size))
    return SearchBatch(images, labels, info.name, info.num_classes, info.in_chans, input_size)
