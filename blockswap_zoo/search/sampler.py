"""Budget sampler: genotypes drawn exactly uniformly from those whose cost is within a tolerance of a budget.

The reference draws a random block type per position and rejects candidates outside the
budget, which almost never accepts near either end of the range. Here the feasible set is
counted exactly instead: block costs are integers, so the number of ways the blocks from
position i on can add up to each total is a dynamic programme over the blocks. Counts grow to
about 23^18 (82 bits), so the tables hold them modulo a few primes below 2^31 (numpy int64,
fast) and the few exact counts that sampling needs are rebuilt by the Chinese remainder
theorem. Each candidate gets one uniformly random rank in [0, number of feasible genotypes)
from Python's exact big-integer ``randrange`` and is unranked block by block, so every
feasible genotype has exactly the same probability.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce
from typing import cast

import numpy as np

from ..backbones import Backbone, parse_backbone
from ..blocks import BlockConfigError, get_block_type, sampled_block_names
from ..genotype import Genotype, fixed_cost

__all__ = [
    "BudgetError",
    "BudgetSpace",
    "count_feasible",
    "parse_budget",
    "reachable_range",
    "sample_genotypes",
    "sample_space",
]

METRICS = ("params", "macs")  # what BudgetSpace.build counts; "latency" spaces come from blockswap_zoo.latency
# Primes just below 2^31: a sum of up to 2^32 residues, or a cumulative sum over 2^32 of them, fits in int64.
_MAX_BUCKETS = 50_000_000
_MAX_TABLE_BYTES = 4 << 30  # the counting tables of one search (blocks x primes x buckets int64)


def _is_prime(n: int) -> bool:
    """Miller-Rabin with bases 2, 3, 5, 7: exact for every n < 3,215,031,751."""
    if n < 2:
        return False
    for p in (2, 3, 5, 7):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _primes(count: int) -> list[int]:
    """The ``count`` largest primes below 2**31 (residues and their sums of ~30 terms fit int64)."""
    while len(_PRIMES) < count:
        n = _PRIMES[-1] - 2
        while not _is_prime(n):
            n -= 2
        _PRIMES.append(n)
    return _PRIMES[:count]


_PRIMES = [2147483647]


class BudgetError(ValueError):
    """A budget that no genotype can meet, or a malformed budget / sampler setting."""


def parse_budget(text: str | int | float) -> int:
    """``'200k'``, ``'1.5m'``, ``'811370'``, ``'2g'`` (MACs) -> an integer count."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().lower().replace("_", "").replace(",", "")
        mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(s[-1:], 1.0)
        num = s[:-1] if s[-1:] in ("k", "m", "g") else s
        try:
            value = float(num) * mult
        except ValueError:
            raise BudgetError(f"budget {text!r} is not a number; write e.g. 200k, 1.5m or 811370") from None
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget must be a positive number, got {text!r}")
    if round(value) < 1:
        raise BudgetError(f"budget {text!r} rounds to 0; budgets count whole parameters or MACs, e.g. 200k")
    return int(round(value))


def _backbone(backbone: str | Backbone) -> Backbone:
    """A backbone name (wrn_40_2, resnet34) or a registered model's name (its backbone is searched)."""
    if isinstance(backbone, Backbone):
        return backbone
    try:
        return parse_backbone(backbone)
    except ValueError as e:
        not_a_backbone = str(e)
    from ..registry import UnknownModelError, get_arch

    try:
        return get_arch(backbone).genotype.backbone_spec
    except UnknownModelError:
        raise BudgetError(f"{not_a_backbone}; or a model name from `blockswap-zoo list`") from None


