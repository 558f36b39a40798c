"""Reuse the blocks of scored candidates to build the next ones, with the weights a fresh build gets.

A search builds a thousand networks from the same few dozen kinds of block. ``BlockPool`` keeps
the blocks of the networks it built (a few networks' worth) and hands them to later ones that need
a block of the same kind (class and parts) instead of constructing new modules. A reused block is re-initialised where a new one
would have been constructed, by calling ``reset_parameters`` of its modules in construction
order on contiguous CPU fp32 tensors, so the seeded random stream, and with it every weight, is
the same as ``build_model``'s: the network is equal to a fresh build, bit for bit
(``tests/test_block_pool.py``). Only the Python work of constructing modules is saved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import NamedTuple

import torch
from torch import nn

from ..backbones import Part
from ..genotype import Genotype
from ..models import SwapNet, build_model

__all__ = ["BlockPool"]

BlockKey = tuple[type[nn.Module], Hashable]


def _block_key(block_class: type[nn.Module], parts: dict[str, Part]) -> BlockKey:
    """Blocks with equal keys have the same modules, shapes and construction order."""
    frozen = tuple((name, tuple((part, tuple(plan)) for part, plan in part_list)) for name, part_list in parts.items())
    return block_class, frozen


class _Entry(NamedTuple):
    """A block, its ``modules()`` in order, their classes as constructed (scoring may swap them), and
    the number of the build that last used it."""

    block: nn.Module
    modules: tuple[nn.Module, ...]
    classes: tuple[type[nn.Module], ...]
    released: int


def _reinitialise(entry: _Entry) -> None:
    """Put a block in the state a fresh construction leaves it in.

    ``reset_parameters`` overwrites every tensor of its module and draws the same random numbers
    as construction did, provided the tensors are contiguous CPU tensors of the default dtype
    (random fills depend on memory layout): scoring may have moved them, so they get new storage.
    """
    for module, cls in zip(entry.modules, entry.classes):
        if type(module) is not cls:
            module.__class__ = cls
        module.__dict__["training"] = True  # as nn.Module.__setattr__ stores it, without its checks (hot loop)
        reset = getattr(module, "reset_parameters", None)
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is None:
                    continue
                dtype = torch.get_default_dtype() if t.is_floating_point() else t.dtype
                if t.device.type != "cpu" or t.dtype != dtype or t.stride() != _dense_strides(t.shape):
                    # nothing to copy where reset_parameters overwrites the values anyway
                    t.data = torch.empty(t.shape, dtype=dtype) if reset else t.data.to("cpu", dtype).contiguous()
                if name in module._parameters:
                    t.requires_grad_(True)
                    t.grad = None
        if reset is not None:
            reset()


def _dense_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a new (row-major) tensor of ``shape``; size-1 dims make several layouts "contiguous"."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


class BlockPool:
    """Builds networks like ``build_model``, reusing the blocks of the networks built before.

    Building a network takes back the previous one's blocks: use a network only until the next
    ``build`` of the same pool. Unused blocks are kept, the least recently used dropped first, up
    to ``capacity_networks`` networks' worth of blocks. One pool per process (not thread-safe).
    """

    def __init__(self, capacity_networks: int = 8) -> None:
        self.capacity_networks = capacity_networks
        self._free: defaultdict[BlockKey, list[_Entry]] = defaultdict(list)  # oldest first
        self._lent: list[tuple[BlockKey, _Entry]] = []
        self._builds = 0

    def build(self, genotype: Genotype, num_classes: int | None = None, in_chans: int = 3) -> SwapNet:
        """The network ``build_model(genotype, num_classes, in_chans)`` returns under the same RNG state."""
        self._take_back(len(genotype.blocks))
        self._builds += 1
        return build_model(genotype, num_classes, in_chans, make_block=self._make_block)

    def _take_back(self, blocks_per_network: int) -> None:
        """Return the last network's blocks to the pool; drop the least recently used beyond capacity."""
        for key, entry in self._lent:
            self._free[key].append(entry)
        self._lent.clear()
        excess = sum(len(v) for v in self._free.values()) - self.capacity_networks * blocks_per_network
        while excess > 0:  # each list is oldest first; the lists' heads are the candidates to drop
            key = min((k for k, v in self._free.items() if v), key=lambda k: self._free[k][0].released)
            self._free[key].pop(0)
            excess -= 1

    def _make_block(self, block_class: type[nn.Module], parts: dict[str, Part]) -> nn.Module:
        key = _block_key(block_class, parts)
        free = self._free[key]
        if free:
            entry = free.pop()  # the most recently used
            _reinitialise(entry)
        else:
            block = block_class(parts)
            modules = tuple(block.modules())  # kept, so reuse does not walk the module tree again
            entry = _Entry(block, modules, tuple(type(m) for m in modules), 0)
        self._lent.append((key, entry._replace(released=self._builds)))
        return entry.block
