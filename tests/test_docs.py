"""Generated docs (README sections, MODEL_CARD.md, cards, the Pareto plot's data) stay in sync with the
pretrained records; hubconf exposes one entrypoint per record."""

import importlib.util
import json
import re
from pathlib import Path

import torch

from blockswap_zoo.cards import model_card, update_readme, zoo_model_card
from blockswap_zoo.pretrained import load_records

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_and_model_card_match_the_records() -> None:
    readme = (ROOT / "README.md").read_text()
    assert update_readme(readme) == readme, "README table is stale: run `blockswap-zoo docs`"
    assert (ROOT / "MODEL_CARD.md").read_text() == zoo_model_card() + "\n", "run `blockswap-zoo docs`"
    for w in load_records().values():  # each checkpoint's card, from its config.json
        folder = ROOT / Path(w.file).parent
        card = model_card(w.name, json.loads((folder / "config.json").read_text()))
        assert (folder / "README.md").read_text() == card, f"{folder}/README.md is stale: run `blockswap-zoo docs`"
        assert "in fp32 on " in card and "(hardware not recorded)" not in card


def test_hubconf_entrypoints_are_the_records() -> None:
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch", "safetensors"]
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entries == {w.hub_entrypoint for w in load_records().values()}
    for w in load_records().values():  # the same path torch.hub.load(..., source="local") takes
        model = torch.hub.load(str(ROOT), w.hub_entrypoint, source="local", pretrained=True)
        assert model.num_classes == w.num_classes


def test_readme_use_a_model_snippet_runs_as_written() -> None:
    block = (ROOT / "README.md").read_text().split("## Use a model")[1].split("```python")[1].split("```")[0]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["g"].num_params(num_classes=10, in_chans=3) == 476_986 and scope["model"].num_classes == 100


def test_docs_check_sees_a_hand_edited_checkpoint_card(tmp_path: Path) -> None:
    import shutil

    from blockswap_zoo.cards import stale_docs

    for name in ("README.md", "MODEL_CARD.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "weights", tmp_path / "weights")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    assert stale_docs(tmp_path) == []
    card = tmp_path / "weights" / "wrn_40_2.fmnist" / "README.md"
    card.write_text(card.read_text().replace("top-1", "top-1 (99.99!)", 1))
    assert stale_docs(tmp_path) == [card]


def test_the_docs_command_reads_and_writes_the_checkout_it_is_given(tmp_path: Path) -> None:
    """``blockswap-zoo docs`` works on this checkout by default and on another with --repo (writing only there);
    a folder that is not a checkout is refused."""
    import shutil

    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["docs", "--check"])
    assert res.exit_code == 0 and "up to date" in res.output, res.output
    for name in ("README.md", "MODEL_CARD.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "weights", tmp_path / "weights")
    card = tmp_path / "weights" / "wrn_40_2.fmnist" / "README.md"
    card.write_text("stale")  # and no docs/ folder: the plot and its data are written too
    res = runner.invoke(app, ["docs", "--check", "--repo", str(tmp_path)])
    assert res.exit_code == 1 and "out of date" in res.output
    res = runner.invoke(app, ["docs", "--repo", str(tmp_path)])
    assert res.exit_code == 0 and card.read_text() != "stale"
    assert (tmp_path / "docs" / "zoo_pareto.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "docs" / "zoo_pareto.json").read_text() == (ROOT / "docs" / "zoo_pareto.json").read_text()
    assert (ROOT / "weights" / "wrn_40_2.fmnist" / "README.md").read_text() == card.read_text()
    res = runner.invoke(app, ["docs", "--repo", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "not a blockswap-zoo checkout" in " ".join(res.output.split())


def test_every_script_the_docs_name_exists() -> None:
    """A benchmark or tool named in the README or the docs is in the checkout (``git show SHA:path`` aside)."""
    named = set()
    for doc in ("README.md", "MODEL_CARD.md", "docs/benchmarks.md", "studies/README.md", "searches/README.md"):
        named |= set(re.findall(r"(?<![:\w/])((?:benchmarks|tools)/\w+\.(?:py|sh))", (ROOT / doc).read_text()))
    assert named and sorted(p for p in named if not (ROOT / p).is_file()) == []