@dataclass(frozen=True)
class BudgetSpace:
    """The search space of one backbone under one cost metric: the allowed types and costs per block."""

    backbone: Backbone
    metric: str
    types: tuple[tuple[str, ...], ...]  # per slot: the block types buildable there
    costs: tuple[tuple[int, ...], ...]  # per slot: cost of each of those types
    fixed: int  # stem + head cost, the same for every genotype
    unit: float = 1.0  # what one cost unit is worth: 1 parameter or MAC; for latency, milliseconds

    @classmethod
    def build(
        cls,
        backbone: str | Backbone,
        metric: str = "params",
        num_classes: int | None = None,
        in_chans: int = 3,
        input_size: int | Sequence[int] | None = None,
        block_types: Sequence[str] | None = None,
    ) -> BudgetSpace:
        """Per-slot types and integer costs of ``backbone``; types that cannot be built at a slot are left out."""
        if metric not in METRICS:
            raise BudgetError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        bb = _backbone(backbone)
        num_classes = bb.default_num_classes if num_classes is None else num_classes  # as build_model
        hw = _hw(input_size)
        names = list(sampled_block_names() if block_types is None else block_types)
        if not names:
            raise BudgetError("block_types is empty; give at least one block type (e.g. S, G(4), B(2))")
        canon = list(dict.fromkeys(get_block_type(n).name for n in names))
        types, costs = [], []
        for slot in bb.slots(hw):
            ts, cs = [], []
            for n in canon:
                try:
                    p, m = bb.block_cost(get_block_type(n), slot)
                except BlockConfigError:
                    continue
                ts.append(n)
                cs.append(p if metric == "params" else m)
            if not ts:
                raise BudgetError(
                    f"none of the block types {', '.join(canon)} can be built at block {slot.index} of {bb.name} "
                    f"({slot.in_chs}->{slot.out_chs} channels)"
                )
            types.append(tuple(ts))
            costs.append(tuple(cs))
        fp, fm = fixed_cost(bb, num_classes, in_chans, hw)
        return cls(bb, metric, tuple(types), tuple(costs), fp if metric == "params" else fm)

    @property
    def reachable(self) -> tuple[int, int]:
        """The smallest and the largest total cost any genotype of this space has."""
        return self.fixed + sum(min(c) for c in self.costs), self.fixed + sum(max(c) for c in self.costs)

    @property
    def quantity(self) -> str:
        """What the cost counts, in words: ``parameters``, ``MACs`` or ``predicted latency``."""
        return {"params": "parameters", "macs": "MACs"}.get(self.metric, "predicted latency")

    def number(self, cost: int) -> str:
        """A cost as the user writes it: ``811,370`` (parameters, MACs) or ``2.500 ms`` (latency)."""
        return f"{cost * self.unit:.3f} ms" if self.metric == "latency" else f"{cost:,}"

    def window(self, budget: int, tolerance: float) -> tuple[int, int]:
        """The inclusive integer cost interval [budget (1 - tol), budget (1 + tol)]."""
        if not 0 <= tolerance < 1:
            raise BudgetError(f"tolerance must be in [0, 1), got {tolerance}")
        tol = Fraction(repr(float(tolerance)))  # the decimal the user wrote (0.025 is 1/40), in exact arithmetic
        return math.ceil(budget * (1 - tol)), math.floor(budget * (1 + tol))


