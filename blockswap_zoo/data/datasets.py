"""The dataset registry: what each dataset is (classes, size, normalisation, augmentation) and
where its files are. In-memory datasets (Fashion-MNIST, CIFAR) load as uint8 tensors."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io import missing_dirs, remove_failed_download
from .cifar import CIFAR_LAYOUTS, CifarFormatError, UnsafePickleError, download_cifar, read_cifar
from .errors import DatasetError, DatasetNotFoundError
from .idx import IdxFormatError, read_idx

if TYPE_CHECKING:
    from .image_folders import CheckedImageFolder

__all__ = [
    "DATA_ENV",
    "ArrayDataset",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "get_dataset_info",
    "list_datasets",
    "load_arrays",
]

DATA_ENV = "BLOCKSWAP_ZOO_DATA"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: its shape, classes, normalisation and the paper's augmentation settings.

    ``crop_padding``: RandomCrop padding (0 for ImageNet, which uses RandomResizedCrop);
    ``cutout``: side of the single Cutout hole (0: none); ``in_memory``: small enough to keep
    as a uint8 tensor (and to augment whole batches on the device).
    """

    name: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label_names: tuple[str, ...]
    crop_padding: int
    cutout: int
    hflip: bool
    in_memory: bool
    how_to_get: str
    aliases: tuple[str, ...] = field(default=())


_FMNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_C10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_C100_NAMES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)

_DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        10,
        1,
        (1, 28, 28),
        (0.2860,),
        (0.3530,),
        _FMNIST_NAMES,
        crop_padding=4,
        cutout=14,  # half the side, as 16 is half of CIFAR's 32
        hflip=True,
        in_memory=True,
        how_to_get="`apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist), or pass "
        "--data-dir DIR holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        f"and t10k-labels-idx1-ubyte.gz (or set ${DATA_ENV})",
        aliases=("fashion-mnist", "fmnist", "fashionmnist"),
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        3,
        (3, 32, 32),
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
        _C10_NAMES,
        crop_padding=4,
        cutout=16,
        hflip=True,
        in_memory=True,
        how_to_get="allow network access (it is downloaded from www.cs.toronto.edu, md5-checked), or pass "
        f"--data-dir DIR containing cifar-10-batches-py/ (the official python version; or set ${DATA_ENV})",
        aliases=("cifar-10", "c10"),
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        3,
        (3, 32, 32),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        _C100_NAMES,
        crop_padding=4,
        cutout=16,
        hflip=True,
        in_memory=True,
        how_to_get="allow network access (it is downloaded from www.cs.toronto.edu, md5-checked), or pass "
        f"--data-dir DIR containing cifar-100-python/ (the official python version; or set ${DATA_ENV})",
        aliases=("cifar-100", "c100"),
    ),
    "imagenet": DatasetInfo(
        "imagenet",
        1000,
        3,
        (3, 224, 224),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        (),
        crop_padding=0,
        cutout=0,
        hflip=True,
        in_memory=False,
        how_to_get="pass --data-dir DIR with DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG "
        "(torchvision ImageFolder layout; ImageNet cannot be downloaded automatically)",
        aliases=("imagenet1k", "ilsvrc2012"),
    ),
}
assert len(_C100_NAMES) == 100


def list_datasets() -> list[str]:
    """The names :func:`get_dataset_info` accepts (aliases aside)."""
    return sorted(_DATASETS)


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (case-insensitive; aliases such as ``fmnist`` accepted)."""
    key = name.strip().lower().replace("-", "_")
    for info in _DATASETS.values():
        if key == info.name or key in {a.replace("-", "_") for a in info.aliases}:
            return info
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")


@dataclass(frozen=True)
class ArrayDataset:
    """A split held in memory: uint8 images N x C x H x W and int64 labels (CPU tensors)."""

    info: DatasetInfo
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())


def candidate_roots(data_dir: str | Path | None) -> list[Path]:
    """The folders searched: ``data_dir`` alone when given, else ``$BLOCKSWAP_ZOO_DATA`` if set."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    return roots


_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(folder: Path, stem: str) -> Path | None:
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


