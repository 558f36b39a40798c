"""One writer per run or report directory: a second training, reproduce run or search on a directory that
another process writes is refused at once, naming the holder's PID, and changes nothing there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockswap_zoo.dir_lock import DirectoryBusyError, lock_directory
from blockswap_zoo.recipe import load_recipe
from blockswap_zoo.reproduce import reproduce
from blockswap_zoo.search import run_search
from blockswap_zoo.search.runner import ReportError
from blockswap_zoo.train import TrainConfig, train

HOLD = "import sys, time\nfrom blockswap_zoo.dir_lock import lock_directory\nwith lock_directory(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"


def _held_by_another_process(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_names_its_holder_and_leaves_no_trace(tmp_path: Path) -> None:
    proc = _held_by_another_process(tmp_path / "run")
    try:
        with pytest.raises(DirectoryBusyError, match=f"process {proc.pid} .*kill {proc.pid}"):
            with lock_directory(tmp_path / "run"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with lock_directory(tmp_path / "run"):  # a killed holder releases it at once
        pass
    assert list((tmp_path / "run").iterdir()) == []  # nothing is added to the folder
    with lock_directory(tmp_path / "new" / "dir"):
        pass
    assert not (tmp_path / "new").exists()  # folders it made and left empty are removed again


def test_a_second_training_on_a_run_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(arch="wrn_10_1", dataset="fashion_mnist", epochs=1, batch_size=32, subset=64, eval_subset=32,
                      progress=False, device="cpu")  # fmt: skip
    with lock_directory(out):  # another writer: a second open of the folder conflicts even in one process
        with pytest.raises(DirectoryBusyError, match=f"process {os.getpid()}"):
            train(cfg, out_dir=out, force=True)
        assert list(out.iterdir()) == []
    train(cfg, out_dir=out)
    assert (out / "model.safetensors").is_file()


def test_a_second_search_on_a_report_is_refused(tmp_path: Path) -> None:
    report = tmp_path / "search"
    with lock_directory(report):
        with pytest.raises(ReportError, match=f"process {os.getpid()}"):
            run_search("wrn_10_1", "20k", samples=2, seed=5, threads=1, report_dir=report, force=True)
        assert list(report.iterdir()) == []


def test_a_second_reproduce_on_a_run_is_refused(tmp_path: Path) -> None:
    recipe = load_recipe("wrn_40_2_bs400k.fmnist_at")
    run = tmp_path / "run"
    with lock_directory(run):
        with pytest.raises(DirectoryBusyError, match=f"process {os.getpid()}"):
            reproduce(recipe, run, max_steps=1, device="cpu")
        assert list(run.iterdir()) == []
