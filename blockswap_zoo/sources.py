"""What a model name means: one parser from anything a user may give (``arch``, ``arch.tag``, a plain
backbone, genotype text or file, a search report, a run or checkpoint directory, a training
checkpoint, ``local-dir:PATH``, ``hf-hub:ORG/NAME[@REV]``) to a typed :class:`ModelSource`, and the
questions every command asks of it without building a model: its genotype and shape, its checkpoint
folder, its dataset. ``factory.py`` builds the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from .genotype import Genotype, GenotypeError
from .registry import UnknownModelError, get_arch, is_registered

__all__ = [
    "ModelShape",
    "ModelSource",
    "checkpoint_directory",
    "model_shape",
    "parse_source",
    "read_training_checkpoint",
    "recorded_dataset",
    "resolve_genotype",
]

SourceKind = Literal[
    "arch",  # a registered arch, with the tag of published weights or without
    "backbone",  # a plain backbone (wrn_10_1): every block S
    "genotype",  # genotype text: compact or JSON
    "genotype_file",  # a genotype JSON file (a search's winner.json included)
    "search_report",  # a search report directory: its winner
    "checkpoint_dir",  # model.safetensors + config.json (a finished run, a release, local-dir:)
    "hf_hub",  # a checkpoint repository on the Hugging Face Hub
    "training_checkpoint",  # a training run's checkpoint.pt
]
TRAINING_CHECKPOINT = "checkpoint.pt"
_WEIGHTS_KINDS = ("checkpoint_dir", "hf_hub", "training_checkpoint")


@dataclass(frozen=True)
class ModelSource:
    """A parsed model name: its kind and the parts that kind has."""

    text: str
    kind: SourceKind
    arch: str | None = None
    tag: str | None = None
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    genotype: Genotype | None = None  # known from the name alone (not for checkpoints)

    @cached_property
    def hub_snapshot(self) -> Path:
        """The local folder of an ``hf_hub`` source's repo, pulled (or found in the cache) once per source."""
        from .hf import pull_hf_hub

        if self.kind != "hf_hub" or self.repo_id is None:
            raise UnknownModelError(f"{self.text!r} is not an hf-hub:ORG/NAME name")
        return pull_hf_hub(self.repo_id, self.revision)

    @property
    def names_weights(self) -> bool:
        """Whether the name points at trained weights (``arch.tag`` or a checkpoint), not only a structure."""
        return self.kind in _WEIGHTS_KINDS or self.tag is not None


@dataclass(frozen=True)
class ModelShape:
    """A source's network and the input it was made for: what ``info`` and ``export`` report."""

    label: str
    genotype: Genotype
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]


MAX_NAME_CHARS = 10_000  # the longest genotype text (JSON of a ResNet-50's blocks) is well below


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; False for a text no file system takes as a path (too long a name, say)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def parse_source(text: str | Path, *, files: bool = True) -> ModelSource:
    """Parse a model name. ``files=False`` (as ``create_model``) reads no bare path: a folder that happens
    to share a registered name never shadows it; ``local-dir:`` still names a checkpoint directory."""
    text = str(text)
    if len(text) > MAX_NAME_CHARS:  # no name, path or genotype is this long: say so without echoing it back
        raise UnknownModelError(
            f"a model name of {len(text):,} characters ({text[:40]!r}...) is too long to be a name, path or "
            f"genotype (at most {MAX_NAME_CHARS:,}); pass a registered name, a checkpoint folder or a genotype"
        )
    if text.startswith("local-dir:"):
        try:
            path = Path(text[len("local-dir:") :]).expanduser()
        except RuntimeError:  # ~user for a user this system does not have
            raise UnknownModelError(f"{text!r}: no such user's home directory; write the path out") from None
        return ModelSource(text, "checkpoint_dir", path=path)
    if text.startswith("hf-hub:"):
        repo_id, _, rev = text[len("hf-hub:") :].partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise UnknownModelError(f"{text!r}: write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REV")
        return ModelSource(text, "hf_hub", repo_id=repo_id, revision=rev or None)
    if files and _exists(Path(text)):
        return _parse_path(text, Path(text))
    if ":" in text or text.lstrip().startswith("{"):
        try:
            return ModelSource(text, "genotype", genotype=Genotype.parse(text))
        except GenotypeError as e:
            raise UnknownModelError(f"{text!r} is neither a model name nor a valid genotype: {e}") from None
    arch, _, tag = text.partition(".")
    if is_registered(arch):
        return ModelSource(text, "arch", arch=arch, tag=tag or None, genotype=get_arch(arch).genotype)
    if not tag:
        try:
            return ModelSource(text, "backbone", genotype=Genotype.uniform(text))
        except ValueError:
            pass
    if files and (text.endswith(".json") or "/" in text or "\\" in text):
        raise FileNotFoundError(f"{text!r}: no such file or folder")
    get_arch(text)  # raises UnknownModelError with close matches
    raise AssertionError("unreachable: get_arch accepted an unregistered name")


