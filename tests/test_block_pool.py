"""BlockPool: networks built from reused blocks equal fresh builds bit for bit, and scores do too."""

from __future__ import annotations

import torch
from torch import nn

from blockswap_zoo.genotype import Genotype
from blockswap_zoo.models import build_model
from blockswap_zoo.search import mode_config, sample_genotypes, score_genotype
from blockswap_zoo.search.block_pool import BlockPool
from blockswap_zoo.search.cpu.layers import adapt_for_cpu_scoring
from blockswap_zoo.search.scoring import candidate_seed
from blockswap_zoo.search.workers import score_candidates


def _assert_same_network(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
        assert sa[key].stride() == sb[key].stride(), key  # the layout random fills follow
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    assert a.training and b.training
    assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]


def _use_as_scoring_does(model: nn.Module, in_chans: int, size: int) -> None:
    """What a scored network goes through: CPU layers, channels_last, a train-mode pass, no grads."""
    model.requires_grad_(False)
    adapt_for_cpu_scoring(model)
    model.to(memory_format=torch.channels_last)
    model(torch.randn(4, in_chans, size, size).contiguous(memory_format=torch.channels_last))
    model.eval().double()  # whatever a caller did to it, the pool restores a fresh block's state


def test_pool_builds_equal_fresh_builds_and_reuses_blocks() -> None:
    pool = BlockPool()
    genotypes = sample_genotypes("wrn_16_2", "60k", 12, seed=3, tolerance=0.2)
    genotypes.append(genotypes[0])  # the same network twice in a row: every block is reused
    reused = 0
    previous: set[int] = set()
    for i, g in enumerate(genotypes):
        torch.manual_seed(i)
        fresh = build_model(g, num_classes=10, in_chans=3)
        torch.manual_seed(i)
        pooled = pool.build(g, num_classes=10, in_chans=3)
        _assert_same_network(fresh, pooled)
        blocks = {id(b) for b in pooled.swap_blocks()}
        reused += len(blocks & previous)
        previous |= blocks
        _use_as_scoring_does(pooled, 3, 32)
    assert reused >= len(genotypes[0].block_types)  # at least the repeated network came from the pool


def test_pool_builds_resnets_too() -> None:
    pool = BlockPool()
    names = (["S", "G(N)", "B(2)", "BG(2,M/4)"] * 4)[:8]
    genotypes = [Genotype("resnet18", tuple(names)), Genotype("resnet18", tuple(reversed(names)))]
    for i, g in enumerate(genotypes * 2):
        torch.manual_seed(i)
        fresh = build_model(g, num_classes=10)
        torch.manual_seed(i)
        pooled = pool.build(g, num_classes=10)
        _assert_same_network(fresh, pooled)
        _use_as_scoring_does(pooled, 3, 32)


def test_search_scores_with_reused_blocks_equal_fresh_ones() -> None:
    genotypes = sample_genotypes("wrn_10_1", "20k", 6, seed=1)
    genotypes += genotypes[:2]
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    cfg = mode_config("exact", num_threads=1)  # one thread for both: fp32 sums depend on the thread count
    jobs = [(i, g.to_string(), 0, 0, candidate_seed(9, i)) for i, g in enumerate(genotypes)]
    pooled = [c.score for c in score_candidates(jobs, x, y, cfg, 10, 3)]  # one pool for the loop
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fresh = [score_genotype(g, x, y, candidate_seed(9, i), cfg, 10, 3) for i, g in enumerate(genotypes)]
    finally:
        torch.set_num_threads(threads)
    assert pooled == fresh


def test_the_pool_keeps_a_bounded_number_of_blocks() -> None:
    pool = BlockPool(capacity_networks=2)
    genotypes = sample_genotypes("wrn_16_2", "60k", 30, seed=4, tolerance=0.3)
    for g in genotypes:
        pool.build(g, num_classes=10, in_chans=3)
    kept = sum(len(v) for v in pool._free.values())
    assert kept <= 2 * len(genotypes[0].blocks)
