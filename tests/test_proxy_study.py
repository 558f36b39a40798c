"""The proxy study (benchmarks/proxy_study.py): its statistics on inputs with known answers, and the whole
study end to end on CPU at a tiny setting (2 students, 2 steps each)."""

import json
import math
from pathlib import Path

import numpy as np
import proxy_study as study
import pytest
import study_stats as stats


def test_rank_correlations_on_known_cases() -> None:
    x = np.array([1.0, 2.0, 3.0])
    assert stats.spearman(x, x * 10) == pytest.approx(1.0) and stats.kendall_tau_b(x, -x) == pytest.approx(-1.0)
    y = np.array([1.0, 3.0, 2.0])  # pairs: (1,2) and (1,3) concordant, (2,3) discordant
    assert stats.kendall_tau_b(x, y) == pytest.approx(1 / 3)
    assert stats.spearman(x, y) == pytest.approx(0.5)  # 1 - 6 * (0 + 1 + 1) / (3 * 8)
    assert stats.rankdata(np.array([10.0, 20.0, 10.0, 5.0])).tolist() == [2.5, 4.0, 2.5, 1.0]
    # tau-b with ties: x = [1, 1, 2], y = [1, 2, 3]: S = 2, tied-x pairs 1 -> 2 / sqrt(2 * 3)
    assert stats.kendall_tau_b(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(stats.spearman(np.ones(4), np.arange(4.0)))


def test_bootstrap_interval_brackets_the_estimate() -> None:
    x = np.arange(30.0)
    assert stats.bootstrap_ci(x, 2 * x, stats.spearman, n_boot=200) == pytest.approx((1.0, 1.0))
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    lo, hi = stats.bootstrap_ci(a, b, stats.spearman, n_boot=500)
    assert lo < stats.spearman(a, b) < hi and hi - lo < 0.3


def test_expected_pick_of_k_is_exact() -> None:
    acc = np.array([90.0, 80.0, 70.0])
    score = np.array([3.0, 1.0, 2.0])  # ranks by score: 90 (best), 70, 80
    assert stats.expected_pick_accuracy(score, acc, 1) == pytest.approx(80.0)  # a random pick: the mean
    assert stats.expected_pick_accuracy(score, acc, 3) == pytest.approx(90.0)  # the proxy's own pick
    # k = 2: subsets {90,80} -> 90, {90,70} -> 90, {80,70} -> 70 (score 2 beats 1)
    assert stats.expected_pick_accuracy(score, acc, 2) == pytest.approx((90 + 90 + 70) / 3)
    assert stats.expected_pick_accuracy(np.zeros(3), acc, 3) == pytest.approx(80.0)  # all tied: random
    with pytest.raises(ValueError, match="k must be between 1 and the 3 students"):
        stats.expected_pick_accuracy(score, acc, 4)


@pytest.mark.slow
def test_the_study_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = str(tmp_path / "study")
    common = ["--out", out]
    train = ["train", "--budgets", "200k", "--students", "2", "--max-steps", "2", "--epochs", "1",
             "--batch-size", "32", "--eval-subset", "64", "--device", "cpu", *common]  # fmt: skip
    study.main(train)
    rows = [json.loads(line) for line in (tmp_path / "study" / "students.0.jsonl").read_text().splitlines()]
    assert [(r["budget"], r["index"]) for r in rows] == [(200_000, 0), (200_000, 1)]
    study.main(train)  # resumed: nothing left to train, nothing added
    assert len((tmp_path / "study" / "students.0.jsonl").read_text().splitlines()) == 2
    score = ["score", "--budgets", "200k", "--students", "2", "--seeds", "0", "--batch", "16", *common]
    study.main(score)
    study.main(score)  # resumed: nothing left to score
    assert len((tmp_path / "study" / "scores.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit, match="other settings"):
        study.main(["score", "--budgets", "200k", "--students", "3", "--seeds", "0", "--batch", "16", *common])
    study.main(["analyse", "--bootstrap", "20", *common])
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    per = results["budgets"]["200000"]
    assert per["students"] == 2 and set(per) >= {"fisher", "synflow", "params", "macs"}
    assert per["fisher"]["pick_of_k"]["1"] == pytest.approx(per["mean_top1"])
    assert results["settings"]["schedule"]["max_steps"] == 2 and results["hardware"]["score"]
    assert results["score_settings"]["init_seeds"] == [0]
    scores = tmp_path / "study" / "scores.jsonl"
    first, second = (json.loads(line) for line in scores.read_text().splitlines())
    scores.write_text("".join(json.dumps({**r, "genotype": second["genotype"]}) + "\n" for r in (first, second)))
    with pytest.raises(SystemExit, match="two different genotypes"):
        study.main(["analyse", "--bootstrap", "20", *common])  # scored and trained students must be the same
    assert (tmp_path / "study" / "proxy_study.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="other settings"):
        study.main([*train[:-2], "--students", "3", *common])
