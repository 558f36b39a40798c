"""Genotype: exactly which student a network is (a backbone and one block type per block).

Canonical JSON form::

    {"format": "blockswap-genotype", "version": 1, "backbone": "wrn_40_2",
     "blocks": ["B(4)", "S", "BG(2,16)", ...]}

Compact one-line form: ``wrn_40_2:v1:B(4);S;BG(2,16);...``. Both round-trip exactly. The
reference code's block names (``Conv``, ``DConvA4``, ``G8B2``) are accepted on input.
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .backbones import Backbone, parse_backbone
from .blocks import BlockType, get_block_type, plan_cost

__all__ = ["FORMAT", "FORMAT_VERSION", "Genotype", "GenotypeError"]

FORMAT = "blockswap-genotype"
FORMAT_VERSION = 1


class GenotypeError(ValueError):
    """Malformed genotype text or a genotype that does not fit its backbone."""


@dataclass(frozen=True)
class Genotype:
    """A backbone name and one canonical block-type name per swappable block."""

    backbone: str
    blocks: tuple[str, ...]
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        try:
            bb = parse_backbone(self.backbone)
        except ValueError as e:
            raise GenotypeError(str(e)) from None
        if self.version != FORMAT_VERSION:
            raise GenotypeError(
                f"genotype format version {self.version!r} is not supported (this package reads {FORMAT_VERSION!r})"
            )
        if isinstance(self.blocks, str):
            raise GenotypeError("blocks must be a list of block names, not one string")
        canonical = []
        for i, name in enumerate(self.blocks):
            try:
                canonical.append(get_block_type(name).name)
            except ValueError as e:
                raise GenotypeError(f"block {i}: {e}") from None
        if len(canonical) != bb.num_blocks:
            raise GenotypeError(
                f"backbone {bb.name} has {bb.num_blocks} swappable blocks "
                f"(stages of {', '.join(map(str, bb.stage_depths))}), but the genotype lists {len(canonical)}"
            )
        object.__setattr__(self, "backbone", bb.name)
        object.__setattr__(self, "blocks", tuple(canonical))

    # ----------------------------------------------------------------- constructors
    @classmethod
    def uniform(cls, backbone: str, block: str = "S") -> Genotype:
        """Every block of ``backbone`` of one type (``S`` gives the teacher)."""
        return cls(backbone, (block,) * parse_backbone(backbone).num_blocks)

    @classmethod
    def from_reference(cls, backbone: str, convs: Sequence[str]) -> Genotype:
        """From the reference code's list of block names (``['Conv', 'DConvA4', ...]``)."""
        if isinstance(convs, str):
            raise GenotypeError(f"from_reference needs a list of block names, got the string {convs!r}")
        return cls(backbone, tuple(convs))

    @classmethod
    def from_reference_csv(cls, path: str | Path, backbone: str | None = None, row: int = 0) -> Genotype:
        """Read one row of a reference genotype CSV (column ``convs``, a Python-style list).

        With no ``backbone``, 18 blocks mean wrn_40_2 and 16 mean resnet34 (the paper's nets).
        """
        path = Path(path)
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise GenotypeError(f"cannot read genotype CSV {path}: {e.strerror}") from None
        if not rows or "convs" not in rows[0]:
            raise GenotypeError(f"{path} is not a reference genotype CSV: it needs a 'convs' column")
        if not 0 <= row < len(rows):
            raise GenotypeError(f"{path} has {len(rows)} rows; row {row} does not exist")
        try:
            convs = ast.literal_eval(rows[row]["convs"])  # literals only: never evaluates code
        except (ValueError, SyntaxError):
            raise GenotypeError(f"{path}, row {row}: 'convs' is not a list of quoted block names") from None
        if not isinstance(convs, list) or not all(isinstance(c, str) for c in convs):
            raise GenotypeError(f"{path}, row {row}: 'convs' must be a list of block names")
        if backbone is None:
            backbone = {18: "wrn_40_2", 16: "resnet34"}.get(len(convs))
            if backbone is None:
                raise GenotypeError(f"{path}: {len(convs)} blocks match no paper backbone; pass backbone=")
        return cls(backbone, tuple(convs))

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """From the canonical JSON object (see the module docstring)."""
        if not isinstance(data, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise GenotypeError(f"'format' must be {FORMAT!r}, got {data.get('format')!r}")
        unknown = set(data) - {"format", "version", "backbone", "blocks"}
        if unknown:
            raise GenotypeError(f"unknown genotype keys {sorted(unknown)}; valid: format, version, backbone, blocks")
        for key in ("backbone", "blocks"):
            if key not in data:
                raise GenotypeError(f"genotype is missing {key!r}")
        if not isinstance(data["blocks"], list):
            raise GenotypeError("'blocks' must be a list of block names")
        version = data.get("version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise GenotypeError(f"'version' must be an integer, got {version!r}")
        return cls(str(data["backbone"]), tuple(data["blocks"]), version)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype JSON is malformed: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_string(cls, text: str) -> Genotype:
        """From the compact form ``backbone:v1:block;block;...``."""
        parts = text.strip().split(":")
        if len(parts) != 3 or not parts[1].startswith("v") or not parts[1][1:].isdigit():
            raise GenotypeError(f"compact genotype must look like 'wrn_40_2:v1:S;G(4);...', got {text!r}")
        return cls(parts[0], tuple(b for b in parts[2].split(";")), int(parts[1][1:]))

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise GenotypeError(f"cannot read genotype file {path}: {e.strerror}") from None
        try:
            return cls.from_json(text)
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None

    @classmethod
    def parse(cls, text: str) -> Genotype:
        """Any text form: JSON object or compact string."""
        return cls.from_json(text) if text.lstrip().startswith("{") else cls.from_string(text)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "backbone": self.backbone, "blocks": list(self.blocks)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_string(self) -> str:
        return f"{self.backbone}:v{self.version}:{';'.join(self.blocks)}"

    def to_reference(self) -> list[str]:
        """The reference code's block names, for comparison with its CSVs."""
        return [t.ref_name for t in self.block_types]

    def save(self, path: str | Path) -> None:
        """Write the genotype's JSON to ``path`` (atomically)."""
        from .io import atomic_write_text

        if Path(path).is_dir():
            raise GenotypeError(
                f"{path} is a folder; save the genotype to a file such as {Path(path) / 'genotype.json'}"
            )
        atomic_write_text(path, self.to_json() + "\n")

    def __str__(self) -> str:
        return self.to_string()

    # ----------------------------------------------------------------- structure and cost
    @cached_property
    def backbone_spec(self) -> Backbone:
        return parse_backbone(self.backbone)

    @property
    def block_types(self) -> list[BlockType]:
        return [get_block_type(b) for b in self.blocks]

    def replace(self, index: int, block: str) -> Genotype:
        """A copy with block ``index`` swapped for ``block``."""
        blocks = list(self.blocks)
        blocks[index] = block
        return Genotype(self.backbone, tuple(blocks), self.version)

    def block_costs(self, input_size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """(params, MACs) of each swappable block, in network order."""
        bb = self.backbone_spec
        return [bb.block_cost(t, slot) for t, slot in zip(self.block_types, bb.slots(input_size), strict=True)]

    def num_params(self, num_classes: int | None = None, in_chans: int = 3) -> int:
        """Exact parameter count (weights and BN affine, no buffers) without building the model.

        ``num_classes`` defaults to the backbone's, as build_model's: 10 for WideResNets, 1000 for ResNets.
        """
        bb = self.backbone_spec
        num_classes = bb.default_num_classes if num_classes is None else num_classes
        fixed = fixed_cost(bb, num_classes, in_chans, None)[0]
        return fixed + sum(p for p, _ in self.block_costs())

    def macs(
        self, num_classes: int | None = None, in_chans: int = 3, input_size: tuple[int, int] | int | None = None
    ) -> int:
        """Multiply-accumulates of one forward pass: convolutions and the classifier (classes as num_params)."""
        hw = _hw(input_size)
        bb = self.backbone_spec
        num_classes = bb.default_num_classes if num_classes is None else num_classes
        return fixed_cost(bb, num_classes, in_chans, hw)[1] + sum(m for _, m in self.block_costs(hw))


def _hw(input_size: tuple[int, int] | int | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        return (input_size, input_size)
    return tuple(input_size)[-2:]  # type: ignore[return-value]


def fixed_cost(bb: Backbone, num_classes: int, in_chans: int, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """(params, MACs) of the parts no genotype changes: stem and head."""
    if num_classes < 0 or in_chans < 1:
        raise GenotypeError(f"num_classes must be >= 0 and in_chans >= 1, got {num_classes} and {in_chans}")
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise GenotypeError(f"input_size must be positive (height, width), got {tuple(input_size)}")
    hw = tuple(input_size or bb.default_input_size[1:])
    stem_p, stem_m, _ = plan_cost(bb.stem_plan(in_chans), hw)  # type: ignore[arg-type]
    head_p = bb.head_params(num_classes)
    head_m = bb.num_features * num_classes
    return stem_p + head_p, stem_m + head_m
