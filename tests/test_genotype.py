"""Genotype format: round trips, reference aliases, and errors that name the problem."""

import json
import re

import pytest

from blockswap_zoo import Genotype, GenotypeError, get_block_type
from blockswap_zoo.blocks import BLOCK_TYPES, BlockConfigError, UnknownBlockError, sampled_block_names


def test_block_library_is_complete() -> None:
    paper = [t for t in BLOCK_TYPES.values() if t.in_paper]
    assert len(paper) == 21 and len(sampled_block_names()) == 23
    assert "BG(2,M)" not in sampled_block_names()
    for t in BLOCK_TYPES.values():
        assert get_block_type(t.ref_name) is t and get_block_type(t.name.lower()) is t


@pytest.mark.parametrize(
    ("name", "n32", "n64", "n128"),
    [("Conv", 18_560, 73_984, 295_424), ("DConvA2", 11_520, 45_568, 181_248), ("DConvG16", 11_520, 27_136, 70_656),
     ("DConv", 2_880, 9_856, 36_096), ("ConvB4", 1_184, 4_544, 17_792), ("A16B2", 1_296, 4_928, 19_200),
     ("G2B2", 1_440, 4_928, 18_048), ("G8B4", 1_184, 3_392, 10_880), ("G2B4", 752, 2_528, 9_152)],
)  # fmt: skip
def test_block_params_match_reference_table(name: str, n32: int, n64: int, n128: int) -> None:
    """blocktypes.md: one block with in = out = N, reference counting."""
    from blockswap_zoo.backbones import Slot, parse_backbone

    bb, t = parse_backbone("wrn_40_2"), get_block_type(name)
    for n, want in ((32, n32), (64, n64), (128, n128)):
        assert bb.block_cost(t, Slot(0, 0, n, n, 1, (8, 8)))[0] == want


def test_every_uniform_wrn_40_2_matches_reference_table() -> None:
    table = {
        "S": 2_243_546, "G(2)": 1_358_970, "G(4)": 814_650, "G(8)": 542_490, "G(16)": 406_410,
        "G(N/16)": 641_274, "G(N/8)": 455_802, "G(N/4)": 363_066, "G(N/2)": 316_698, "G(N)": 293_514,
        "B(2)": 431_834, "B(4)": 150_938, "BG(2,2)": 286_682, "BG(2,4)": 214_106, "BG(2,8)": 177_818,
        "BG(2,16)": 159_674, "BG(2,M/16)": 238_298, "BG(2,M/8)": 189_914, "BG(2,M/4)": 165_722,
        "BG(2,M/2)": 153_626, "BG(4,M/8)": 102_554, "BG(4,M/4)": 90_458, "BG(4,M/2)": 84_410,
    }  # fmt: skip
    for block, params in table.items():
        assert Genotype.uniform("wrn_40_2", block).num_params(10, 3) == params, block


def test_round_trips_are_exact() -> None:
    g = Genotype.from_reference("wrn_16_1", ["ConvB4", "Conv", "A16B2", "DConvG16", "G8B4", "DConv"])
    assert g.blocks == ("B(4)", "S", "BG(2,16)", "G(N/16)", "BG(4,M/8)", "G(N)")
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_string(g.to_string()) == g
    assert Genotype.parse(g.to_string()) == Genotype.parse(g.to_json()) == g
    assert g.to_reference() == ["ConvB4", "Conv", "A16B2", "DConvG16", "G8B4", "DConv"]
    data = json.loads(g.to_json())
    assert data["blocks"][0] == "B(4)" and isinstance(data["blocks"], list)


def test_save_and_load(tmp_path) -> None:
    g = Genotype.uniform("wrn_40_2", "G(4)")
    g.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == g


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Genotype("wrn_16_1", ("S",) * 5), "has 6 swappable blocks"),
        (lambda: Genotype("wrn_16_1", ("S",) * 5 + ("Foo",)), "unknown block type 'Foo'"),
        (lambda: Genotype("wrn_15_1", ("S",) * 6), "6n+4"),
        (lambda: Genotype("vgg16", ("S",)), "unknown backbone"),
        (lambda: Genotype.from_json("{not json"), "malformed"),
        (lambda: Genotype.from_json('{"backbone": "wrn_16_1"}'), "missing 'blocks'"),
        (lambda: Genotype.from_json('{"backbone": "wrn_16_1", "blocks": [], "extra": 1}'), "unknown genotype keys"),
        (lambda: Genotype.from_string("wrn_16_1 S S"), "compact genotype must look like"),
        (lambda: Genotype("wrn_16_1", ("S",) * 6, version=9), "version 9"),
        (lambda: Genotype.from_json('{"backbone": "wrn_16_1", "blocks": ["S"], "version": true}'), "an integer"),
        (lambda: Genotype.from_reference("wrn_40_2", "Conv"), "a list of block names"),
    ],
)
def test_errors_name_the_problem(make, fragment: str) -> None:
    with pytest.raises(GenotypeError, match=re.escape(fragment)):
        make()


def test_unknown_block_lists_valid_choices() -> None:
    with pytest.raises(UnknownBlockError) as e:
        get_block_type("DConvA3")
    assert "G(N/16)" in str(e.value) and "DConvG16" in str(e.value)


def test_groups_that_do_not_divide_are_refused() -> None:
    with pytest.raises(BlockConfigError, match="divisible"):
        get_block_type("G(16)").unit_plan(24, 24, 1)


def test_reference_csv_import_errors(tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(",index,convs,fisher\n0,0,\"__import__('os')\",0.0\n")
    with pytest.raises(GenotypeError, match="not a list of quoted block names"):
        Genotype.from_reference_csv(bad)
    with pytest.raises(GenotypeError, match="cannot read"):
        Genotype.from_reference_csv(tmp_path / "missing.csv")


def test_counts_default_to_the_backbones_classes_as_build_model() -> None:
    from blockswap_zoo import build_model

    for backbone in ("wrn_16_1", "resnet18"):
        g = Genotype.uniform(backbone)
        assert g.num_params() == sum(p.numel() for p in build_model(g).parameters())
