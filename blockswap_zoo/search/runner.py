"""The search loop: draw candidates within the budget, score them on one minibatch, keep the best.

A report directory makes a search durable: ``settings.json`` (what was searched),
``environment.json`` (where the latest session ran; each candidate records its own seconds),
``candidates.jsonl`` (one line per scored candidate, appended as it is scored), and at the end
``winner.json`` (the genotype), ``summary.json`` and ``score_vs_params.png``. An interrupted search resumes from its report directory without
rescoring anything; a directory holding a different search is refused. Under ``torchrun`` the
candidates are drawn identically on every rank, rank r scores the indices i with
i % world_size == r, and rank 0 gathers the results: the same winner as one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from ..backbones import Backbone
from ..cpu_info import cpu_info
from ..dir_lock import DirectoryBusyError, lock_directory
from ..genotype import Genotype
from ..io import atomic_write_text
from ..limits import check_seed
from .minibatch import EMBEDDED, SearchBatch, load_search_batch
from .proxies import get_proxy_name
from .sampler import _backbone, parse_budget, sample_genotypes
from .scoring import Candidate, Job, ScoreConfig, candidate_seed, describe_config, mode_config, resolve_mode
from .workers import resolve_workers, score_candidates

if TYPE_CHECKING:
    from ..latency.budget import LatencyBudget, LatencyDraw
    from ..latency.table import NetworkShape

__all__ = ["ReportError", "SearchResult", "SearchSettings", "best_candidate", "load_report", "run_search"]

MAX_SAMPLES = 10_000_000  # candidates are drawn (and held) up front; 1000 is the paper's search
SETTINGS = "settings.json"
CANDIDATES = "candidates.jsonl"
RANK_SHARDS = "candidates.rank*.jsonl"  # one per torchrun process until the search ends
FINAL_FILES = ("winner.json", "summary.json", "score_vs_params.png")  # written when every candidate is scored
REPORT_FILES = (SETTINGS, "environment.json", CANDIDATES, *FINAL_FILES)


class ReportError(RuntimeError):
    """A report directory that cannot be used as asked (exists, differs, or is damaged)."""


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides a search's candidates and scores (``samples`` may grow on resume)."""

    backbone: str
    budget: int
    metric: str
    tolerance: float
    samples: int
    proxy: str
    mode: str
    dataset: str
    batch_size: int
    seed: int
    device_type: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    block_types: tuple[str, ...] | None = None
    minibatch_sha256: str | None = None  # the scored images and labels: a resume must see the same ones
    precision: str | None = None  # "fp32" or the autocast dtype: fast mode's depends on the CPU (scoring)
    latency: dict | None = None  # a latency budget's setting and table (budget then counts microseconds)
    format: str = "blockswap-search-settings/1"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["block_types"] = None if self.block_types is None else list(self.block_types)
        return d

    def differences(self, other: dict) -> list[str]:
        """Keys (other than ``samples``) whose values differ from a saved settings dict.

        Reports written before ``minibatch_sha256`` or ``precision`` existed lack them; those go unchecked.
        """
        mine = self.to_dict()
        return [
            f"{k}: saved {other.get(k)!r}, now {mine[k]!r}"
            for k in mine
            if k != "samples"
            and not (k in _LATER_SETTINGS and k not in other)
            and json.loads(json.dumps(mine[k])) != other.get(k)
        ]


_LATER_SETTINGS = ("minibatch_sha256", "precision", "latency")  # keys older reports lack


@dataclass
class SearchResult:
    """The outcome of a search: the winner and every scored candidate (in index order)."""

    winner: Genotype
    winner_index: int
    score: float
    params: int
    macs: int
    candidates: list[Candidate]
    settings: SearchSettings
    report_dir: Path | None = None
    seconds: float = 0.0
    rescored: int = 0  # candidates scored in this call (the rest came from a resumed report)
    extra: dict = field(default_factory=dict)


