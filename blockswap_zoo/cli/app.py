"""The ``blockswap-zoo`` app: the commands on models, recipes and the zoo, and the search and training
commands registered from ``search.py`` and ``train.py``; thin commands that call the library."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..genotype import Genotype
from ..registry import get_arch, list_models
from ..sources import ModelSource, model_shape, parse_source
from .detection import (
    evaluate_detector_cmd,
    list_detectors_cmd,
    make_detection_set_cmd,
    search_detector_cmd,
    train_detector_cmd,
)
from .latency import latency_cmd, latency_table_cmd
from .output import console, err_console, fail
from .reproduce import reproduce_cmd
from .search import search as search_cmd
from .train import distill_cmd, evaluate_cmd, finetune_cmd, train_teacher_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True, help="BlockSwap students: search, distil, load.")


@app.command("list")
def list_cmd(
    pattern: str = typer.Argument("*", help="Wildcard pattern, e.g. 'wrn_40_2_bs*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    pretrained: bool = typer.Option(False, "--pretrained", help="List published weights (arch.tag) instead."),
) -> None:
    """List registered models with their parameters and MACs (or, with --pretrained, published weights)."""
    if pretrained:
        _list_pretrained(pattern, as_json)
        return
    names = list_models(pattern)
    if not names:
        fail(f"no model matches {pattern!r}; try `blockswap-zoo list` for all names")
    rows: list[dict[str, Any]] = []
    for n in names:
        a = get_arch(n)
        rows.append({"name": n, "role": a.role, "params": a.params, "macs": a.macs, "description": a.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("name", "role", "params", "MACs", "description")
    for r in rows:
        t.add_row(r["name"], r["role"], f"{r['params'] / 1e6:.3f}M", f"{r['macs'] / 1e6:.1f}M", r["description"])
    console.print(t)


def _list_pretrained(pattern: str, as_json: bool) -> None:
    from ..pretrained import list_pretrained, load_records

    names = list_pretrained(pattern)
    if not names:
        fail(f"no published weights match {pattern!r}; published: {', '.join(load_records()) or 'none yet'}")
    rows: list[dict[str, Any]] = []
    for n in names:
        w = load_records()[n]
        rows.append({"name": n, "dataset": w.dataset, **w.metrics, "params": w.params, "macs": w.macs,
                     "teacher": w.teacher, "recipe": w.recipe})  # fmt: skip
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("name", "dataset", "top-1", "top-5", "params", "MACs")  # teacher and recipe: --json or `info`
    for column in t.columns:
        column.no_wrap = True  # names are what users copy
    for r in rows:
        t.add_row(r["name"], r["dataset"], f"{r.get('top1', float('nan')):.2f}", f"{r.get('top5', float('nan')):.2f}",
                  f"{r['params'] / 1e6:.3f}M", f"{r['macs'] / 1e6:.1f}M")  # fmt: skip
    console.print(t)


@app.command()
def info(
    name: str = typer.Argument(
        ...,
        help="Model name, genotype JSON file, compact genotype string, search report directory, local-dir:PATH "
        "or hf-hub:ORG/NAME.",
    ),
    num_classes: int | None = typer.Option(None, help="Classes (default: the arch's)."),
    in_chans: int | None = typer.Option(None, help="Input channels (default: the arch's)."),
    input_size: int | None = typer.Option(None, help="Input height = width for MACs (default: the arch's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show a model's genotype block by block, its params and MACs, and the ratio to its teacher."""
    try:
        shape = model_shape(parse_source(name))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    label, g, nc, ch, size = shape.label, shape.genotype, shape.num_classes, shape.in_chans, shape.input_size
    nc = nc if num_classes is None else num_classes
    ch = ch if in_chans is None else in_chans
    hw = (size[1], size[2]) if input_size is None else (input_size, input_size)
    if nc < 1 or ch < 1 or min(hw) < 1:
        fail("--num-classes, --in-chans and --input-size must be positive")
    teacher = Genotype.uniform(g.backbone)
    params, macs = g.num_params(nc, ch), g.macs(nc, ch, hw)
    t_params, t_macs = teacher.num_params(nc, ch), teacher.macs(nc, ch, hw)
    slots = g.backbone_spec.slots(hw)
    costs = g.block_costs(hw)
    blocks: list[dict[str, Any]] = [
        {
            "index": s.index,
            "stage": s.stage,
            "block": b,
            "reference_name": r,
            "in_chs": s.in_chs,
            "out_chs": s.out_chs,
            "stride": s.stride,
            "params": p,
            "macs": m,
        }
        for s, b, r, (p, m) in zip(slots, g.blocks, g.to_reference(), costs, strict=True)
    ]
    result = {
        "name": label,
        "genotype": g.to_dict(),
        "compact": g.to_string(),
        "num_classes": nc,
        "in_chans": ch,
        "input_size": [ch, *hw],
        "params": params,
        "macs": macs,
        "teacher_params": t_params,
        "teacher_macs": t_macs,
        "blocks": blocks,
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    t = Table("#", "stage", "block", "reference", "in->out", "stride", "params", "MACs", title=label)
    for b in blocks:
        t.add_row(
            str(b["index"]),
            str(b["stage"]),
            b["block"],
            b["reference_name"],
            f"{b['in_chs']}->{b['out_chs']}",
            str(b["stride"]),
            f"{b['params']:,}",
            f"{b['macs'] / 1e6:.2f}M",
        )
    console.print(t)
    console.print(f"params {params:,} ({params / t_params:.1%} of the all-S teacher's {t_params:,})")
    console.print(
        f"MACs   {macs / 1e6:.1f}M ({macs / t_macs:.1%} of {t_macs / 1e6:.1f}M) at {ch}x{hw[0]}x{hw[1]}, {nc} classes"
    )
    console.print(f"compact: {g.to_string()}", highlight=False, soft_wrap=True)


@app.command("export")
def export_cmd(
    name: str = typer.Argument(..., help="Model name (arch or arch.tag), local-dir:<path> or hf-hub:ORG/NAME."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or export (torch.export .pt2)."),
    out: Path | None = typer.Option(None, "--out", help="Output file (default: <name>.onnx / .pt2)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Export a model and check that the exported file reproduces PyTorch's outputs."""
    from ..export import export_model
    from ..factory import load_trained
    from ..models import build_model

    if fmt not in ("onnx", "export"):
        fail(f"--format must be onnx or export, got {fmt!r}")
    try:
        source = parse_source(name)
        shape = model_shape(source)
        model = (
            load_trained(source)
            if source.names_weights
            else build_model(shape.genotype, shape.num_classes, shape.in_chans)
        )
        target = out or Path(f"{_file_stem(source, shape.genotype)}.{'onnx' if fmt == 'onnx' else 'pt2'}")
        check = export_model(model, fmt, target, shape.input_size, overwrite=force)  # type: ignore[arg-type]
    except (ValueError, FileExistsError, FileNotFoundError, ImportError) as e:
        fail(str(e))
    if not check.ok:
        fail(
            f"the export differs from PyTorch by {check.max_abs_diff:.3g} (> {check.atol}); {check.path} was not written",
            code=1,
        )
    console.print(f"wrote {check.path}; max |exported - PyTorch| = {check.max_abs_diff:.3g} (<= {check.atol})")


def _file_stem(source: ModelSource, genotype: Genotype) -> str:
    """A default export file name in the working directory: the model name, the checkpoint folder or repo, or
    backbone + genotype hash; every character outside [A-Za-z0-9._-] becomes '_', so a name never becomes a path."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", _raw_stem(source, genotype)).lstrip(".")[:120] or "model"


def _raw_stem(source: ModelSource, genotype: Genotype) -> str:
    if source.kind == "hf_hub":
        return f"{(source.repo_id or '').split('/')[-1]}{'-' + source.revision if source.revision else ''}"
    if source.kind in ("checkpoint_dir", "training_checkpoint") and source.path is not None:
        folder = source.path if source.kind == "checkpoint_dir" else source.path.parent
        return folder.resolve().name or "model"
    if source.kind in ("arch", "backbone"):
        return source.text
    digest = hashlib.sha256(genotype.to_string().encode()).hexdigest()[:8]  # genotypes: tell students apart
    return f"{genotype.backbone}-{digest}"


@app.command()
def download(
    name: str = typer.Argument(
        ..., help="arch.tag of a published checkpoint, or hf-hub:ORG/NAME or hf-hub:ORG/NAME@REV."
    ),
) -> None:
    """Fetch a checkpoint into the local cache and verify it (sha256), so later loads work offline."""
    from ..checkpoint import load_checkpoint_dir, load_verified_state_dict
    from ..pretrained import get_weights, resolve_weights_file
    from ..sources import checkpoint_directory

    try:
        source = parse_source(name, files=False)
        if source.kind == "hf_hub":
            path = checkpoint_directory(source)  # pulled, or found in the cache
            load_checkpoint_dir(path)  # builds the model and checks the weights' sha256
        elif source.kind != "arch":
            fail(
                f"download fetches published weights (arch.tag) or hf-hub:ORG/NAME; {name!r} is a {source.kind.replace('_', ' ')}"
            )
        else:
            w = get_weights(name)
            path = resolve_weights_file(w)
            load_verified_state_dict(path, w.sha256, w.size)  # in the checkout or cached: checked all the same
    except (ValueError, FileNotFoundError, OSError) as e:
        fail(str(e))
    console.print(f"{name}: {path} (sha256 verified)")


@app.command()
def publish(
    run_dir: Path = typer.Argument(..., help="A checkpoint directory (model.safetensors + config.json + README.md)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hugging Face repo, ORG/NAME."),
    private: bool = typer.Option(False, "--private"),
) -> None:
    """Upload a checkpoint directory to the Hugging Face Hub and print the commit."""
    from ..hf import push_to_hf_hub

    try:
        commit = push_to_hf_hub(run_dir, repo_id, private=private)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    except Exception as e:  # network and auth errors from huggingface_hub
        fail(f"upload to {repo_id} failed: {e}", code=1)
    console.print(f"published {run_dir} to https://huggingface.co/{repo_id} at commit {commit}")


@app.command()
def docs(
    check: bool = typer.Option(
        False, "--check", help="Exit 1 if README.md, MODEL_CARD.md or a checkpoint's card is out of date."
    ),
    repo: Path | None = typer.Option(
        None, "--repo", help="The repository checkout to write into (default: the one this package runs from)."
    ),
) -> None:
    """Regenerate the README's pretrained table, MODEL_CARD.md and each checkpoint's card from the records."""
    from ..cards import stale_docs, write_docs
    from ..pretrained import REPO_ROOT, is_checkout

    if repo is None and not is_checkout():
        fail(f"this installation ({REPO_ROOT}) is not a repository checkout; pass --repo with the checkout to update")
    root = repo if repo is not None else REPO_ROOT
    if not (root / "README.md").is_file():
        fail(f"{root} holds no README.md: not a blockswap-zoo checkout; pass --repo with one")
    try:
        if check:
            stale = stale_docs(root)
            if stale:
                names = ", ".join(str(p.relative_to(root)) for p in stale)
                fail(f"{names} out of date: run `blockswap-zoo docs`", code=1)
            console.print("docs are up to date")
            return
        for path in write_docs(root):
            console.print(f"updated {path}")
    except (ValueError, OSError) as e:  # e.g. a README without the table markers
        fail(str(e))


app.command("train-teacher")(train_teacher_cmd)  # cli/train.py: heavy imports happen inside the commands
app.command("distill")(distill_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("finetune")(finetune_cmd)
app.command("search")(search_cmd)  # cli/search.py: it calls run_search
app.command("latency-table")(latency_table_cmd)  # cli/latency.py
app.command("latency")(latency_cmd)
app.command("reproduce")(reproduce_cmd)  # cli/reproduce.py: one recipe, or several at once
app.command("list-detectors")(list_detectors_cmd)  # cli/detection.py: torchvision's detection code inside
app.command("make-detection-set")(make_detection_set_cmd)
app.command("search-detector")(search_detector_cmd)
app.command("train-detector")(train_detector_cmd)
app.command("evaluate-detector")(evaluate_detector_cmd)


@app.command()
def release(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory written by `reproduce` (run/checkpoint)."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing release of the same name (its whole weights/<name>/ folder)."
    ),
) -> None:
    """Publish a checkpoint into this repository: copy it to weights/<name>/ and add its record."""
    from ..release import release_checkpoint

    try:
        w = release_checkpoint(checkpoint, force=force)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"released {w.name}: {w.file} (sha256 {w.sha256}); now run `blockswap-zoo docs`")


def main() -> None:
    """Console-script entry point; under torchrun the process group is left at the end, however it ends."""
    from ..train.distributed import cleanup

    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    finally:
        cleanup()
