"""``blockswap-zoo search``: the Typer command (thin: it parses, shows progress and calls run_search)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .output import console, err_console, fail

if TYPE_CHECKING:
    from ..search import SearchResult

__all__ = ["search"]


def _fail(message: str) -> None:
    fail(message)


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def _split_block_types(text: str) -> list[str]:
    """``'S,G(4),BG(2,M/4)'`` -> the names; commas inside parentheses belong to a name (``;`` also separates)."""
    return [t.strip() for t in re.split(r"[,;](?![^()]*\))", text) if t.strip()]


def search(
    backbone: str = typer.Argument(..., help="Backbone or teacher arch: wrn_40_2, wrn_16_2, resnet34, ..."),
    budget: str = typer.Argument(..., help="Parameter budget, e.g. 200k, 811k, 1.5m (MACs with --macs)."),
    samples: int = typer.Option(1000, "--samples", "-n", help="Number of candidates to score."),
    macs: bool = typer.Option(False, "--macs", help="The budget counts multiply-accumulates, not parameters."),
    tolerance: float = typer.Option(0.025, help="Accepted relative distance from the budget (0.025: +-2.5%)."),
    proxy: str = typer.Option("fisher", help="Score: fisher, grad_norm, snip, synflow, naswot."),
    mode: str = typer.Option(
        "auto",
        help="fast (a 64-image sub-batch, in bf16 where the CPU has native bf16, else fp32), exact (fp32, the "
        "definition's values), or auto: fast on CPUs, exact on GPUs. The search prints which it runs and why. "
        "Scores compare within one mode, precision and batch size only (the loss is a batch mean).",
    ),
    dataset: str = typer.Option(
        "embedded", help="embedded (128 Fashion-MNIST images shipped with the package), fashion_mnist, cifar10, ..."
    ),
    data_dir: Path | None = typer.Option(None, help="Where the dataset lives (default: the data module's search)."),
    batch_size: int = typer.Option(128, help="Minibatch size (the embedded batch has 128)."),
    block_types: str | None = typer.Option(
        None, help="Block types to sample, separated by commas, e.g. 'S,G(4),BG(2,M/4)' (default: the 23)."
    ),
    seed: int = typer.Option(0, help="Seed of the candidates, the minibatch and the inits."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto (cuda when available)."),
    workers: str = typer.Option(
        "auto",
        help="Scoring processes, or auto: on a CPU one per core (up to 8, at least 20 candidates each); "
        "on a GPU 8 under NVIDIA MPS (`nvidia-cuda-mps-control -d`), else 1, as processes sharing a GPU "
        "without MPS gain little. Exact mode's scores do not depend on it; fast mode's bf16 ones move "
        "with the torch threads per process.",
    ),
    threads: int | None = typer.Option(
        None, help="torch threads per process (default: torch's, or 1 when other jobs keep the CPU busy)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report directory (default: search-<arch>-<budget>-s<seed>)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the search in --out, skipping scored candidates."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report in --out."),
) -> None:
    """Search random students within a budget for the highest Fisher potential; write a report directory."""
    from ..data import DatasetError, DatasetNotFoundError
    from ..search import BudgetError, ReportError, parse_budget, run_search

    if resume and force:
        _fail("--resume and --force contradict each other; pass one")
    types = None if block_types is None else _split_block_types(block_types)
    try:
        n_budget = parse_budget(budget)
    except BudgetError as e:
        _fail(str(e))
    if out is None:
        out = Path(f"search-{backbone}-{budget.strip().lower()}{'-macs' if macs else ''}-s{seed}")
    progress, on_progress = _progress_bar()
    try:
        with progress:
            result = run_search(
                backbone,
                n_budget,
                samples,
                proxy=proxy,
                mode=mode,
                dataset=dataset,
                data_dir=data_dir,
                batch_size=batch_size,
                seed=seed,
                metric="macs" if macs else "params",
                tolerance=tolerance,
                block_types=types,
                device=device,
                workers=workers,
                threads=threads,
                report_dir=out,
                resume=resume,
                force=force,
                progress=on_progress,
                log=lambda line: progress.console.print(f"scoring: {line}", highlight=False, soft_wrap=True),
            )
    except (BudgetError, ReportError, DatasetError, DatasetNotFoundError, ValueError) as e:
        _fail(str(e))
    except OSError as e:  # e.g. --out under a file, or somewhere not writable
        _fail(f"cannot write the report to {out}: {e.strerror or e} ({e.filename or out}); choose another --out")
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted; the scored candidates are saved in {out}: rerun the same command with --resume"
        )
        raise typer.Exit(130) from None
    if _rank() == 0:  # under torchrun, rank 0 shows the winner
        _print_winner(result, out)


def _progress_bar() -> tuple[Progress, Callable[[int, int], None]]:
    """The scoring progress bar (rank 0 only) and the callback run_search reports to, with candidates/s."""
    progress = Progress(
        TextColumn("[bold]scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=_rank() != 0,  # under torchrun, rank 0 shows progress
    )
    state: dict[str, float] = {}

    def on_progress(done: int, total: int) -> None:
        if "task" not in state:
            state["task"] = progress.add_task("scoring", total=total, completed=done, rate="")
            state["t0"], state["d0"] = time.perf_counter(), done
        dt = time.perf_counter() - state["t0"]
        rate = (done - state["d0"]) / dt if dt > 0 and done > state["d0"] else 0.0
        progress.update(TaskID(int(state["task"])), completed=done, rate=f"{rate:.2f} cand/s" if rate else "")

    return progress, on_progress


def _print_winner(result: SearchResult, out: Path) -> None:
    """The winner block by block with its costs, its score and compact genotype, and the report's place."""
    s = result.settings
    g = result.winner
    hw = s.input_size[1:]
    table = Table("#", "stage", "block", "params", "MACs", title=f"winner: candidate {result.winner_index}")
    for slot, b, (p, m) in zip(g.backbone_spec.slots(hw), g.blocks, g.block_costs(hw)):
        table.add_row(str(slot.index), str(slot.stage), b, f"{p:,}", f"{m / 1e6:.2f}M")
    console.print(table)
    console.print(
        f"params {result.params:,}  MACs {result.macs / 1e6:.1f}M  ({s.in_chans}x{hw[0]}x{hw[1]}, "
        f"{s.num_classes} classes)  {s.proxy} ({s.mode} mode) {result.score:.6g}"
    )
    console.print(f"compact: {g.to_string()}", highlight=False, soft_wrap=True)
    rate = result.rescored / result.seconds if result.seconds > 0 else 0.0
    console.print(
        f"{len(result.candidates)} candidates ({result.rescored} scored now, {rate:.2f}/s); report: {out}",
        highlight=False,
    )
