"""``blockswap-zoo reproduce``: one recipe into its run directory, or several at once on one device."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.live import Live
from rich.table import Table

from .output import console, err_console, fail

if TYPE_CHECKING:
    from ..recipe import Recipe
    from ..reproduce_many import RunState


def reproduce_cmd(
    recipes: list[str] = typer.Argument(..., help="Recipe files, or names of shipped recipes (see recipes/)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Run directory (default: runs/<recipe name>); with several recipes, the folder of their runs "
        "(default: runs/).",
    ),  # fmt: skip
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    force: bool = typer.Option(False, "--force", help="Delete --out and start over (one recipe only)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan and its cost, run nothing."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Smoke run: at most N optimiser steps per stage."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    search_only: bool = typer.Option(
        False, "--search-only", help="Run the student search alone (a later --resume trains after it)."
    ),
    jobs: int = typer.Option(
        1,
        "--jobs",
        "-j",
        help="With several recipes: how many run at once, each in its own process (on a GPU, "
        "under NVIDIA MPS: `nvidia-cuda-mps-control -d`). Runs always resume.",
    ),  # fmt: skip
    searches: Path | None = typer.Option(
        None,
        "--searches",
        help="With several recipes: a folder of finished search reports (SEARCHES/<recipe name>/), "
        "copied into runs that have not searched yet, after checking their settings.",
    ),  # fmt: skip
    group: int = typer.Option(
        4,
        "--group",
        help="With several recipes: students that distil from the same teacher with the same data and schedule "
        "train N to a process, the teacher run once per batch for all of them (1: each in its own).",
    ),  # fmt: skip
    together: bool = typer.Option(
        False,
        "--together",
        help="Train these recipes' students in this one process (what --group starts): each run in "
        "OUT/<recipe name>, resumed.",
    ),  # fmt: skip
) -> None:
    """Rebuild checkpoints from their recipes; exit 1 if a measured metric misses its recipe's expectation."""
    from ..recipe import load_recipe

    try:
        loaded = [load_recipe(r) for r in recipes]
    except ValueError as e:
        fail(str(e))
    if group < 1 or jobs < 1:  # before anything is written, and refused by --dry-run too
        fail(f"--jobs and --group must be >= 1, got --jobs {jobs} --group {group}")
    if together:
        if force or search_only or dry_run:
            fail("--together trains the given runs as they are: drop --force, --search-only and --dry-run")
        _together(loaded, out or Path("runs"), max_steps, device)
    elif len(loaded) == 1 and jobs == 1 and searches is None:
        _one(loaded[0], out, resume, force, dry_run, max_steps, device, search_only)
    else:
        if force or search_only:
            fail("--force and --search-only take one recipe; several recipes always resume their runs")
        _many(loaded, out or Path("runs"), jobs, dry_run, max_steps, device, searches, group)


def _together(recipes: list[Recipe], out: Path, max_steps: int | None, device: str) -> None:
    """Students of several recipes trained in one pass of the teacher; each line of the result names its recipe."""
    from ..reproduce import reproduce_together

    try:
        results = reproduce_together(recipes, [out / r.name for r in recipes], True, max_steps, device)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    for result in results:
        console.print(result.message, highlight=False)
    if any(result.passed is False for result in results):
        raise typer.Exit(1)


def _one(
    r: Recipe,
    out: Path | None,
    resume: bool,
    force: bool,
    dry_run: bool,
    max_steps: int | None,
    device: str,
    search_only: bool,
) -> None:
    from ..reproduce import check_run_dir, plan, preflight
    from ..reproduce import reproduce as run

    try:
        run_dir = out or Path("runs") / r.name
        if dry_run:
            preflight(r, max_steps)  # what the run would refuse, refused by the dry run too
            check_run_dir(r, run_dir, resume, force, max_steps)
            print(json.dumps(plan(r), indent=2))
            return
        result = run(r, run_dir, resume=resume, force=force, max_steps=max_steps, device=device,
                     search_only=search_only)  # fmt: skip
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    console.print(result.message, highlight=False)
    console.print(f"{'search report' if search_only else 'checkpoint'}: {result.checkpoint_dir}")
    if result.passed is False:
        raise typer.Exit(1)


