"""The package as users get it from pip: the built wheel, installed into a fresh virtual environment (one that
sees the already-installed torch), works from outside any checkout: listing and describing published weights,
a recipe found by name (package data), and a pretrained load from the cache, sha256-verified, offline."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from blockswap_zoo.pretrained import load_records

ROOT = Path(__file__).resolve().parents[1]
NAME = "wrn_40_2_bs400k.fmnist_at"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(args)}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(venv bin folder, a working folder outside the checkout, the environment to run in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "blockswap_zoo", source / "blockswap_zoo", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
         tmp, env)  # fmt: skip
    (wheel,) = dist.glob("blockswap_zoo-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp, env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    # --system-site-packages shows the base interpreter's packages; inside a virtualenv torch lives in the
    # running environment's: put those folders on the new venv's path too, after its own (where the wheel goes)
    inner = _run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(inner.strip()) / "running_environment.pth").write_text("".join(f"{p}\n" for p in sorted(outer)))
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp, env)
    work = tmp / "elsewhere"
    work.mkdir()
    w = load_records()[NAME]  # the weights are not in the wheel: a pip install caches them once; put them there
    cache = tmp / "cache"
    (cache / NAME).mkdir(parents=True)
    shutil.copy(ROOT / w.file, cache / NAME / Path(w.file).name)
    env |= {"BLOCKSWAP_ZOO_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HOME": str(tmp)}
    return bin_dir, work, env


@pytest.mark.slow
def test_the_installed_wheel_runs_outside_a_checkout(installed: tuple[Path, Path, dict[str, str]]) -> None:
    bin_dir, work, env = installed
    python, cli = str(bin_dir / "python"), str(bin_dir / "blockswap-zoo")
    where = _run([python, "-c", "import blockswap_zoo, blockswap_zoo.pretrained as p; "
                  "print(blockswap_zoo.__file__, p.is_checkout())"], work, env).split()  # fmt: skip
    assert Path(where[0]).is_relative_to(bin_dir.parent) and where[1] == "False", where
    listed = json.loads(_run([cli, "list", "--pretrained", "--json"], work, env))
    assert NAME in {row["name"] for row in listed}
    info = json.loads(_run([cli, "info", NAME, "--json"], work, env))
    assert (info["name"], info["input_size"]) == (NAME, [1, 28, 28])
    plan = _run([cli, "reproduce", NAME, "--dry-run", "--out", str(work / "run")], work, env)
    assert "wrn_40_2_bs400k.fmnist_at" in plan and not (work / "run").exists()
    shipped = _run([cli, "reproduce", f"recipes/{NAME}.yaml", "--dry-run", "--out", str(work / "run")], work, env)
    assert shipped == plan  # the reference a record carries works installed too
    loaded = _run([python, "-c", f"import blockswap_zoo as z; m = z.create_model({NAME!r}, pretrained=True); "
                   "print(m.pretrained_cfg['sha256'], sum(p.numel() for p in m.parameters()))"], work, env).split()  # fmt: skip
    assert loaded == [load_records()[NAME].sha256, str(load_records()[NAME].params)]
