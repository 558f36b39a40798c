"""The zoo's evidence from records: which column a model fills, the per-budget margins, the plot's data."""

from __future__ import annotations

import dataclasses

from blockswap_zoo.evidence import budget_table, comparison_kind, evidence_section, pareto_points, render_pareto
from blockswap_zoo.genotype import Genotype
from blockswap_zoo.pretrained import Weights, load_records


def _record(name: str, genotype: str, role: str, top1: float, budget: int | None = 200_000) -> Weights:
    base = load_records()["wrn_40_2_bs400k.fmnist_at"]
    extra = {"role": role} | ({} if budget is None else {"budget": budget})
    g = Genotype.parse(genotype) if ":" in genotype else Genotype.uniform(genotype)
    return dataclasses.replace(base, name=name, genotype=g.to_string(), params=g.num_params(10, 1), extra=extra,
                               metrics={"top1": top1, "top5": 99.9}, latency=[])  # fmt: skip


def _zoo() -> dict[str, Weights]:
    records = [
        _record("wrn_40_2.t", "wrn_40_2", "teacher", 95.5, budget=None),
        _record("wrn_40_2_bs200k.x", "wrn_40_2:v1:" + ";".join(["BG(2,M/8)"] * 17 + ["G(N)"]), "student", 94.0),
        _record("wrn_40_2_bg2_m8.x", "wrn_40_2:v1:" + ";".join(["BG(2,M/8)"] * 18), "baseline", 94.6),
        _record("wrn_40_2_rand200k.x", "wrn_40_2:v1:" + ";".join(["G(N)", "B(2)"] * 9), "baseline", 93.1),
        _record("wrn_16_1.x", "wrn_16_1", "baseline", 93.5),
        _record("wrn_40_2_bs800k.x", "wrn_40_2:v1:" + ";".join(["G(4)"] * 18), "student", 95.2, budget=800_000),
        _record("wrn_40_2_g4.x", "wrn_40_2:v1:" + ";".join(["G(4)"] * 18), "baseline", 95.0, budget=800_000),
        _record("old.x", "wrn_40_2:v1:" + ";".join(["G(4)"] * 18), "student", 93.0, budget=None),
    ]
    return {w.name: w for w in records}


def test_each_record_fills_the_column_its_role_and_genotype_say() -> None:
    kinds = {name: comparison_kind(w) for name, w in _zoo().items()}
    assert kinds == {"wrn_40_2.t": None, "wrn_40_2_bs200k.x": "BlockSwap", "wrn_40_2_bg2_m8.x": "single-blocktype",
                     "wrn_40_2_rand200k.x": "random", "wrn_16_1.x": "scaled WRN", "wrn_40_2_bs800k.x": "BlockSwap",
                     "wrn_40_2_g4.x": "single-blocktype", "old.x": None}  # fmt: skip


def test_the_budget_table_reports_the_margin_and_says_where_a_baseline_wins() -> None:
    table = budget_table(_zoo())
    rows = [line for line in table.splitlines() if line.startswith("| 200K |")]
    assert [r.split("|")[3].strip() for r in rows][:4] == ["BlockSwap", "single-blocktype", "random", "scaled WRN"]
    assert "| 200K | 94.00 | `wrn_40_2_bg2_m8.x` | 94.60 | -0.60 |" in table
    assert "| 800K | 95.20 | `wrn_40_2_g4.x` | 95.00 | +0.20 |" in table
    assert "A baseline beats the BlockSwap student at 200K (`wrn_40_2_bg2_m8.x`, 0.60 points)." in table
    assert "wrn_40_2.t" not in table and "old.x" not in table  # no budget: not compared
    assert "No same-budget comparison" in budget_table({}) and "zoo_pareto.png" in evidence_section({})


def test_every_published_model_is_a_point_of_the_plot() -> None:
    points = pareto_points(_zoo())
    assert [p["kind"] for p in points if p["name"] in ("wrn_40_2.t", "old.x")] == ["teacher", "BlockSwap"]
    assert len(points) == 8 and all(p["params"] > 0 and p["macs"] > 0 for p in points)
    assert render_pareto(points).startswith(b"\x89PNG")
