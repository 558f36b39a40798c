"""Bounds on what a user gives, shared by every parser that takes it: seeds, settings files.

Each bound is far above any real use and below what would make a run fail late or exhaust memory.
"""

from __future__ import annotations

__all__ = ["MAX_SEED", "MAX_SETTINGS_BYTES", "MAX_SETTINGS_DEPTH", "check_seed"]

MAX_SEED = 2**63 - 1  # torch.manual_seed's generator takes a signed 64-bit seed
MAX_SETTINGS_BYTES = 1 << 20  # a recipe or --config file: the shipped ones are about 2 KB
MAX_SETTINGS_DEPTH = 32  # nesting of lists and mappings in such a file: the recipe schema needs 3


def check_seed(seed: object) -> int:
    """``seed`` itself if it is a whole number in 0..2**63-1; ValueError stating the range if not."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"must be a whole number in 0..2**63-1, got {seed!r}")
    return seed
