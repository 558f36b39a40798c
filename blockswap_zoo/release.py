"""Release a checkpoint into the repository: copy its directory to ``weights/<arch.tag>/`` and add
its record to ``pretrained.json``, both derived from the checkpoint's own config.json."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from .checkpoint import CONFIG_NAME, load_checkpoint_dir
from .genotype import Genotype
from .io import atomic_write_text
from .pretrained import RECORDS_FILE, REPO_ROOT, Weights, is_checkout, load_records

__all__ = ["record_latency", "release_checkpoint"]

_NAME = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")


def _checked_name(cfg: dict) -> str:
    """The checkpoint's ``arch.tag`` (it becomes a folder name). A registered arch must have the checkpoint's
    genotype; a new one (a searched student) is registered by the record this release writes."""
    from .registry import UnknownModelError, get_arch

    name = str(cfg.get("name", ""))
    if not _NAME.match(name):
        raise ValueError(f"checkpoint name {name!r} is not 'arch.tag' (lowercase letters, digits, underscores)")
    try:
        arch = get_arch(name)
    except UnknownModelError:
        return name
    if Genotype.from_dict(cfg["genotype"]) != arch.genotype:
        raise ValueError(f"cannot release {name}: its genotype is not the registered {arch.name}'s; rename it")
    return name


def _check_recipe_expectation(cfg: dict, checkpoint: Path) -> None:
    """The recipe the checkpoint names ships with the package, and the checkpoint meets its expected metric."""
    from .recipe import load_recipe, shipped_recipe

    recipe_path = shipped_recipe(str(cfg.get("recipe", "")))
    if recipe_path is None:
        raise ValueError(
            f"{checkpoint} names recipe {cfg.get('recipe')!r}, which is not in this repository; add it first"
        )
    recipe = load_recipe(recipe_path)
    if cfg.get("recipe_sha256") != recipe.sha256:
        raise ValueError(f"{cfg['recipe']} has changed since {checkpoint} was made from it; reproduce it again")
    products = {recipe.name} | ({recipe.teacher.name} if recipe.teacher and recipe.teacher.name else set())
    if cfg.get("name") not in products:
        raise ValueError(
            f"{checkpoint} is named {cfg.get('name')!r}, but its recipe makes {', '.join(sorted(products))}"
        )
    expected = recipe.expected
    if expected is None or recipe.name != cfg.get("name"):  # a teacher checkpoint is a by-product: no promise
        return
    got = cfg.get("metrics", {}).get(expected.metric)
    if got is None or abs(got - expected.value) > expected.tolerance:
        raise ValueError(
            f"{checkpoint} measured {expected.metric} {got}, outside its recipe's expected {expected.value} "
            f"+- {expected.tolerance}: not released. Publish what the recipe promises, or change the recipe's "
            "expectation (with the run that justifies it)"
        )


def _check_claimed_size(cfg: dict, checkpoint: Path) -> None:
    """A config's params and MACs are what its genotype has: a record never publishes a claimed size."""
    try:
        g = Genotype.from_dict(cfg["genotype"])
        size = tuple(cfg["input_size"][-2:])
        params, macs = (
            g.num_params(cfg["num_classes"], cfg["in_chans"]),
            g.macs(cfg["num_classes"], cfg["in_chans"], size),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{checkpoint / CONFIG_NAME} cannot be checked ({type(e).__name__}: {e})") from None
    for key, real in (("params", params), ("macs", macs)):
        if cfg.get(key) != real:
            raise ValueError(
                f"{checkpoint / CONFIG_NAME} claims {key} {cfg.get(key)!r}, but its genotype has {real:,}: not "
                f"released. Write the checkpoint again (blockswap-zoo reproduce or train), or correct {key} to {real}"
            )


def release_checkpoint(checkpoint: str | Path, force: bool = False) -> Weights:
    """Verify the checkpoint loads, copy it into ``weights/`` and write its record (in a repository checkout
    only: an installed package's files are not where anyone publishes from)."""
    if not is_checkout():
        raise ValueError(
            f"release writes weights/ and pretrained.json of a repository checkout, and this installation "
            f"({REPO_ROOT}) is not one; run it from a checkout of blockswap-zoo"
        )
    checkpoint = Path(checkpoint)
    load_checkpoint_dir(checkpoint)  # verifies the sha256 and that the weights fit the genotype
    cfg = json.loads((checkpoint / CONFIG_NAME).read_text())
    if cfg.get("smoke"):
        raise ValueError(f"{checkpoint} comes from a smoke run (--max-steps); only full runs are released")
    name = _checked_name(cfg)
    _check_recipe_expectation(cfg, checkpoint)
    _check_claimed_size(cfg, checkpoint)
    links = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_symlink())
    if links:
        raise ValueError(
            f"{checkpoint} holds symbolic links ({', '.join(links)}); release copies files only, never what a link "
            "points to: replace each link with the file it stands for, or remove it"
        )
    records = dict(load_records())
    target = REPO_ROOT / "weights" / name
    if (name in records or target.exists()) and not force:
        raise FileExistsError(f"{name} is already released (weights/{name} or its record); pass --force to replace it")
    try:  # the record first: a config that cannot make one changes nothing
        w = Weights.from_checkpoint_config(name, cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{checkpoint / CONFIG_NAME} cannot make a release record ({type(e).__name__}: {e})") from None
    old = records.get(name)
    if old is not None and old.genotype == w.genotype:  # latency is the architecture's: a re-release keeps it
        w = dataclasses.replace(w, latency=list(old.latency))
    records[name] = w
    text = json.dumps([r.to_dict() for r in records.values()], indent=2) + "\n"  # made before anything changes
    staging = target.with_name(f".release-{name}")  # copied whole first: weights/ never holds half a checkpoint
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    atomic_write_text(RECORDS_FILE, text)
    load_records.cache_clear()
    return w


def record_latency(name: str, measurement: dict) -> Weights:
    """Put a latency measurement (batch, median_ms, spread_ms, setting) into ``name``'s record, replacing the one
    of the same setting; in a checkout only, as release."""
    if not is_checkout():
        raise ValueError(f"--record writes pretrained.json of a repository checkout, and {REPO_ROOT} is not one")
    records = dict(load_records())
    if name not in records:
        raise ValueError(f"{name!r} has no published record to add latency to; published: {', '.join(records)}")
    w = records[name]
    kept = [m for m in w.latency if m.get("setting") != measurement["setting"]]
    entry = {**measurement, "measured": datetime.now(timezone.utc).date().isoformat()}
    records[name] = dataclasses.replace(w, latency=sorted([*kept, entry], key=_latency_order))
    atomic_write_text(RECORDS_FILE, json.dumps([r.to_dict() for r in records.values()], indent=2) + "\n")
    load_records.cache_clear()
    return records[name]


def _latency_order(m: dict) -> tuple[str, int, str]:
    s = m.get("setting", {})
    return (str(s.get("device_type")), int(s.get("batch", 0)), str(s.get("device_name")))
