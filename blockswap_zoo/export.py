"""Export a model to ONNX or a torch.export program, and check the export against PyTorch's outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .models import SwapNet

__all__ = ["ExportCheck", "export_model"]

Format = Literal["onnx", "export"]


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
    """Export ``model`` (eval mode) and run the exported file on a fresh batch to compare outputs."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_size, generator=gen)
    with torch.no_grad():
        ref = model(x)
    tmp = out.with_name(f".tmp-{out.name}")  # same suffix: torch.export checks it
    if fmt == "onnx":
        torch.onnx.export(
            model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
        )  # fmt: skip
        tmp.replace(out)
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    elif fmt == "export":
        program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(program, str(tmp))
        tmp.replace(out)
        with torch.no_grad():
            got = torch.export.load(str(out)).module()(x)
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose onnx or export")
    return ExportCheck(out, float((got - ref).abs().max()), atol)
