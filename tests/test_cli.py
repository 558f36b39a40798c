"""CLI: list / info, JSON for scripts, exit code 2 with a clear message on bad input."""

import json

from typer.testing import CliRunner

from blockswap_zoo.cli import app

runner = CliRunner()


def test_list_json_and_pattern() -> None:
    res = runner.invoke(app, ["list", "wrn_40_2_bs*", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert {r["name"] for r in rows} >= {"wrn_40_2_bs811k", "wrn_40_2_bs162k"}
    assert next(r for r in rows if r["name"] == "wrn_40_2_bs811k")["params"] == 811_370


def test_info_table_and_json() -> None:
    res = runner.invoke(app, ["info", "wrn_40_2_bs811k"])
    assert res.exit_code == 0 and "811,370" in res.stdout and "36.2%" in res.stdout
    res = runner.invoke(app, ["info", "wrn_40_2_bs811k", "--json", "--num-classes", "100"])
    data = json.loads(res.stdout)
    assert data["teacher_params"] == 2_243_546 + 90 * 129 and len(data["blocks"]) == 18


def test_info_on_compact_genotype() -> None:
    res = runner.invoke(app, ["info", "wrn_16_1:v1:S;S;G(4);B(2);S;S", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["genotype"]["blocks"][2] == "G(4)"


def test_bad_input_exits_2_with_message() -> None:
    res = runner.invoke(app, ["info", "wrn_40_2_bs811"])
    assert res.exit_code == 2 and "did you mean" in res.stderr
    res = runner.invoke(app, ["info", "wrn_16_1:v1:S;S"])
    assert res.exit_code == 2 and "has 6 swappable blocks" in res.stderr
    res = runner.invoke(app, ["list", "nothing*"])
    assert res.exit_code == 2 and "no model matches" in res.stderr