def _dist() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _read_records(report: Path) -> dict[int, Candidate]:
    """Scored candidates found in the report's JSONL files; a torn last line (a crash mid-write) is skipped."""
    out: dict[int, Candidate] = {}
    for path in [report / CANDIDATES, *sorted(report.glob(RANK_SHARDS))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                c = Candidate.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            out[c.index] = c
    return out


def _minibatch_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the minibatch's images and labels (their bytes, dtypes and shapes)."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_device(device: str) -> str:
    """The device to score on (``auto``: cuda when available); ValueError naming the fix for one torch
    cannot parse or this machine lacks."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:<index> or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch finds no usable CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise ValueError(f"search runs on cpu or cuda, not {device!r}")
    return device


def _trim_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a crash, so the next record appended starts on its own line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def _environment(device: str, world: int, workers: int, scoring: str) -> dict[str, object]:
    from .. import __version__

    env: dict[str, object] = {
        "blockswap_zoo": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_info().to_dict(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "world_size": world,
        "workers": workers,
        "scoring": scoring,
        "argv": sys.argv,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _read_settings(saved: Path, fix: str = "use another --out or --force") -> dict:
    """A report's saved settings; ReportError (ending with ``fix``) if they are not a search's."""
    try:
        old = json.loads(saved.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{saved} is damaged ({e}); {fix}") from None
    if not isinstance(old, dict) or not str(old.get("format", "")).startswith("blockswap-search-settings/"):
        raise ReportError(f"{saved} is not a blockswap-zoo search's settings; use another --out")
    return old


def _prepare_report(report: Path, settings: SearchSettings, resume: bool, force: bool) -> None:
    """Check or create the report directory (rank 0 only); raise ReportError with the fix.

    A resumed search drops the previous run's winner and summary first: they are written again
    when every candidate is scored, so an interrupted resume never leaves a stale "finished" report.
    """
    saved = report / SETTINGS
    if report.exists() and not report.is_dir():
        raise ReportError(f"report path {report} exists and is not a directory")
    if report.exists() and any(report.iterdir()):
        if not saved.exists():
            how = "use another --out" if resume or force else "choose another --out"
            raise ReportError(f"{report} is not empty and holds no search report (no {SETTINGS}); {how}")
        if resume:
            old = _read_settings(saved)
            diff = settings.differences(old)
            if diff:
                raise ReportError(
                    f"{report} holds a different search, so it cannot be resumed: {'; '.join(diff)}. "
                    "Use the same settings, another --out, or --force to start over"
                )
            records = _read_records(report)
            beyond = [i for i in records if i >= settings.samples]
            if beyond:
                raise ReportError(
                    f"{report} already holds scored candidates up to index {max(beyond)}, which --samples "
                    f"{settings.samples} would drop; resume with --samples {max(beyond) + 1} or more "
                    f"({len(records)} candidates are scored)"
                )
            for name in FINAL_FILES:
                (report / name).unlink(missing_ok=True)
        elif force:
            _read_settings(saved, "use another --out")  # only a search report is overwritten, and only its files
            for name in REPORT_FILES:
                (report / name).unlink(missing_ok=True)
            for p in report.glob(RANK_SHARDS):
                p.unlink()
        else:
            raise ReportError(
                f"report directory {report} already exists; pass --resume to continue that search, "
                "--force to overwrite it, or choose another --out"
            )
    report.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(settings.to_dict(), indent=2) + "\n")


def run_search(
    backbone: str,
    budget: int | str | None,
    samples: int = 1000,
    *,
    proxy: str = "fisher",
    mode: str = "auto",
    dataset: str = EMBEDDED,
    data_dir: str | Path | None = None,
    batch_size: int = 128,
    seed: int = 0,
    metric: str = "params",
    tolerance: float = 0.025,
    block_types: Sequence[str] | None = None,
    latency: LatencyBudget | None = None,
    device: str = "cpu",
    workers: int | str = 1,
    threads: int | None = None,
    report_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Search ``samples`` random genotypes of ``backbone`` within ``tolerance`` of ``budget`` for the best proxy score.

    The network searched takes its channels, classes and input size from the dataset. With
    ``report_dir`` every scored candidate is saved as it is scored (see the module docstring).
    ``workers``: scoring processes, or ``"auto"`` (``workers.resolve_workers``). Exact mode's scores do not depend
    on it; fast mode's bf16 ones move (within its error) with the torch threads each process gets.
    ``log`` receives one line saying how candidates are scored and why (on rank 0), before scoring starts.
    With ``latency`` the candidates are drawn under a latency budget instead (``budget``, if given, is ignored
    in favour of its ``max_params``), and the winner's latency is measured at the end.
    """
    t_start = time.perf_counter()
    _check_arguments(samples, seed, threads)
    proxy = get_proxy_name(proxy)
    device = _check_device(device)
    rank, world = _dist()
    if torch.device(device).type == "cuda" and world > 1 and torch.device(device).index is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    workers = resolve_workers(workers, device, -(-samples // world), world, threads)
    mode = resolve_mode(mode, device)
    cfg = mode_config(mode, proxy, device, threads)  # before anything is written: an unknown mode is an error
    scoring = f"{describe_config(mode, cfg)}; {workers} scoring process{'es' if workers > 1 else ''}"
    bb = _backbone(backbone)
    batch = load_search_batch(dataset, batch_size, seed, data_dir)
    hw = batch.input_size[1:]
    draw = None
    if latency is not None:
        draw = _draw_under_latency(latency, bb, batch, samples, seed, tolerance, block_types, rank, world, log)
        genotypes, metric, budget_n = draw.genotypes, "latency", round(latency.ms * 1000)
    else:
        if budget is None:
            raise ValueError("give a budget (parameters or MACs) or a latency budget")
        budget_n = parse_budget(budget)
        genotypes = sample_genotypes(
            bb, budget_n, samples, seed, tolerance, metric, batch.num_classes, batch.in_chans, hw, block_types
        )
    settings = SearchSettings(
        bb.name,
        budget_n,
        metric,
        tolerance,
        samples,
        proxy,
        mode,
        batch.dataset,
        batch_size,
        seed,
        torch.device(device).type,
        batch.num_classes,
        batch.in_chans,
        cast(tuple[int, int, int], tuple(batch.input_size)),
        None if block_types is None else tuple(block_types),
        _minibatch_sha256(batch.images, batch.labels),
        cfg.autocast_precision,
        None if draw is None else draw.record,
    )
    with contextlib.ExitStack() as held:  # the report directory, locked for this search alone (rank 0)
        report = Path(report_dir) if report_dir is not None else None
        if report is not None:
            _open_report(
                report,
                settings,
                resume,
                force,
                rank,
                world,
                lambda: _environment(device, world, workers, scoring),
                held,
            )
        done = _resumed_candidates(report, genotypes) if report is not None and resume else {}
        jobs = [
            (i, g.to_string(), g.num_params(batch.num_classes, batch.in_chans),
             g.macs(batch.num_classes, batch.in_chans, hw), candidate_seed(seed, i))
            for i, g in enumerate(genotypes) if i not in done and i % world == rank
        ]  # fmt: skip
        if log is not None and rank == 0:
            log(scoring)
        shard = report / (CANDIDATES if world == 1 else f"candidates.rank{rank}.jsonl") if report else None
        new = _score_and_record(jobs, batch, cfg, workers, shard, progress, len(done), samples, world)
        records = {**done, **{c.index: c for c in _gathered(new, world)}}
        candidates = [records[i] for i in sorted(records)]
        best = best_candidate(candidates, proxy)
        result = SearchResult(
            winner=Genotype.from_string(best.genotype),
            winner_index=best.index,
            score=best.score,
            params=best.params,
            macs=best.macs,
            candidates=candidates,
            settings=settings,
            report_dir=report,
            seconds=time.perf_counter() - t_start,
            rescored=len(records) - len(done),
            extra={"device": device, "world_size": world, "score_config": cfg.to_dict()},
        )
        if draw is not None and latency is not None and rank == 0:
            from ..latency.budget import measure_against_budget

            result.extra["latency"] = measure_against_budget(
                draw.table, _shape(bb, batch), result.winner, latency.ms, settle_seconds=latency.settle_seconds
            )
        if report is not None and rank == 0:
            write_report(result)
        return result


def _shape(bb: Backbone, batch: SearchBatch) -> NetworkShape:
    from ..latency.table import NetworkShape

    return NetworkShape(bb, batch.in_chans, tuple(batch.input_size[1:]), batch.num_classes)  # type: ignore[arg-type]


def _draw_under_latency(
    latency: LatencyBudget,
    bb: Backbone,
    batch: SearchBatch,
    samples: int,
    seed: int,
    tolerance: float,
    block_types: Sequence[str] | None,
    rank: int,
    world: int,
    log: Callable[[str], None] | None,
) -> LatencyDraw:
    """The latency-budgeted candidates; under torchrun rank 0 measures the missing table entries first, alone."""
    from ..latency.budget import draw_under_latency

    def draw() -> LatencyDraw:
        return draw_under_latency(
            latency, _shape(bb, batch), samples, seed, tolerance, block_types, log if rank == 0 else None
        )

    if world == 1:
        return draw()
    import torch.distributed as dist

    first = draw() if rank == 0 else None
    dist.barrier()
    return first if first is not None else draw()


def _check_arguments(samples: int, seed: int, threads: int | None) -> None:
    """ValueError naming the fix for a sample count, seed or thread count out of range."""
    if not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be in 1..{MAX_SAMPLES:,} (candidates are drawn up front), got {samples}")
    try:
        check_seed(seed)
    except ValueError as e:
        raise ValueError(f"seed {e}") from None
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or left out for torch's default), got {threads}")


def _open_report(
    report: Path,
    settings: SearchSettings,
    resume: bool,
    force: bool,
    rank: int,
    world: int,
    environment: Callable[[], dict[str, object]],
    held: contextlib.ExitStack,
) -> None:
    """Rank 0 locks the report directory into ``held`` (one writer), prepares it and writes environment.json;
    every rank raises its ReportError."""
    error = None
    if rank == 0:
        try:
            if not report.exists() or report.is_dir():
                try:
                    held.enter_context(lock_directory(report, "search"))
                except DirectoryBusyError as e:
                    raise ReportError(str(e)) from None
            _prepare_report(report, settings, resume, force)
            atomic_write_text(report / "environment.json", json.dumps(environment(), indent=2) + "\n")
        except ReportError as e:
            error = str(e)
    if world > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise ReportError(error)


def _resumed_candidates(report: Path, genotypes: Sequence[Genotype]) -> dict[int, Candidate]:
    """The candidates a resumed report already holds, each checked against the one this search draws."""
    done = {}
    for i, c in _read_records(report).items():  # all below samples (_prepare_report checked)
        if c.genotype != genotypes[i].to_string():
            raise ReportError(f"{report}: candidate {i} was {c.genotype}, but this search draws another")
        done[i] = c
    return done


def _score_and_record(
    jobs: list[Job],
    batch: SearchBatch,
    cfg: ScoreConfig,
    workers: int,
    shard: Path | None,
    progress: Callable[[int, int], None] | None,
    done: int,
    samples: int,
    world: int,
) -> list[Candidate]:
    """Score ``jobs``, appending each candidate to ``shard`` (fsynced) as it finishes and reporting progress
    (under torchrun, as if every rank kept pace with this one)."""
    if shard is not None:
        _trim_torn_tail(shard)
    fh = shard.open("a") if shard else None
    scored = [done]

    def on_result(c: Candidate) -> None:
        if fh is not None:
            fh.write(json.dumps(c.to_dict()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        scored[0] += 1
        if progress is not None:
            progress(scored[0] if world == 1 else done + (scored[0] - done) * world, samples)

    if progress is not None:
        progress(done, samples)
    try:
        return score_candidates(
            jobs, batch.images, batch.labels, cfg, batch.num_classes, batch.in_chans, workers, on_result
        )
    finally:
        if fh is not None:
            fh.close()


def _gathered(new: list[Candidate], world: int) -> list[Candidate]:
    """Every rank's newly scored candidates (under torchrun), or ``new`` itself."""
    if world == 1:
        return new
    import torch.distributed as dist

    gathered: list[list[dict]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, [c.to_dict() for c in new])
    return [Candidate.from_dict(d) for part in gathered for d in part]


def best_candidate(candidates: list[Candidate], proxy: str) -> Candidate:
    """The highest finite score (the lowest index among ties); ValueError when no score is finite."""
    best = max(candidates, key=lambda c: (c.score if math.isfinite(c.score) else -math.inf, -c.index))
    if not math.isfinite(best.score):
        raise ValueError(
            f"no candidate got a finite {proxy} score ({len(candidates)} scored, saved in the report); "
            "try --mode exact, another --proxy, or check the minibatch"
        )
    return best


def write_report(result: SearchResult) -> None:
    """Consolidate candidates.jsonl (index order) and write winner.json, summary.json and the plot."""
    report = result.report_dir
    assert report is not None
    lines = "".join(json.dumps(c.to_dict()) + "\n" for c in result.candidates)
    atomic_write_text(report / CANDIDATES, lines)
    for p in report.glob(RANK_SHARDS):
        p.unlink()
    result.winner.save(report / "winner.json")
    s = result.settings
    summary = {
        "winner": result.winner.to_string(),
        "winner_index": result.winner_index,
        "score": result.score,
        "proxy": s.proxy,
        "params": result.params,
        "macs": result.macs,
        "num_classes": s.num_classes,
        "in_chans": s.in_chans,
        "input_size": list(s.input_size),
        "init_seed": candidate_seed(s.seed, result.winner_index),
        "candidates": len(result.candidates),
        "scored_this_run": result.rescored,
        "seconds_this_run": round(result.seconds, 3),
        **result.extra,
    }
    atomic_write_text(report / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_scores(result, report / "score_vs_params.png")


def plot_scores(result: SearchResult, path: Path) -> None:
    """Score against params for every candidate, the winner marked (PNG, Agg backend)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from ..io import atomic_write_bytes

    s = result.settings
    cs = [c for c in result.candidates if math.isfinite(c.score)]
    macs = s.metric == "macs"  # the x axis is the budget's metric

    def cost(c: Candidate | SearchResult) -> float:
        return c.macs / 1e6 if macs else c.params / 1e3

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    ax.scatter([cost(c) for c in cs], [c.score for c in cs], s=9, alpha=0.5, label="candidates")
    ax.scatter([cost(result)], [result.score], s=160, marker="*", color="crimson", label="winner", zorder=3)
    if cs and min(c.score for c in cs) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("MACs (M)" if macs else "parameters (K)")
    ax.set_ylabel(s.proxy.replace("_", " ") + (" potential" if s.proxy == "fisher" else ""))
    at = f"{s.budget / 1000:g} ms" if s.metric == "latency" else f"{s.budget:,} {s.metric}"
    ax.set_title(f"{s.backbone} @ {at}, {len(result.candidates)} candidates, seed {s.seed}")
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def load_report(report_dir: str | Path) -> SearchResult:
    """Read a finished report directory back into a SearchResult."""
    report = Path(report_dir)
    if not (report / SETTINGS).is_file():
        raise ReportError(f"{report} is not a search report (no {SETTINGS})")
    sd = _read_settings(report / SETTINGS)
    sd.pop("format", None)
    sd["input_size"] = tuple(sd["input_size"])
    sd["block_types"] = None if sd.get("block_types") is None else tuple(sd["block_types"])
    settings = SearchSettings(**sd)
    records = _read_records(report)
    candidates = [records[i] for i in sorted(records)]
    try:
        summary = json.loads((report / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        summary = {}
    if len(candidates) != settings.samples or summary.get("candidates") != len(candidates):
        raise ReportError(
            f"{report} is not a finished search report: {len(candidates)} of {settings.samples} candidates "
            "are scored; finish it with `blockswap-zoo search ... --resume`"
        )
    return SearchResult(
        winner=Genotype.load(report / "winner.json"),
        winner_index=summary["winner_index"],
        score=summary["score"],
        params=summary["params"],
        macs=summary["macs"],
        candidates=candidates,
        settings=settings,
        report_dir=report,
        seconds=summary.get("seconds_this_run", 0.0),
        rescored=summary.get("scored_this_run", 0),
    )
