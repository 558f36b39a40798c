"""``blockswap-zoo latency-table`` and ``blockswap-zoo latency``: measure a device's latency table, and one
model's latency (predicted too, where a table exists), optionally into its published record."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .output import console, fail
from .search import _split_block_types

if TYPE_CHECKING:
    from ..latency import MeasureSetting

__all__ = ["latency_cmd", "latency_table_cmd"]

DEVICE_HELP = "cpu, cuda or cuda:N: where the latency is measured (and for whom)."


def _progress(label: str) -> tuple[Progress, Callable[[int, int, str], None]]:
    progress = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[what]}"), console=console,
    )  # fmt: skip
    state: dict[str, TaskID] = {}

    def on_progress(done: int, total: int, what: str) -> None:
        if "task" not in state:
            state["task"] = progress.add_task(label, total=total, what="")
        progress.update(state["task"], completed=done, total=total, what=what)

    return progress, on_progress


MAX_BATCH = 4096  # images per timed forward: far beyond every budget the zoo deploys at, and within memory


def _setting(device: str, batch: int, dtype: str, threads: int | None) -> MeasureSetting:
    """The measuring setting, after applying ``--threads`` (the thread count is part of it)."""
    import torch

    from ..latency import MeasureSetting
    from ..train.distributed import resolve_device

    try:
        resolve_device(device)  # tpu, cpu:zz or a missing GPU: named with the fix, before anything is measured
    except ValueError as e:
        fail(f"--device: {e}")
    if not 1 <= batch <= MAX_BATCH:
        fail(f"--batch must be between 1 and {MAX_BATCH} images, got {batch}")
    if threads is not None:
        if threads < 1:
            fail(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return MeasureSetting.here(device, batch, dtype)


def latency_table_cmd(
    backbone: str = typer.Argument("wrn_40_2", help="Backbone or arch whose blocks to measure: wrn_40_2, resnet34..."),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    batch: int = typer.Option(1, help="Batch size of every timed forward."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    threads: int | None = typer.Option(
        None, help="torch intra-op threads on a CPU (default: torch's); part of the key."
    ),
    dataset: str = typer.Option("fashion_mnist", help="Sets input channels, size and classes (cifar10, imagenet...)."),
    block_types: str | None = typer.Option(None, help="Block types to measure, e.g. 'S,G(4)' (default: the 23)."),
    calibrate_networks: int = typer.Option(
        10, "--calibrate", help="Whole networks measured to fit the sum's correction (0: skip; search needs one)."
    ),
    table: Path | None = typer.Option(None, help="Table file (default: the cache's file for this setting)."),
    force: bool = typer.Option(False, "--force", help="Measure this shape's entries and calibration again."),
) -> None:
    """Measure the latency table of this device: every block type at every block shape of BACKBONE, the stem
    and tail, then a calibration on whole networks. Saved once per setting; later runs add what is missing."""
    from ..data import DatasetError, get_dataset_info
    from ..latency import LatencyError, LatencyTable, NetworkShape, calibrate
    from ..latency.predictor import calibration_of
    from ..search import BudgetError
    from ..search.sampler import _backbone

    if calibrate_networks == 1 or calibrate_networks < 0:  # refused now, not after the table is measured
        fail(
            f"--calibrate needs 0 (skip) or at least 2 networks (it fits a scale and an offset), got {calibrate_networks}"
        )
    try:
        setting = _setting(device, batch, dtype, threads)
        info = get_dataset_info("fashion_mnist" if dataset.strip().lower() == "embedded" else dataset)
        bb = _backbone(backbone)
        shape = NetworkShape(bb, info.in_chans, tuple(info.input_size[1:]), info.num_classes)  # type: ignore[arg-type]
        tab = LatencyTable.open(setting, table)
        types = None if block_types is None else _split_block_types(block_types)
        if force:  # forget this shape's entries and calibration: everything below is measured again
            for key, *_ in LatencyTable(setting).missing(shape, types):
                tab.entries.pop(key, None)
            tab.calibrations.pop(shape.key, None)
        console.print(f"latency table for {shape.key}: {setting.describe()}", highlight=False, soft_wrap=True)
        t0 = time.perf_counter()
        progress, on_progress = _progress("measuring")
        with progress:
            measured = tab.measure(shape, types, on_progress)
        cal = calibration_of(tab, shape)
        if cal is None and calibrate_networks:
            progress, on_progress = _progress("calibrating")
            with progress:
                cal = calibrate(tab, shape, calibrate_networks, block_types=types, progress=on_progress)
        path = tab.save()
    except (LatencyError, DatasetError, BudgetError, ValueError) as e:
        fail(str(e))
    fit = (
        f"calibration: measured ~ {cal.scale:.3f} x sum + {cal.offset_ms:.3f} ms over {cal.networks} networks "
        f"(largest error {cal.max_rel_error:.1%})"
        if cal
        else "no calibration (--calibrate 0): predictions are the raw sum"
    )
    console.print(
        f"{measured} entries measured ({len(tab.entries)} in the table) in {time.perf_counter() - t0:.1f} s; {fit}\n"
        f"table: {path}",
        highlight=False,
        soft_wrap=True,
    )


def latency_cmd(
    name: str = typer.Argument(..., help="Model name, genotype text or file, checkpoint or run directory."),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    batch: list[int] = typer.Option([1], help="Batch size; repeat for several (--batch 1 --batch 128)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    threads: int | None = typer.Option(None, help="torch intra-op threads on a CPU (default: torch's)."),
    table: Path | None = typer.Option(None, help="Latency table to predict from (default: the cache's, if any)."),
    record: bool = typer.Option(
        False, "--record", help="Write the measurement into the published record (pretrained.json, in a checkout)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Measure a model's inference latency (median of timed calls after warm-up, in interleaved passes), with
    the latency table's prediction beside it when the table has its entries."""
    from ..latency import LatencyError, LatencyTable, NetworkShape, predict_ms
    from ..models import build_model
    from ..sources import model_shape, parse_source

    if table is not None and len(batch) > 1:
        fail("--table names one setting's table: give one --batch with it")
    rows = []
    try:
        ms = model_shape(parse_source(name))
        g = ms.genotype
        shape = NetworkShape(g.backbone_spec, ms.in_chans, tuple(ms.input_size[1:]), ms.num_classes)  # type: ignore[arg-type]
        for b in batch:
            setting = _setting(device, b, dtype, threads)
            tab = LatencyTable.open(setting, table)
            (timing,) = tab.time_networks([build_model(g, ms.num_classes, ms.in_chans)], shape)
            try:
                predicted: float | None = predict_ms(tab, shape, g)
            except LatencyError:
                predicted = None
            rows.append({
                "batch": b, "median_ms": round(timing.median_ms, 4), "spread_ms": round(timing.spread_ms, 4),
                "predicted_ms": None if predicted is None else round(predicted, 4), "setting": setting.to_dict(),
                "measured_on": setting.describe(),
            })  # fmt: skip
    except (LatencyError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    if record:
        _record(ms.label, rows)
    if as_json:
        print(json.dumps({"name": ms.label, "latency": rows}, indent=2))
        return
    for r in rows:
        pred = "" if r["predicted_ms"] is None else f", predicted {r['predicted_ms']:.3f} ms"
        console.print(
            f"{ms.label}: {r['median_ms']:.3f} ms at batch {r['batch']} (spread {r['spread_ms']:.3f}){pred} on "
            f"{r['measured_on']}",
            highlight=False,
            soft_wrap=True,
        )


def _record(name: str, rows: list[dict]) -> None:
    from ..release import record_latency

    try:
        for r in rows:
            record_latency(name, {k: r[k] for k in ("batch", "median_ms", "spread_ms", "setting")})
    except ValueError as e:
        fail(str(e))
    console.print(f"recorded in {name}'s record (pretrained.json); regenerate the docs with `blockswap-zoo docs`")
