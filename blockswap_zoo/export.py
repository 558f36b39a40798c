"""Export a model to ONNX or a torch.export program, and check the export against PyTorch's outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .models import SwapNet

__all__ = ["ExportCheck", "export_model"]

Format = Literal["onnx", "export"]
SUFFIXES = {"onnx": ".onnx", "export": ".pt2"}


@dataclass(frozen=True)
class ExportCheck:
    """Where the export went and how far its outputs are from PyTorch's on a random batch."""

    path: Path
    max_abs_diff: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def export_model(
    model: SwapNet,
    fmt: Format,
    out: str | Path,
    input_size: tuple[int, int, int],
    batch_size: int = 2,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> ExportCheck:
    """Export ``model`` (in eval mode; its mode is restored), then run the exported file on a fresh batch
    of another size (the batch dimension is dynamic) and compare its outputs with PyTorch's. The file
    appears only when its outputs are within ``atol``; otherwise the check reports the difference."""
    out = Path(out)
    if fmt not in ("onnx", "export"):
        raise ValueError(f"unknown export format {fmt!r}; choose onnx or export")
    suffix = SUFFIXES[fmt]
    if out.suffix != suffix:
        raise ValueError(f"{out}: a {fmt} file is named *{suffix}; pass --out with that suffix")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; pass --out a file name ending in {suffix}")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{out} lies under {blocking}, which is a file; pass --out a path in a folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    if fmt == "onnx":
        _require_onnx()  # before anything is written: the check needs onnxruntime
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    try:
        return _export_and_check(model.eval(), fmt, out, input_size, batch_size, atol)
    finally:
        model.train(was_training)


def _export_and_check(
    model: SwapNet, fmt: Format, out: Path, input_size: tuple[int, int, int], batch_size: int, atol: float
) -> ExportCheck:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_size, generator=gen)  # traced
    fresh = torch.randn(batch_size + 1, *input_size, generator=gen)  # checked
    with torch.no_grad():
        ref = model(fresh)
    tmp = out.with_name(f".tmp-{out.name}")  # same suffix: torch.export checks it
    dynamic = {"x": {0: torch.export.Dim("batch")}}
    try:
        if fmt == "onnx":
            torch.onnx.export(
                model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                dynamic_shapes=dynamic, dynamo=True, verbose=False,
                external_data=False,  # one self-contained file (the weights would go beside the temp name)
            )  # fmt: skip
            import onnxruntime as ort

            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": fresh.numpy()})[0])
        else:
            torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dynamic), str(tmp))
            with torch.no_grad():
                got = torch.export.load(str(tmp)).module()(fresh)
        check = ExportCheck(out, float((got - ref).abs().max()), atol)
        if check.ok:
            tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return check


def _require_onnx() -> None:
    """Raise ImportError naming the install command when ONNX export or its check cannot run here."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}; install them with `pip install 'blockswap-zoo[export]'` "
            "(or use --format export, which needs only torch)"
        )