def _many(
    recipes: list[Recipe],
    out: Path,
    jobs: int,
    dry_run: bool,
    max_steps: int | None,
    device: str,
    searches: Path | None,
    group: int,
) -> None:
    from ..reproduce import check_run_dir, preflight
    from ..reproduce_many import link_shared_teachers, plan_runs, run_many, seed_searches, shared_teacher_of

    try:
        phases = plan_runs(recipes)
        for r in recipes:
            preflight(r, max_steps)
            if (out / r.name).is_symlink():
                raise FileExistsError(
                    f"{out / r.name} is a symbolic link; each run is written in a folder of its own under --out: "
                    "remove the link or use another --out"
                )
            check_run_dir(r, out / r.name, True, False, max_steps)
        if searches is not None and not searches.is_dir():
            raise FileNotFoundError(f"--searches {searches} is not a folder of search reports")
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    for i, phase in enumerate(phases, 1):
        names = ", ".join(
            r.name + (f" (teacher from {p.name})" if (p := shared_teacher_of(r, recipes)) else "") for r in phase
        )
        console.print(f"phase {i}: {names}", highlight=False)
    if dry_run:
        return
    _warn_without_mps(jobs, device)
    try:
        if searches is not None:
            for name, report in seed_searches(recipes, searches, out).items():
                console.print(f"{name}: search taken from {report}", highlight=False)
    except (ValueError, OSError) as e:
        fail(str(e))
    link_shared_teachers(recipes, out)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the runs as Ctrl-C does: none is left running
    try:
        if sys.stdout.isatty():
            with Live(console=console, refresh_per_second=1) as live:
                runs = run_many(recipes, out, jobs, device, max_steps, group=group,
                                on_tick=lambda rs: live.update(_table(rs)))  # fmt: skip
        else:
            runs = run_many(recipes, out, jobs, device, max_steps, group=group, on_tick=_print_changes())
    except KeyboardInterrupt:
        err_console.print(f"interrupted; the runs in {out} are stopped: rerun the same command to resume them")
        raise typer.Exit(130) from None
    except ValueError as e:
        fail(str(e))
    console.print(_table(runs))
    if any(run.state != "done" for run in runs):
        bad = [run for run in runs if run.state != "done"]
        missed_only = all(run.state == "missed" for run in bad)
        err_console.print(
            f"{len(bad)} of {len(runs)} runs did not pass; logs: <run>/reproduce.log (a group's in its first run)",
            highlight=False,
        )
        raise typer.Exit(1 if missed_only else 2)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _warn_without_mps(jobs: int, device: str) -> None:
    import torch

    from ..search.workers import mps_control_pipe

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if jobs > 1 and on_gpu and not mps_control_pipe().exists():
        err_console.print(
            f"warning: {jobs} runs will share the GPU without NVIDIA MPS (no {mps_control_pipe()}): the GPU then "
            "runs one process at a time. Start MPS first (`nvidia-cuda-mps-control -d`), or use --jobs 1.",
            highlight=False,
        )


def _table(runs: list[RunState]) -> Table:
    table = Table("run", "state", "stage", "result")
    for run in runs:
        table.add_row(run.recipe.name, run.state, run.stage(), run.message)
    return table


def _print_changes() -> Callable[[list[RunState]], None]:
    """Without a terminal: one line whenever a run changes state or stage."""
    seen: dict[str, tuple[str, str]] = {}

    def tick(runs: list[RunState]) -> None:
        for run in runs:
            now = (run.state, run.stage())
            if seen.get(run.recipe.name) != now:
                seen[run.recipe.name] = now
                print(f"{run.recipe.name}: {run.state} {now[1]} {run.message}".rstrip(), flush=True)

    return tick
