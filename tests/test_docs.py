"""Generated docs stay in sync with the pretrained records; hubconf exposes one entrypoint per record."""

from pathlib import Path

import torch

from blockswap_zoo.cards import update_readme, zoo_model_card
from blockswap_zoo.pretrained import load_records

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_and_model_card_match_the_records() -> None:
    readme = (ROOT / "README.md").read_text()
    assert update_readme(readme) == readme, "README table is stale: run `blockswap-zoo docs`"
    assert (ROOT / "MODEL_CARD.md").read_text() == zoo_model_card() + "\n", "run `blockswap-zoo docs`"


def test_hubconf_entrypoints_are_the_records() -> None:
    entries = set(torch.hub.list(str(ROOT), source="local", trust_repo=True))
    assert entries == {w.hub_entrypoint for w in load_records().values()}
