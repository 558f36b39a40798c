"""Release a checkpoint into the repository: copy its directory to ``weights/<arch.tag>/`` and add
its record to ``pretrained.json``, both derived from the checkpoint's own config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .genotype import Genotype
from .hub import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint_dir
from .io import atomic_write_text
from .pretrained import RECORDS_FILE, REPO_ROOT, Weights, load_records

__all__ = ["release_checkpoint"]


def release_checkpoint(checkpoint: str | Path, force: bool = False) -> Weights:
    """Verify the checkpoint loads, copy it into ``weights/`` and write its record."""
    checkpoint = Path(checkpoint)
    load_checkpoint_dir(checkpoint)  # verifies the sha256 and that the weights fit the genotype
    cfg = json.loads((checkpoint / CONFIG_NAME).read_text())
    if cfg.get("smoke"):
        raise ValueError(f"{checkpoint} comes from a smoke run (--max-steps); only full runs are released")
    name = cfg["name"]
    records = dict(load_records())
    if name in records and not force:
        raise FileExistsError(f"a record named {name} exists; pass --force to replace it")
    target = REPO_ROOT / "weights" / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkpoint, target)
    w = Weights(
        name=name, file=f"weights/{name}/{WEIGHTS_NAME}", sha256=cfg["weights_sha256"], size=cfg["weights_size"],
        dataset=cfg["dataset"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"],
        input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        label_names=tuple(cfg["label_names"]), metrics={k: round(v, 2) for k, v in cfg["metrics"].items() if k in ("top1", "top5")},
        params=cfg["params"], macs=cfg["macs"], genotype=Genotype.from_dict(cfg["genotype"]).to_string(),
        teacher=cfg.get("teacher"), recipe=cfg["recipe"], license=cfg.get("license", "mit"),
        hf_repo=f"blockswap-zoo/{name.replace('.', '-')}", eval_transform=cfg["eval_transform"],
        training=cfg["training"], eval_command=cfg["eval_command"],
        extra={"description": cfg.get("description", ""), "recipe_sha256": cfg.get("recipe_sha256", "")},
    )  # fmt: skip
    records[name] = w
    rows = []
    for r in records.values():
        d = dict(vars(r))
        for key in ("input_size", "mean", "std", "label_names"):
            d[key] = list(d[key])
        rows.append(d)
    atomic_write_text(RECORDS_FILE, json.dumps(rows, indent=2) + "\n")
    load_records.cache_clear()
    return w