def _parse_path(text: str, path: Path) -> ModelSource:
    """A file or folder: a search report, a checkpoint directory, a training checkpoint or a genotype file."""
    if path.is_dir():
        if (path / "winner.json").is_file():
            return ModelSource(text, "search_report", path=path, genotype=Genotype.load(path / "winner.json"))
        if (path / "model.safetensors").is_file():
            return ModelSource(text, "checkpoint_dir", path=path)
        if (path / TRAINING_CHECKPOINT).is_file():
            return ModelSource(text, "training_checkpoint", path=path / TRAINING_CHECKPOINT)
        raise FileNotFoundError(
            f"{path} holds neither model.safetensors nor {TRAINING_CHECKPOINT} (nor a search's winner.json)"
        )
    if path.name.endswith(".safetensors"):
        return ModelSource(text, "checkpoint_dir", path=path.parent)
    if path.suffix == ".json":
        return ModelSource(text, "genotype_file", path=path, genotype=Genotype.load(path))
    return ModelSource(text, "training_checkpoint", path=path)


def resolve_genotype(text: str) -> Genotype:
    """The network a name describes without weights: a registered arch, a plain backbone (``wrn_10_1``: all
    S), genotype text, a genotype JSON file or a search report's winner."""
    source = parse_source(text)
    if source.genotype is None:
        raise UnknownModelError(f"{text!r} names trained weights, not a network; give its arch or genotype")
    return source.genotype


def checkpoint_directory(source: ModelSource) -> Path:
    """The folder a checkpoint source lives in; a Hub repo is pulled, or found in the cache offline."""
    if source.kind == "hf_hub":
        return source.hub_snapshot
    if source.kind != "checkpoint_dir" or source.path is None:
        raise UnknownModelError(f"{source.text!r} is not a local-dir:PATH, hf-hub:ORG/NAME or checkpoint directory")
    return source.path


def model_shape(source: ModelSource) -> ModelShape:
    """The network and input shape a source stands for, read without loading any weights."""
    if source.kind in ("checkpoint_dir", "hf_hub"):
        from .checkpoint import read_checkpoint_config

        cfg = read_checkpoint_config(checkpoint_directory(source))
        return _shape_from_config(source.text, cfg)
    if source.kind == "training_checkpoint":
        return _shape_from_config(source.text, read_training_checkpoint(source)["model_config"])
    g = source.genotype
    assert g is not None
    spec = g.backbone_spec
    if source.kind == "arch":
        if source.tag is not None:  # arch.tag: the published checkpoint's classes, channels and size
            from .pretrained import get_weights

            w = get_weights(source.text)
            return ModelShape(w.name, g, w.num_classes, w.in_chans, tuple(w.input_size))  # type: ignore[arg-type]
        a = get_arch(source.arch or "")
        return ModelShape(a.name, g, a.num_classes, a.in_chans, a.input_size)
    if source.kind == "backbone":
        return ModelShape(f"{g.backbone} (backbone)", g, spec.default_num_classes, 3, spec.default_input_size)
    report = source.path if source.kind == "search_report" else None
    if source.kind == "genotype_file" and source.path is not None and source.path.name == "winner.json":
        report = source.path.parent
    summary = _search_summary(report)
    if summary is not None:  # a search's winner: the shape it was searched at
        assert source.path is not None  # a summary is only read from a path's report
        label = str(source.path / "winner.json" if source.kind == "search_report" else source.text)
        return ModelShape(label, g, summary["num_classes"], summary["in_chans"], tuple(summary["input_size"]))
    return ModelShape(f"{g.backbone} (custom genotype)", g, spec.default_num_classes, 3, spec.default_input_size)


def _shape_from_config(label: str, cfg: dict[str, Any]) -> ModelShape:
    g = Genotype.from_dict(cfg["genotype"])
    size = cfg.get("input_size") or [cfg["in_chans"], *g.backbone_spec.default_input_size[1:]]
    return ModelShape(label, g, int(cfg["num_classes"]), int(cfg["in_chans"]), tuple(size))


def _search_summary(report: Path | None) -> dict[str, Any] | None:
    """A search report's summary.json, when it records the shape searched at."""
    if report is None or not (report / "summary.json").is_file():
        return None
    summary = json.loads((report / "summary.json").read_text())
    return summary if {"num_classes", "in_chans", "input_size"} <= set(summary) else None


def read_training_checkpoint(source: ModelSource) -> dict[str, Any]:
    """A training checkpoint's state (``weights_only``), checked to hold the model and its config."""
    from .train.checkpoint import load_checkpoint

    assert source.path is not None
    state = load_checkpoint(source.path)
    if not {"model_config", "model"} <= set(state):
        raise ValueError(
            f"{source.path} is not a blockswap-zoo checkpoint (it needs 'model' and 'model_config'); pass a run "
            f"directory or the {TRAINING_CHECKPOINT} a training run wrote"
        )
    return state


def recorded_dataset(source: ModelSource) -> str | None:
    """The dataset a source's weights were trained on, as its record, config.json or checkpoint names it."""
    if source.kind == "arch" and source.tag is not None:
        from .pretrained import load_records

        record = load_records().get(source.text)
        return record.dataset if record is not None else None
    if source.kind in ("checkpoint_dir", "hf_hub"):
        from .checkpoint import CONFIG_NAME

        config = checkpoint_directory(source) / CONFIG_NAME
        if config.is_file():
            return json.loads(config.read_text()).get("dataset")
        return None
    if source.kind == "training_checkpoint":
        return read_training_checkpoint(source).get("model_config", {}).get("dataset")
    return None
