"""Latency tables, the predictor and latency budgets: the table's format and key, the sum and calibration
on tiny networks, the sampler's exactness under a latency window, and the errors users meet."""

import hashlib
import itertools
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from blockswap_zoo.backbones import parse_backbone
from blockswap_zoo.blocks import get_block_type
from blockswap_zoo.genotype import Genotype
from blockswap_zoo.latency import (
    Calibration,
    LatencyError,
    LatencyTable,
    MeasureSetting,
    NetworkShape,
    calibrate,
    latency_space,
    parse_latency,
    predict_ms,
)
from blockswap_zoo.latency.budget import LatencyBudget, draw_under_latency
from blockswap_zoo.latency.predictor import raw_sum_ms
from blockswap_zoo.latency.table import FORMAT, block_key
from blockswap_zoo.latency.timing import Timing
from blockswap_zoo.search import BudgetError
from blockswap_zoo.search.sampler import sample_space

TYPES = ["S", "G(2)", "B(2)", "BG(2,2)", "G(N)"]
SHAPE = NetworkShape(parse_backbone("wrn_10_1"), 1, (28, 28), 10)  # the embedded search batch's shape


def _fake_ms(key: str) -> float:
    """A deterministic, distinct 'timing' per entry: tests of arithmetic need no clock."""
    return 0.05 + int(hashlib.sha256(key.encode()).hexdigest()[:6], 16) / 0xFFFFFF


def _fake_table(path: Path | None = None, calibration: Calibration | None = None) -> LatencyTable:
    table = LatencyTable(MeasureSetting.here("cpu", 1), path=path)
    for key, *_ in table.missing(SHAPE, TYPES):
        table.entries[key] = {"median_ms": _fake_ms(key), "spread_ms": 0.0, "repeats": 1}
    if calibration is not None:
        table.calibrations[SHAPE.key] = calibration.to_dict()
    if path is not None:
        table.save()
    return table


def _all_genotypes() -> list[Genotype]:
    return [Genotype("wrn_10_1", blocks) for blocks in itertools.product(TYPES, repeat=3)]


def test_setting_key_and_file_name() -> None:
    s = MeasureSetting.here("cpu", 128, "bfloat16")
    assert (s.device_type, s.batch, s.dtype, s.backend) == ("cpu", 128, "bfloat16", "eager")
    assert s.threads == torch.get_num_threads() and s.torch == torch.__version__
    assert "family/model/stepping" in s.device_name  # two CPUs both named "AMD EPYC" are told apart
    name = s.file_name()
    assert name.startswith("cpu-") and "-b128-bfloat16-" in name and name.endswith(".json")
    assert name != MeasureSetting.here("cpu", 1, "bfloat16").file_name()
    for bad, match in [({"batch": 0}, "batch"), ({"dtype": "int8"}, "dtype"), ({"backend": "tvm"}, "backend")]:
        with pytest.raises(LatencyError, match=match):
            MeasureSetting.here("cpu", **{"batch": 1, **bad})  # type: ignore[arg-type]


