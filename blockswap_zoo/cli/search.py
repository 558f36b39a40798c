"""``blockswap-zoo search``: the Typer command (thin: it parses, shows progress and calls run_search)."""

from __future__ import annotations

import dataclasses
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
    from ..latency.budget import LatencyBudget
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
    budget: str | None = typer.Argument(
        None, help="Parameter budget, e.g. 200k, 811k, 1.5m (MACs with --macs); or leave out and give --latency."
    ),
    samples: int = typer.Option(1000, "--samples", "-n", help="Number of candidates to score."),
    macs: bool = typer.Option(False, "--macs", help="The budget counts multiply-accumulates, not parameters."),
    tolerance: float = typer.Option(0.025, help="Accepted relative distance from the budget (0.025: +-2.5%)."),
    latency: str | None = typer.Option(
        None,
        help="Latency budget instead of BUDGET, e.g. 2.5ms or 800us: predicted by this machine's latency table "
        "for --device and --batch (measured first if missing), and the winner measured at the end.",
    ),
    latency_batch: int = typer.Option(1, "--batch", help="Batch size the --latency budget is for."),
    latency_dtype: str = typer.Option("float32", help="dtype the --latency budget is for: float32, bfloat16, float16."),
    latency_table: Path | None = typer.Option(None, help="Latency table file (default: the cache's, per device)."),
    max_params: str | None = typer.Option(None, help="With --latency: a parameter cap as well, e.g. 400k."),
    latency_settle: float = typer.Option(
        30.0, help="Seconds of rest before the winner's latency is measured (a CPU just busy scoring runs slower)."
    ),
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
    from ..latency import LatencyError
    from ..search import BudgetError, ReportError, run_search

    if resume and force:
        _fail("--resume and --force contradict each other; pass one")
    types = None if block_types is None else _split_block_types(block_types)
    try:
        n_budget, target = _budgets(
            budget, latency, macs, max_params, device, latency_batch, latency_dtype, latency_table
        )
        if target is not None:
            if latency_settle < 0:
                raise LatencyError(f"--latency-settle must be >= 0 seconds, got {latency_settle}")
            target = dataclasses.replace(target, settle_seconds=latency_settle)
    except (BudgetError, LatencyError) as e:
        _fail(str(e))
    if out is None:
        what = f"{budget.strip().lower()}{'-macs' if macs else ''}" if budget else latency.strip().lower()  # type: ignore[union-attr]
        out = Path(f"search-{backbone}-{what}-s{seed}")
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
                latency=target,
                device=device,
                workers=workers,
                threads=threads,
                report_dir=out,
                resume=resume,
                force=force,
                progress=on_progress,
                log=lambda line: progress.console.print(f"scoring: {line}", highlight=False, soft_wrap=True),
            )
    except (BudgetError, ReportError, DatasetError, DatasetNotFoundError, LatencyError, ValueError) as e:
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


def _budgets(
    budget: str | None,
    latency: str | None,
    macs: bool,
    max_params: str | None,
    device: str,
    batch: int,
    dtype: str,
    table: Path | None,
) -> tuple[int | None, LatencyBudget | None]:
    """The parameter (or MAC) budget, or the latency budget: exactly one, checked before any work starts."""
    from ..latency import LatencyError, parse_latency
    from ..latency.budget import LatencyBudget
    from ..latency.device import MeasureSetting
    from ..search import parse_budget

    if latency is None:
        if budget is None:
            raise LatencyError("give a BUDGET (e.g. 400k parameters) or a latency budget (--latency 2.5ms)")
        if max_params is not None:
            raise LatencyError("--max-params caps parameters under a --latency budget; with BUDGET it is not needed")
        return parse_budget(budget), None
    if budget is not None or macs:
        raise LatencyError(
            f"give either BUDGET ({budget or '--macs'}) or --latency {latency}, not both; cap parameters under a "
            "latency budget with --max-params"
        )
    from ..train.distributed import resolve_device

    try:
        resolve_device(device)  # tpu, cpu:zz or a missing GPU: named with the fix, before anything is measured
    except ValueError as e:
        raise LatencyError(f"--device: {e}") from None
    where = "cuda" if device == "auto" and _cuda() else "cpu" if device == "auto" else device
    MeasureSetting.here(where, batch, dtype)  # names a bad device, batch or dtype now
    cap = None if max_params is None else parse_budget(max_params)
    return None, LatencyBudget(parse_latency(latency), where, batch, dtype, None if table is None else str(table), cap)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
    lat = result.extra.get("latency")
    if lat:
        console.print(
            f"latency: budget {lat['budget_ms']:.3f} ms, predicted {lat['predicted_ms']:.3f} ms, measured "
            f"{lat['measured_ms']:.3f} ms ({lat['measured_vs_budget_pct']:+.1f}% from the budget) on "
            f"{lat['measured_on']}",
            highlight=False,
            soft_wrap=True,
        )
    rate = result.rescored / result.seconds if result.seconds > 0 else 0.0
    console.print(
        f"{len(result.candidates)} candidates ({result.rescored} scored now, {rate:.2f}/s); report: {out}",
        highlight=False,
    )