def _hw(input_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        return (input_size, input_size)
    return tuple(input_size)[-2:]  # type: ignore[return-value]


class _Counter:
    """Exact counts of completions: tables of cumulative counts modulo several primes, one per block."""

    def __init__(self, space: BudgetSpace, lo: int, hi: int) -> None:
        self.space = space
        offset = sum(min(c) for c in space.costs)
        # Shift every slot's costs so the cheapest type costs 0, then divide by the common gcd: exact buckets.
        mins = [min(c) for c in space.costs]
        g = reduce(math.gcd, [c - m for cs, m in zip(space.costs, mins) for c in cs], 0) or 1
        self.g = g
        self.rel = [np.array([(c - m) // g for c in cs], dtype=np.int64) for cs, m in zip(space.costs, mins)]
        lo_v, hi_v = lo - space.fixed - offset, hi - space.fixed - offset
        self.lo_k = max(0, -((-lo_v) // g))  # ceil
        self.hi_k = hi_v // g
        top = sum(int(r.max()) for r in self.rel)
        self.hi_k = min(self.hi_k, top)
        self.length = self.hi_k + 1
        if self.hi_k < self.lo_k:
            self.tables: list[np.ndarray] = []
            self.primes: tuple[int, ...] = ()
            return
        if self.length > _MAX_BUCKETS:
            raise BudgetError(
                f"the budget spans {self.length:,} cost buckets (cost gcd {g}), more than this sampler's "
                f"{_MAX_BUCKETS:,}; use a coarser metric or a smaller backbone"
            )
        bound = math.prod(len(c) for c in space.costs)  # no count can reach the number of genotypes
        n_primes = 1
        while math.prod(_primes(n_primes)) <= bound:
            n_primes += 1
        primes = _primes(n_primes)
        table_bytes = (len(space.costs) + 1) * n_primes * (self.length + 1) * 8
        if table_bytes > _MAX_TABLE_BYTES:
            raise BudgetError(
                f"exact sampling of {space.backbone.name} at this budget needs {table_bytes / 2**30:.1f} GiB of "
                f"counting tables ({len(space.costs)} blocks, {self.length:,} cost buckets), more than "
                f"{_MAX_TABLE_BYTES / 2**30:.0f} GiB; use a shallower backbone or a smaller budget"
            )
        self.primes = tuple(primes)
        p = np.array(primes, dtype=np.int64)[:, None]
        modulus = math.prod(primes)
        self.modulus = modulus
        self.crt = [(modulus // q) * pow(modulus // q, -1, q) for q in primes]
        n = len(space.costs)
        # tables[i][:, k + 1] = number of ways blocks i.. sum to at most k (mod each prime); tables[n] is blocks "none".
        dist = np.zeros((len(primes), self.length), dtype=np.int64)
        dist[:, 0] = 1
        tables = cast(list[np.ndarray], [None] * (n + 1))  # every entry is filled below
        tables[n] = self._cumulative(dist, p)
        for i in range(n - 1, -1, -1):
            new = np.zeros_like(dist)
            for c in self.rel[i]:
                c = int(c)
                if c < self.length:
                    new[:, c:] += dist[:, : self.length - c]
            dist = new % p
            tables[i] = self._cumulative(dist, p)
        self.tables = tables

    @staticmethod
    def _cumulative(dist: np.ndarray, p: np.ndarray) -> np.ndarray:
        out = np.zeros((dist.shape[0], dist.shape[1] + 1), dtype=np.int64)
        np.cumsum(dist, axis=1, out=out[:, 1:])
        return out % p

    def count_between(self, i: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact number of ways blocks i.. sum into [a, b] (bucket units), elementwise, as Python ints."""
        t = self.tables[i]
        a = np.clip(a, 0, self.length)
        b1 = np.clip(b + 1, 0, self.length)
        b1 = np.maximum(b1, a)
        res = (t[:, b1] - t[:, a]) % np.array(self.primes, dtype=np.int64).reshape((-1,) + (1,) * a.ndim)
        exact = res[0].astype(object) * self.crt[0]
        for k in range(1, len(self.primes)):
            exact = exact + res[k].astype(object) * self.crt[k]
        return exact % self.modulus

    def total(self) -> int:
        if not self.tables:
            return 0
        return int(self.count_between(0, np.array([self.lo_k]), np.array([self.hi_k]))[0])


def reachable_range(
    backbone: str | Backbone,
    metric: str = "params",
    num_classes: int | None = None,
    in_chans: int = 3,
    input_size: int | Sequence[int] | None = None,
    block_types: Sequence[str] | None = None,
) -> tuple[int, int]:
    """The smallest and largest ``metric`` (params or MACs) that a genotype of ``backbone`` can have."""
    return BudgetSpace.build(backbone, metric, num_classes, in_chans, input_size, block_types).reachable


def count_feasible(
    backbone: str | Backbone,
    budget: int | str,
    tolerance: float = 0.025,
    metric: str = "params",
    num_classes: int | None = None,
    in_chans: int = 3,
    input_size: int | Sequence[int] | None = None,
    block_types: Sequence[str] | None = None,
) -> int:
    """The exact number of genotypes whose cost lies within ``tolerance`` of ``budget``."""
    space = BudgetSpace.build(backbone, metric, num_classes, in_chans, input_size, block_types)
    lo, hi = space.window(parse_budget(budget), tolerance)
    return _Counter(space, lo, hi).total()


def sample_genotypes(
    backbone: str | Backbone,
    budget: int | str,
    n: int,
    seed: int = 0,
    tolerance: float = 0.025,
    metric: str = "params",
    num_classes: int | None = None,
    in_chans: int = 3,
    input_size: int | Sequence[int] | None = None,
    block_types: Sequence[str] | None = None,
) -> list[Genotype]:
    """``n`` genotypes drawn independently and exactly uniformly from those within ``tolerance`` of ``budget``.

    Seeded and reproducible; raises BudgetError naming the reachable range when none qualifies.
    """
    budget = parse_budget(budget)
    space = BudgetSpace.build(backbone, metric, num_classes, in_chans, input_size, block_types)
    return sample_space(space, budget, n, seed, tolerance)


def sample_space(
    space: BudgetSpace,
    budget: int,
    n: int,
    seed: int = 0,
    tolerance: float = 0.025,
    accept: Callable[[Genotype], bool] | None = None,
    accept_rule: str = "",
    max_draws: int = 1_000_000,
) -> list[Genotype]:
    """``n`` genotypes drawn exactly uniformly from those of ``space`` whose cost (in the space's integer units)
    lies within ``tolerance`` of ``budget``; with ``accept``, uniformly from those it also accepts.

    ``accept`` works by rejection, which keeps the draw uniform over the intersection; ``accept_rule`` names
    it in the error raised when fewer than ``n`` of ``max_draws`` draws pass.
    """
    if n < 0:
        raise BudgetError(f"number of samples must be >= 0, got {n}")
    lo, hi = space.window(budget, tolerance)
    counter = _Counter(space, lo, hi)
    total = counter.total()
    if total == 0:
        rmin, rmax = space.reachable
        where = (
            "below" if hi < rmin else "above" if lo > rmax else "inside, but no genotype's cost falls in this window"
        )
        num = space.number
        raise BudgetError(
            f"no genotype of {space.backbone.name} has {space.quantity} within {tolerance:.1%} of {num(budget)} "
            f"([{num(lo)}, {num(hi)}]): the reachable range is [{num(rmin)}, {num(rmax)}] ({where}); "
            "choose a budget inside it or widen the tolerance"
        )
    rng = random.Random(f"blockswap-sampler:{seed}")
    if accept is None:
        return _draw(space, counter, total, n, rng)
    kept: list[Genotype] = []
    drawn = 0
    while len(kept) < n:
        if drawn >= max_draws:
            raise BudgetError(
                f"only {len(kept)} of {drawn:,} genotypes within {tolerance:.1%} of {space.number(budget)} "
                f"meet {accept_rule or 'the extra constraint'}, fewer than the {n} asked for; relax one of the two"
            )
        size = min(max(4 * (n - len(kept)), 256, drawn), max_draws - drawn)  # doubling: rare passes cost few rounds
        batch = _draw(space, counter, total, size, rng)
        drawn += len(batch)
        kept += [g for g in batch if accept(g)][: n - len(kept)]
    return kept


def _draw(space: BudgetSpace, counter: _Counter, total: int, n: int, rng: random.Random) -> list[Genotype]:
    """``n`` independent uniform ranks in [0, total), unranked block by block into genotypes."""
    ranks = np.array([rng.randrange(total) for _ in range(n)], dtype=object)
    prefix = np.zeros(n, dtype=np.int64)
    choice = np.zeros((len(space.costs), n), dtype=np.int64)
    for i, rel in enumerate(counter.rel):
        # Completions after choosing each type at block i, given each candidate's running total.
        a = counter.lo_k - prefix[:, None] - rel[None, :]
        b = counter.hi_k - prefix[:, None] - rel[None, :]
        weights = counter.count_between(i + 1, a, b)  # (n, types), exact ints
        cum = np.cumsum(weights, axis=1)
        pick = (cum > ranks[:, None]).argmax(axis=1)
        below = np.where(pick > 0, cum[np.arange(n), np.maximum(pick - 1, 0)], 0)
        ranks = ranks - np.where(pick > 0, below, 0)
        prefix += rel[pick]
        choice[i] = pick
    return [
        Genotype(space.backbone.name, tuple(space.types[i][choice[i, j]] for i in range(len(space.types))))
        for j in range(n)
    ]
