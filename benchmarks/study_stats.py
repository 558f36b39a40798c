"""The proxy study's statistics in plain numpy: rank correlations (Spearman, Kendall tau-b), a percentile
bootstrap interval, and the accuracy of the student a proxy picks among k random samples (exact expectation)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_ci", "expected_pick_accuracy", "kendall_tau_b", "rankdata", "spearman"]


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as scipy.stats.rankdata's default)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (nan when either side is constant)."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties on either side corrected), over all pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), k=1)
    s = float((dx * dy)[upper].sum())
    nx, ny = float(np.abs(dx[upper]).sum()), float(np.abs(dy[upper]).sum())  # pairs not tied in x / in y
    return s / math.sqrt(nx * ny) if nx > 0 and ny > 0 else float("nan")


def bootstrap_ci(
    x: np.ndarray,
    y: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)``, resampling the (x, y) pairs with replacement."""
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        v = statistic(x[idx], y[idx])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def expected_pick_accuracy(scores: np.ndarray, accuracy: np.ndarray, k: int) -> float:
    """Expected accuracy of the highest-scoring student among k drawn without replacement from the N.

    Exact: the student ranked r-th by score (0 = best) is the pick of a k-subset with probability
    C(N-1-r, k-1) / C(N, k). Tied scores share their students' mean accuracy. k = 1 is a random pick
    (the mean), k = N the proxy's own pick.
    """
    scores, accuracy = np.asarray(scores, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the {n} students, got {k}")
    order = np.argsort(-scores, kind="mergesort")
    acc = accuracy[order].copy()
    s = scores[order]
    i = 0
    while i < n:  # a tie is broken at random: each tied student is the pick equally often
        j = i
        while j + 1 < n and s[j + 1] == s[i]:
            j += 1
        acc[i : j + 1] = acc[i : j + 1].mean()
        i = j + 1
    total = math.comb(n, k)
    weights = np.array([math.comb(n - 1 - r, k - 1) / total for r in range(n)])
    return float((weights * acc).sum())
