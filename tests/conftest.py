"""Shared test settings: small thread count so parallel test runs on 2 cores stay predictable."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The shared reference facts (genotype CSVs); tests that need them skip loudly without them."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference facts not found at {REFERENCE_DIR}")
    return REFERENCE_DIR
