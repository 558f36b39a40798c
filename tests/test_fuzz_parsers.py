"""Fuzzed input to the parsers a user feeds (genotype text, budgets, recipes, config.json): each input parses
or raises one of the package's own error types, never anything else, within a bounded time per example."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockswap_zoo import Genotype, GenotypeError, create_model
from blockswap_zoo.checkpoint import WeightsError, load_checkpoint_dir, save_checkpoint_dir
from blockswap_zoo.recipe import RecipeError, parse_recipe
from blockswap_zoo.registry import UnknownModelError
from blockswap_zoo.search import BudgetError, parse_budget

OFFICIAL = Path(__file__).resolve().parents[1] / "blockswap_zoo" / "recipes" / "wrn_40_2_bs400k.fmnist_at.yaml"
FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=2),  # per example: a parser that hangs or allocates without bound fails here
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples in every CI run: a failure reproduces
)
BLOCK_WORDS = ["S", "G(4)", "G(N)", "G(N/2)", "B(2)", "BG(2,4)", "BG(2,M/4)", "Conv", "G(0)", "B(", "x", ""]
ARCH_WORDS = ["wrn_10_1", "wrn_40_2", "resnet18", "wrn_0_0", "wrn_99999_99999", "resnet", "", "v1", "{", ":"]

# JSON-like values, nested a little: what a config.json or a YAML recipe can hold
plain = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
values = st.recursive(
    plain,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _genotype_texts() -> st.SearchStrategy[str]:
    compact = st.builds(
        lambda arch, version, blocks: f"{arch}:{version}:{';'.join(blocks)}",
        st.sampled_from(ARCH_WORDS),
        st.sampled_from(["v1", "v2", "v", "1", "vx"]),
        st.lists(st.sampled_from(BLOCK_WORDS), max_size=20),
    )
    # the right number of blocks for the backbone (3 for wrn_10_1, 6 for wrn_16_1), so that many examples parse
    sized = st.sampled_from([("wrn_10_1", 3), ("wrn_16_1", 6)]).flatmap(
        lambda a: st.lists(st.sampled_from(BLOCK_WORDS[:8] * 3 + BLOCK_WORDS[8:]), min_size=a[1], max_size=a[1]).map(
            lambda blocks: f"{a[0]}:v1:{';'.join(blocks)}"
        )
    )
    as_json = st.builds(
        lambda d: json.dumps(d),
        st.fixed_dictionaries(
            {},
            optional={
                "format": st.sampled_from(["blockswap-genotype", "x"]) | plain,
                "version": st.integers(-2, 3) | plain,
                "backbone": st.sampled_from(ARCH_WORDS) | plain,
                "blocks": st.lists(st.sampled_from(BLOCK_WORDS), max_size=20) | values,
            },
        ),
    )
    return sized | compact | as_json | st.text(max_size=60)


@FUZZ
@given(_genotype_texts())
def test_genotype_text_parses_or_raises_genotype_error(text: str) -> None:
    try:
        g = Genotype.parse(text)
    except GenotypeError:
        return
    assert Genotype.parse(g.to_string()) == g


@FUZZ
@given(st.text(max_size=20) | st.from_regex(r"\s*-?[0-9.,e]{0,12}\s*[kKmMgGbB]?\s*", fullmatch=True))
def test_budgets_parse_or_raise_budget_error(text: str) -> None:
    try:
        n = parse_budget(text)
    except BudgetError:
        return
    assert isinstance(n, int) and n > 0


def _mutated_recipe(data: st.DataObject) -> dict:
    d = yaml.safe_load(OFFICIAL.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        node = d
        path = []
        while isinstance(node, dict) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node)))
            path.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if not isinstance(node, dict):
            continue
        key = data.draw(st.sampled_from(sorted(node)) | st.text(max_size=8)) if node else "x"
        if data.draw(st.booleans()):
            node.pop(key, None)
        else:
            node[key] = data.draw(values)
    return d


@FUZZ
@given(st.data())
def test_recipes_parse_or_raise_recipe_error(data: st.DataObject) -> None:
    text = yaml.safe_dump(_mutated_recipe(data)) if data.draw(st.booleans()) else data.draw(st.text(max_size=200))
    try:
        parse_recipe(text, "fuzz.yaml")
    except RecipeError as e:
        assert str(e).startswith("fuzz.yaml")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("fuzz") / "ckpt"
    save_checkpoint_dir(create_model("wrn_10_1:v1:S;S;S", num_classes=10, in_chans=1).eval(), out, {})
    return out


@FUZZ
@given(st.data())
def test_config_json_loads_or_raises_the_packages_errors(checkpoint: Path, tmp_path: Path, data: st.DataObject) -> None:
    folder = tmp_path / "c"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(checkpoint, folder)
    cfg = json.loads((folder / "config.json").read_text())
    keys = sorted(cfg) + ["genotype.blocks", "genotype.backbone"]
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3)):
        value = data.draw(values | st.sampled_from(ARCH_WORDS) | st.integers(-5, 10**12))
        if key.startswith("genotype."):
            if isinstance(cfg.get("genotype"), dict):
                cfg["genotype"][key.split(".")[1]] = value
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        load_checkpoint_dir(folder)
    except (WeightsError, GenotypeError, UnknownModelError):
        pass