def _fashion_mnist(data_dir: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    info = _DATASETS["fashion_mnist"]
    folders: list[Path] = []
    for r in candidate_roots(data_dir):
        folders += [r, r / "fashion-mnist", r / "fashion_mnist", r / "FashionMNIST" / "raw"]
    if data_dir is None:
        folders.append(FASHION_MNIST_SYSTEM_DIR)
    img_stem, lab_stem = _FMNIST_FILES[split]
    for folder in folders:
        img, lab = _find_file(folder, img_stem), _find_file(folder, lab_stem)
        if img is None or lab is None:
            continue
        try:
            x, y = read_idx(img), read_idx(lab)
        except IdxFormatError as e:
            raise DatasetError(f"Fashion-MNIST file is corrupt: {e}. Re-install it: {info.how_to_get}") from None
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise DatasetError(
                f"Fashion-MNIST files in {folder} have unexpected shapes {x.shape} / {y.shape}. "
                f"Re-install them: {info.how_to_get}"
            )
        if y.size and int(y.max()) >= 10:
            raise DatasetError(f"Fashion-MNIST labels in {lab} exceed 9: the file is corrupt")
        return x[:, None], y.astype(np.int64), str(folder)
    looked = ", ".join(str(f) for f in folders)
    raise DatasetNotFoundError(
        f"Fashion-MNIST {split} split not found (looked for {img_stem}[.gz] and {lab_stem}[.gz] in: {looked}). "
        f"To get it: {info.how_to_get}"
    )


def _cifar(name: str, data_dir: str | Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray, str]:
    info = _DATASETS[name]
    layout = CIFAR_LAYOUTS[name]
    roots = candidate_roots(data_dir) or [Path.home() / ".cache" / "blockswap_zoo" / "datasets"]
    for root in roots:
        if (root / layout.folder).is_dir():
            return _read_cifar_checked(root, name, split)
    error = ""
    if download:
        created = missing_dirs(roots[0])
        try:
            download_cifar(roots[0], name)
            return _read_cifar_checked(roots[0], name, split)
        except (OSError, RuntimeError) as e:  # no network, bad md5, ...
            error = f" Download into {roots[0]} failed: {type(e).__name__}: {e}."
            if not (roots[0] / layout.folder).is_dir():  # nothing was extracted: undo what the attempt made
                remove_failed_download(created, roots[0] / layout.archive)
    looked = ", ".join(str(r / layout.folder) for r in roots)
    raise DatasetNotFoundError(f"{name} not found (looked in: {looked}).{error} To get it: {info.how_to_get}")


def _read_cifar_checked(root: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        x, y, names = read_cifar(root, name, split)
    except FileNotFoundError as e:
        raise DatasetNotFoundError(
            f"{name}: {e.filename} is missing. To get it: {_DATASETS[name].how_to_get}"
        ) from None
    except (CifarFormatError, UnsafePickleError) as e:
        raise DatasetError(f"{name} is corrupt or unsafe: {e}") from None
    if len(names) != _DATASETS[name].num_classes:
        raise DatasetError(f"{name} in {root}: meta lists {len(names)} classes, expected {_DATASETS[name].num_classes}")
    return x, y, str(root / CIFAR_LAYOUTS[name].folder)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split: str, data_dir: str | None, env: str | None, download: bool) -> ArrayDataset:
    info = _DATASETS[name]
    if name == "fashion_mnist":
        x, y, source = _fashion_mnist(data_dir, split)
    else:
        x, y, source = _cifar(name, data_dir, split, download)
    images = torch.from_numpy(np.ascontiguousarray(x))
    return ArrayDataset(info, split, images, torch.from_numpy(np.ascontiguousarray(y)), source)


def load_arrays(
    name: str, split: str = "train", data_dir: str | Path | None = None, download: bool = True
) -> ArrayDataset:
    """Load an in-memory dataset's ``train`` or ``test`` split as uint8 NCHW + int64 labels (cached)."""
    info = get_dataset_info(name)
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    if not info.in_memory:
        raise DatasetError(f"{info.name} is an image-folder dataset; use image_folder() instead of load_arrays()")
    return _load_cached(
        info.name, split, None if data_dir is None else str(data_dir), os.environ.get(DATA_ENV), download
    )


def image_folder(name: str, split: str, data_dir: str | Path | None, transform: object) -> CheckedImageFolder:
    """An ImageNet-style split as a torchvision ImageFolder (``split``: train, or val/test).

    An evaluation split takes its class indices from the train folder beside it (when there is one),
    so a class missing from ``val/`` cannot shift the labels of the others. A folder without class
    folders or an image that cannot be read is a DatasetError naming the path.
    """
    info = get_dataset_info(name)
    roots = candidate_roots(data_dir)
    names = ("train",) if split == "train" else ("val", "validation", "test")
    for r in roots:
        for n in names:
            if (r / n).is_dir():
                from .image_folders import CheckedImageFolder, class_folders  # torchvision: only when used

                classes = class_folders(r / "train") if split != "train" and (r / "train").is_dir() else None
                return CheckedImageFolder(r / n, transform, classes)
    looked = ", ".join(str(r / n) for r in roots for n in names) or "nowhere: no --data-dir given"
    raise DatasetNotFoundError(
        f"{info.name} {split} split not found (looked in: {looked}). To get it: {info.how_to_get}"
    )
