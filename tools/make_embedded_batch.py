"""Produce blockswap_zoo/assets/fmnist_batch128.safetensors: the search's embedded default minibatch.

128 real Fashion-MNIST *training* images with their labels, chosen by a seeded random draw
(numpy ``default_rng(0).choice(60000, 128, replace=False)``, kept in draw order), stored
un-augmented as uint8 1 x 28 x 28 images and int64 labels (about 100 KB). The search applies
the Fashion-MNIST training augmentation (pad-4 random crop, flip, Cutout) and normalisation
when it loads the batch, seeded by the search seed.

    python tools/make_embedded_batch.py [--src /usr/share/datasets/fashion-mnist] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "blockswap_zoo" / "assets" / "fmnist_batch128.safetensors"


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (uint8 data) -> numpy array, header checked against the size."""
    raw = gzip.decompress(path.read_bytes())
    if raw[:3] != b"\x00\x00\x08":
        raise SystemExit(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise SystemExit(f"{path}: header shape {shape} does not match {data.size} bytes")
    return data.reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    images = read_idx(args.src / "train-images-idx3-ubyte.gz")
    labels = read_idx(args.src / "train-labels-idx1-ubyte.gz")
    if len(images) != 60000 or len(labels) != 60000:
        raise SystemExit(f"expected the 60000-image Fashion-MNIST train split, got {len(images)} images")
    idx = np.random.default_rng(args.seed).choice(len(images), args.n, replace=False)
    tensors = {
        "images": torch.from_numpy(images[idx].copy()).unsqueeze(1).contiguous(),  # uint8 N x 1 x 28 x 28
        "labels": torch.from_numpy(labels[idx].astype(np.int64)),
        "indices": torch.from_numpy(idx.astype(np.int64)),  # positions in the train split
    }
    meta = {
        "dataset": "fashion_mnist",
        "split": "train",
        "selection": f"numpy default_rng({args.seed}).choice(60000, {args.n}, replace=False)",
        "source_sha256": hashlib.sha256((args.src / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest(),
        "license": "Fashion-MNIST: MIT (Zalando Research)",
    }
    data = save(tensors, metadata=meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    counts = np.bincount(labels[idx], minlength=10)
    print(f"wrote {args.out} ({len(data):,} bytes); labels per class: {counts.tolist()}")


if __name__ == "__main__":
    main()
