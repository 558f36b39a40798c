"""Datasets, transforms and the on-device fast path: shapes, ranges, errors, safe CIFAR loading,
and augmentation statistics that match the per-sample torchvision pipeline."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from blockswap_zoo.data import (
    DatasetError,
    DatasetNotFoundError,
    DeviceLoader,
    apply_augment,
    get_dataset_info,
    load_arrays,
    load_minibatch,
    sample_augment,
)
from blockswap_zoo.data.cifar import UnsafePickleError, safe_unpickle, write_cifar_batch
from blockswap_zoo.data.datasets import FASHION_MNIST_SYSTEM_DIR
from blockswap_zoo.data.transforms import train_transform

HAVE_FMNIST = (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")


def test_dataset_infos() -> None:
    f = get_dataset_info("Fashion-MNIST")
    assert (f.name, f.num_classes, f.in_chans, f.input_size) == ("fashion_mnist", 10, 1, (1, 28, 28))
    assert f.mean == (0.2860,) and f.std == (0.3530,) and len(f.label_names) == 10
    c10, c100, inet = get_dataset_info("cifar10"), get_dataset_info("cifar100"), get_dataset_info("imagenet")
    assert c10.cutout == 16 and c10.crop_padding == 4 and c10.mean == (0.4914, 0.4822, 0.4465)
    assert len(c100.label_names) == 100 == c100.num_classes
    assert inet.input_size == (3, 224, 224) and not inet.in_memory
    with pytest.raises(DatasetError, match="unknown dataset 'mnist2'.*fashion_mnist"):
        get_dataset_info("mnist2")


@needs_fmnist
def test_fashion_mnist_minibatch_contract() -> None:
    info = get_dataset_info("fashion_mnist")
    x, y = load_minibatch("fashion_mnist", batch_size=64, seed=3)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    lo, hi = (0 - info.mean[0]) / info.std[0], (1 - info.mean[0]) / info.std[0]
    assert x.min() >= lo - 1e-5 and x.max() <= hi + 1e-5 and 0 <= y.min() and y.max() <= 9
    x2, y2 = load_minibatch("fashion_mnist", batch_size=64, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = load_minibatch("fashion_mnist", batch_size=64, seed=4)
    assert not torch.equal(x, x3)
    plain, _ = load_minibatch("fashion_mnist", batch_size=2000, seed=0, augment=False)
    assert abs(plain.mean().item()) < 0.05 and abs(plain.std().item() - 1) < 0.05  # the stated mean/std
    test = load_arrays("fashion_mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8


def _write_idx(path, arr: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.tobytes()))


def test_fashion_mnist_missing_and_corrupt(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        load_arrays("fashion_mnist", "train", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, 0x08)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8), 0x08)
    d = load_arrays("fashion_mnist", "test", data_dir=tmp_path)
    assert torch.equal(d.images[:, 0], torch.from_numpy(imgs)) and d.labels.tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8), 0x08)
    with pytest.raises(DatasetError, match="corrupt"):
        load_arrays("fashion_mnist", "train", data_dir=tmp_path)


def _write_cifar(root, name: str, n_per_batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, meta, key, names_key, k = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            "batches.meta",
            "labels",
            b"label_names",
            10,
        )
    else:
        folder, files, meta, key, names_key, k = (
            root / "cifar-100-python",
            ["train", "test"],
            "meta",
            "fine_labels",
            b"fine_label_names",
            100,
        )
    folder.mkdir(parents=True)
    out: dict[str, np.ndarray] = {}
    for f in files:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, k, n_per_batch).tolist()
        write_cifar_batch(folder / f, data, labels, key)
        out[f] = data
    (folder / meta).write_bytes(pickle.dumps({names_key: [f"c{i}".encode() for i in range(k)]}, protocol=2))
    return out


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_local_files_in_official_format(tmp_path, name: str) -> None:
    written = _write_cifar(tmp_path, name)
    train = load_arrays(name, "train", data_dir=tmp_path, download=False)
    test = load_arrays(name, "test", data_dir=tmp_path, download=False)
    n_train = 30 if name == "cifar10" else 6
    assert train.images.shape == (n_train, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    first = "data_batch_1" if name == "cifar10" else "train"
    # CIFAR rows are R plane, G plane, B plane of 32x32 each
    assert torch.equal(train.images[0], torch.from_numpy(written[first][0].reshape(3, 32, 32)))
    x, y = load_minibatch(name, batch_size=4, seed=0, data_dir=tmp_path)
    assert x.shape == (4, 3, 32, 32) and y.max() < (10 if name == "cifar10" else 100)


def test_cifar_refuses_code_in_pickles(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_arrays("cifar10", "train", data_dir=tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()

    class OtherCodec:
        def __reduce__(self):
            import codecs

            return (codecs.encode, ("x", "rot13"))

    with pytest.raises(UnsafePickleError, match="latin-1"):
        safe_unpickle(pickle.dumps(OtherCodec(), protocol=2))
    assert safe_unpickle(pickle.dumps(b"\xff\x00", protocol=2)) == b"\xff\x00"  # bytes via _codecs.encode
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):  # numpy arrays in every protocol still load
        a = np.arange(12, dtype=np.uint8).reshape(3, 4)
        assert np.array_equal(safe_unpickle(pickle.dumps({"a": a}, protocol=proto))["a"], a)


def test_cifar_missing_and_corrupt(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        load_arrays("cifar100", "train", data_dir=tmp_path / "none", download=False)
    assert str(tmp_path / "none" / "cifar-100-python") in str(e.value) and "--data-dir" in str(e.value)
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch"):
        load_arrays("cifar10", "test", data_dir=tmp_path, download=False)


def test_imagenet_folder_minibatch(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.png"
                )
    x, y = load_minibatch("imagenet", batch_size=4, seed=0, data_dir=tmp_path)
    assert x.shape == (4, 3, 224, 224) and set(y.tolist()) <= {0, 1}
    x2, _ = load_minibatch("imagenet", batch_size=4, seed=0, data_dir=tmp_path)
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="needs 7 training images but imagenet has 6"):
        load_minibatch("imagenet", batch_size=7, seed=0, data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="looked in"):
        load_minibatch("imagenet", data_dir=tmp_path / "missing")


# ---- the fast path -------------------------------------------------------------------------------

# A 15 x 15 image whose pixels are 1..225 (padding is 0), with mean -1 / std 1 so that after
# normalisation pixels, padding (1.0) and the Cutout hole (0.0) are all distinguishable.
TEST_INFO = dataclasses.replace(
    get_dataset_info("fashion_mnist"), name="coded", input_size=(1, 15, 15), mean=(-1.0,), std=(1.0,), cutout=8
)
CODED = torch.arange(1, 226, dtype=torch.uint8).view(1, 1, 15, 15)


def _decode(out: torch.Tensor) -> tuple[int, int, bool, int, int]:
    """-> (row offset, col offset, flipped, hole's first row, first col) of one augmented coded image."""
    img = out[0, 0]
    v = torch.round((img - 1.0) * 255).long()  # pixel code, 0 = padding, -255 = hole
    ys, xs = torch.nonzero(v > 0, as_tuple=True)
    r, c = (v[ys, xs] - 1) // 15, (v[ys, xs] - 1) % 15
    oys = r - ys + 4
    no_flip, flip = c - xs + 4, c - (14 - xs) + 4
    flipped = bool((flip == flip[0]).all()) and not bool((no_flip == no_flip[0]).all())
    ox = (flip if flipped else no_flip)[0]
    assert (oys == oys[0]).all()
    hy, hx = torch.nonzero(img == 0.0, as_tuple=True)
    return int(oys[0]), int(ox), flipped, int(hy.min()), int(hx.min())


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _check_distribution(samples: list[tuple[int, int, bool, int, int]]) -> None:
    a = np.array([(oy, ox, int(f), hy, hx) for oy, ox, f, hy, hx in samples])
    n = len(a)
    uniform9 = np.full(9, 1 / 9)
    # chi-square critical values at p = 0.001: 26.12 (8 dof), 29.59 (10 dof)
    assert _chi2(np.bincount(a[:, 0], minlength=9), uniform9) < 26.12
    assert _chi2(np.bincount(a[:, 1], minlength=9), uniform9) < 26.12
    assert abs(a[:, 2].mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    hole = np.array([5 / 15] + [1 / 15] * 10)  # first row = max(cy - 4, 0), cy uniform in 0..14
    assert _chi2(np.bincount(a[:, 3], minlength=11), hole) < 29.59
    assert _chi2(np.bincount(a[:, 4], minlength=11), hole) < 29.59


def test_fast_path_matches_per_sample_given_the_same_draws() -> None:
    info = get_dataset_info("cifar10")
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    p = sample_augment(6, info, g, torch.device("cpu"))
    fast = apply_augment(x, p, info)
    for i in range(6):
        img = TF.pad(x[i], [4, 4, 4, 4], fill=0)
        img = TF.crop(img, int(p.oy[i]), int(p.ox[i]), 32, 32)
        if p.flip[i]:
            img = TF.hflip(img)
        ref = TF.normalize(img.float() / 255, info.mean, info.std)
        cy, cx = int(p.cy[i]), int(p.cx[i])
        ref[:, max(cy - 8, 0) : min(cy + 8, 32), max(cx - 8, 0) : min(cx + 8, 32)] = 0
        torch.testing.assert_close(fast[i], ref, atol=1e-5, rtol=0)


def test_fast_path_augmentation_statistics_match_per_sample_transform() -> None:
    torch.manual_seed(0)
    per_sample_tf = train_transform(TEST_INFO)
    pil = Image.fromarray(CODED[0, 0].numpy())
    per_sample = [_decode(per_sample_tf(pil)[None]) for _ in range(3000)]
    g = torch.Generator().manual_seed(1)
    n = 6000
    out = apply_augment(CODED.expand(n, 1, 15, 15), sample_augment(n, TEST_INFO, g, torch.device("cpu")), TEST_INFO)
    fast = [_decode(out[i : i + 1]) for i in range(n)]
    _check_distribution(per_sample)
    _check_distribution(fast)


def test_device_loader_batches_resume_and_sharding() -> None:
    info = get_dataset_info("fashion_mnist")
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    loader = DeviceLoader(images, labels, info, batch_size=16, seed=5)
    assert len(loader) == 3
    batches = list(loader)
    assert all(x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 for x, _ in batches)
    assert len(set(torch.cat([y for _, y in batches]).tolist())) > 1
    state = loader.state_dict()
    after = list(loader)
    loader2 = DeviceLoader(images, labels, info, batch_size=16, seed=99)
    loader2.load_state_dict(state)
    for (a, ya), (b, yb) in zip(after, loader2, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    full = list(DeviceLoader(images, labels, info, batch_size=16, seed=7))
    r0 = list(DeviceLoader(images, labels, info, batch_size=16, seed=7, rank=0, world_size=2))
    r1 = list(DeviceLoader(images, labels, info, batch_size=16, seed=7, rank=1, world_size=2))
    for (xf, yf), (x0, y0), (x1, y1) in zip(full, r0, r1, strict=True):
        assert torch.equal(xf[0::2], x0) and torch.equal(xf[1::2], x1)
        assert torch.equal(yf[0::2], y0) and torch.equal(yf[1::2], y1)
    with pytest.raises(ValueError, match="divisible"):
        DeviceLoader(images, labels, info, batch_size=15, world_size=2)


def test_device_loader_makes_no_constant_tensors_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch loop builds no tensors from host values (on CUDA each would be a blocking host copy)."""
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(40) % 10
    calls: list[str] = []

    def spy(name: str):
        real = getattr(torch, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    for augment, hflip in ((True, True), (True, False), (False, True)):
        info = dataclasses.replace(get_dataset_info("fashion_mnist"), hflip=hflip)
        loader = DeviceLoader(images, labels, info, batch_size=8, seed=0, augment=augment)
        with monkeypatch.context() as m:
            for name in ("tensor", "as_tensor"):
                m.setattr(torch, name, spy(name))
            batches = list(loader)
        assert len(batches) == 5 and calls == [], (augment, hflip, calls)


def test_failed_cifar_download_leaves_no_folder_behind(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A download that fails (here: no network) removes the --data-dir folders it created, not the user's."""
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    new = tmp_path / "new" / "data"
    with pytest.raises(DatasetNotFoundError, match="Download into .* failed"):
        load_arrays("cifar10", "train", data_dir=new, download=True)
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(DatasetNotFoundError, match="Download into .* failed"):
        load_arrays("cifar100", "test", data_dir=mine, download=True)
    assert mine.is_dir()


def test_cifar_missing_file_says_how_to_get_it(tmp_path) -> None:
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_batch is missing. To get it"):
        load_arrays("cifar10", "test", data_dir=tmp_path, download=False)


def _png_folder(root, classes: list[str], n: int = 2) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_splits_share_the_train_class_indices_and_errors_name_the_path(tmp_path) -> None:
    from blockswap_zoo.data import image_folder

    _png_folder(tmp_path / "train", ["cat", "dog", "eel"])
    _png_folder(tmp_path / "val", ["dog", "eel"])  # a class missing from val must not shift the others
    val = image_folder("imagenet", "val", tmp_path, None)
    assert val.classes == ["cat", "dog", "eel"] and sorted({y for _, y in val.samples}) == [1, 2]
    _png_folder(tmp_path / "val", ["fox"])
    with pytest.raises(DatasetError, match="class folders the train split lacks .*fox"):
        image_folder("imagenet", "val", tmp_path, None)
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"not a png")
    train = image_folder("imagenet", "train", tmp_path, None)
    with pytest.raises(DatasetError, match="cannot read image .*0.png"):
        train[0]
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="one sub-folder of images per class"):
        image_folder("imagenet", "train", empty, None)
    flat = tmp_path / "flat"  # ImageNet's own val layout: images without class folders
    _png_folder(flat / "train", ["cat"])
    (flat / "val").mkdir()
    (flat / "train" / "cat" / "1.png").rename(flat / "val" / "img0.png")
    with pytest.raises(DatasetError, match="holds no images in class sub-folders"):
        image_folder("imagenet", "val", flat, None)