def test_table_round_trips_and_refuses_other_settings_and_files(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    table = _fake_table(path, Calibration(1.2, 0.1, 5, 0.03))
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT and raw["setting"] == table.setting.to_dict()
    assert any(k.startswith("block PreActBlock G(2) 16->16 s1 28x28") for k in raw["entries"])
    back = LatencyTable.open(table.setting, path)
    assert back.entries == table.entries and back.calibrations == table.calibrations
    with pytest.raises(LatencyError, match="batch: table 1, here 128"):
        LatencyTable.open(MeasureSetting.here("cpu", 128), path)
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(LatencyError, match="not a latency table"):
        LatencyTable.load(tmp_path / "other.json")
    (tmp_path / "torn.json").write_text('{"format": ')
    with pytest.raises(LatencyError, match="cannot be read"):
        LatencyTable.load(tmp_path / "torn.json")
    assert LatencyTable.open(table.setting, tmp_path / "new.json").entries == {}  # none yet: an empty table


def test_prediction_is_the_calibrated_sum_of_entries() -> None:
    g = Genotype("wrn_10_1", ("S", "BG(2,2)", "G(N)"))
    table = _fake_table()
    keys = [block_key(SHAPE, bt, s) for bt, s in zip(g.block_types, SHAPE.slots())]
    fixed = sum(v["median_ms"] for k, v in table.entries.items() if k.startswith(("stem ", "tail ")))
    raw = fixed + sum(table.entries[k]["median_ms"] for k in keys)
    assert raw_sum_ms(table, SHAPE, g) == pytest.approx(raw)
    assert predict_ms(table, SHAPE, g) == pytest.approx(raw)  # no calibration: the raw sum
    table.calibrations[SHAPE.key] = Calibration(1.5, 0.25, 4, 0.0).to_dict()
    assert predict_ms(table, SHAPE, g) == pytest.approx(1.5 * raw + 0.25)
    with pytest.raises(LatencyError, match="no entry .*latency-table"):
        predict_ms(table, SHAPE, Genotype("wrn_10_1", ("S", "S", "B(4)")))


def test_calibration_recovers_scale_and_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole networks that take 1.3 x sum + 0.4 ms are fitted exactly (relative least squares)."""
    table = _fake_table()

    def fake_networks(models, shape, passes=3, progress=None):  # type: ignore[no-untyped-def]
        return [Timing(1.3 * raw_sum_ms(table, shape, m.genotype) + 0.4, 0.0, 1) for m in models]

    monkeypatch.setattr(table, "time_networks", fake_networks)
    cal = calibrate(table, SHAPE, networks=4, block_types=TYPES)
    assert cal.scale == pytest.approx(1.3) and cal.offset_ms == pytest.approx(0.4, abs=1e-9)
    assert cal.max_rel_error < 1e-9 and table.calibrations[SHAPE.key]["networks"] == 4
    with pytest.raises(LatencyError, match="at least 2"):
        calibrate(table, SHAPE, networks=1)


def test_a_table_is_measured_and_resumes_what_is_missing(tmp_path: Path) -> None:
    table = LatencyTable(MeasureSetting.here("cpu", 2), path=tmp_path / "t.json")
    assert table.measure(SHAPE, ["S", "G(2)"], passes=1) == 2 * 3 + 2  # two types at three slots, stem, tail
    saved = LatencyTable.load(tmp_path / "t.json")
    assert len(saved.entries) == 8 and all(e["median_ms"] > 0 and e["repeats"] >= 20 for e in saved.entries.values())
    assert table.measure(SHAPE, ["S", "G(2)", "B(2)"], passes=1) == 3  # only the new type's entries


def test_sampler_is_exact_and_uniform_under_a_latency_window() -> None:
    """Every draw's discretised latency lies in the window, and the draws are uniform over the enumerated
    feasible set (chi-square, as the parameter sampler's test)."""
    table = _fake_table(calibration=Calibration(1.1, 0.05, 3, 0.0))
    space = latency_space(table, SHAPE, TYPES)
    units = {g: space.fixed + sum(space.costs[i][space.types[i].index(b)] for i, b in enumerate(g.blocks))
             for g in _all_genotypes()}  # fmt: skip
    median = sorted(units.values())[len(units) // 2]
    budget, tol = median, 0.05
    lo, hi = space.window(budget, tol)
    feasible = {g for g, u in units.items() if lo <= u <= hi}
    assert 5 < len(feasible) < len(units)
    for g in feasible:  # units are the calibrated prediction, to the rounding of one unit per block
        assert abs(units[g] * space.unit - predict_ms(table, SHAPE, g)) <= 4 * space.unit
    n = 30 * len(feasible)
    counts = Counter(sample_space(space, budget, n, seed=11, tolerance=tol))
    assert set(counts) == feasible
    expected = n / len(feasible)
    chi2 = sum((counts[g] - expected) ** 2 / expected for g in feasible)
    df = len(feasible) - 1
    z = ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    assert abs(z) < 4.0, f"chi2={chi2:.1f} with {df} dof"


def test_budgets_outside_the_reachable_range_name_it() -> None:
    table = _fake_table()
    space = latency_space(table, SHAPE, TYPES)
    fastest, slowest = space.reachable
    with pytest.raises(BudgetError, match=r"predicted latency .*reachable range is \[[\d.]+ ms, [\d.]+ ms\] \(below\)"):
        sample_space(space, fastest // 2, 1)
    with pytest.raises(BudgetError, match=r"\(above\)"):
        sample_space(space, slowest * 2, 1)


def test_parameter_cap_combines_with_the_latency_budget(tmp_path: Path) -> None:
    table = _fake_table(tmp_path / "t.json", Calibration(1.0, 0.0, 3, 0.0))
    mid = sorted(predict_ms(table, SHAPE, g) for g in _all_genotypes())[60]
    params = sorted(g.num_params(10, 1) for g in _all_genotypes())
    cap = params[len(params) // 2]
    budget = LatencyBudget(mid, table=str(tmp_path / "t.json"), max_params=cap)
    draw = draw_under_latency(budget, SHAPE, 50, seed=0, tolerance=0.2, block_types=TYPES)
    assert len(draw.genotypes) == 50 and all(g.num_params(10, 1) <= cap for g in draw.genotypes)
    assert draw.record["max_params"] == cap and draw.record["table_sha256"]
    impossible = LatencyBudget(mid, table=str(tmp_path / "t.json"), max_params=params[0] - 1)
    with pytest.raises(BudgetError, match="below the smallest wrn_10_1 genotype"):
        draw_under_latency(impossible, SHAPE, 5, seed=0, tolerance=0.2, block_types=TYPES)
    space = latency_space(table, SHAPE, TYPES)
    with pytest.raises(BudgetError, match=r"only 0 of 1,000 .* meet the rule, fewer than the 5"):
        sample_space(space, round(mid / space.unit), 5, 0, 0.2, lambda g: False, "the rule", max_draws=1000)


@pytest.mark.parametrize(
    ("text", "ms"), [("2.5ms", 2.5), ("800us", 0.8), ("0.01s", 10.0), ("3", 3.0), (" 1.5 ms ", 1.5), (4, 4.0)]
)
def test_parse_latency(text: str, ms: float) -> None:
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("bad", ["fast", "-1ms", "0", "nan", "ms", "inf"])
def test_parse_latency_refuses(bad: str) -> None:
    with pytest.raises(LatencyError):
        parse_latency(bad)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockswap_zoo", *args], capture_output=True, text=True, cwd=cwd)


def test_latency_budgeted_search_end_to_end(tmp_path: Path) -> None:
    """The CLI draws under the budget from the given table, scores, and measures the winner at the end."""
    table = _fake_table(tmp_path / "t.json", Calibration(1.0, 0.0, 3, 0.0))
    mid = sorted(predict_ms(table, SHAPE, g) for g in _all_genotypes())[60]
    out = tmp_path / "report"
    types = ",".join(TYPES)
    args = ["search", "wrn_10_1", "--latency", f"{mid}ms", "--latency-table", str(tmp_path / "t.json"), "-n", "4",
            "--tolerance", "0.1", "--block-types", types, "--device", "cpu", "--workers", "1",
            "--latency-settle", "0"]  # fmt: skip
    r = _cli(*args, "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    lat = summary["latency"]
    assert lat["budget_ms"] == pytest.approx(mid) and abs(lat["predicted_ms"] - mid) <= 0.1 * mid + 1e-3
    assert lat["measured_ms"] > 0 and "measured" in r.stdout
    settings = json.loads((out / "settings.json").read_text())
    assert settings["metric"] == "latency" and settings["latency"]["setting"]["batch"] == 1
    again = _cli(*args, "-o", str(out), "--resume", cwd=tmp_path)  # the same table: the same candidates
    assert again.returncode == 0, again.stderr
    for bad, match in [
        (["search", "wrn_10_1", "400k", "--latency", "2ms"], "not both"),
        (["search", "wrn_10_1"], "give a BUDGET"),
        (["search", "wrn_10_1", "30k", "--max-params", "20k"], "--max-params"),
        (["search", "wrn_10_1", "--latency", "fast"], "not a duration"),
        ([*args[:3], "0.0001ms", *args[4:]], "below"),
    ]:
        r = _cli(*bad, "-o", str(tmp_path / "x"), cwd=tmp_path)
        assert r.returncode == 2 and match in " ".join(r.stderr.split()), (bad, r.stderr)


def test_latency_command_measures_a_model(tmp_path: Path) -> None:
    r = _cli("latency", "wrn_10_1:v1:S;G(2);B(2)", "--batch", "1", "--batch", "2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["latency"]
    assert [row["batch"] for row in rows] == [1, 2] and all(row["median_ms"] > 0 for row in rows)
    r = _cli("latency", "wrn_10_1:v1:S;G(2);B(2)", "--record", cwd=tmp_path)
    assert r.returncode == 2 and "no published record" in r.stderr
    assert get_block_type("G(2)")  # the names above are the library's


def test_a_table_stopped_while_measuring_keeps_what_it_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockswap_zoo.latency import table as table_module
    from blockswap_zoo.latency.timing import Timing

    calls: list[int] = []
    stop_at = [2]

    def fake_timing(jobs, device, dtype, passes, progress=None):  # noqa: ANN001, ANN202 - stopped in the 2nd chunk
        calls.append(len(jobs))
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return [Timing(median_ms=1.0, spread_ms=0.0, repeats=passes) for _ in jobs]

    monkeypatch.setattr(table_module, "time_interleaved", fake_timing)
    path = tmp_path / "table.json"
    tab = LatencyTable(MeasureSetting.here("cpu", 1), path=path)
    need = len(tab.missing(SHAPE))
    assert need > table_module.SAVE_EVERY  # at least two chunks
    with pytest.raises(KeyboardInterrupt):
        tab.measure(SHAPE)
    saved = LatencyTable.load(path)
    assert len(saved.entries) == table_module.SAVE_EVERY  # the first chunk is on disk
    stop_at[0] = 0  # the next run is not stopped
    assert LatencyTable.open(saved.setting, path).measure(SHAPE) == need - table_module.SAVE_EVERY  # only the rest
