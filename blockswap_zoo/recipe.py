"""Recipes: one YAML file per checkpoint, read as plain data (``yaml_io.load_yaml``) into a typed schema.

A recipe is inert data. Every component is picked by name from a closed set (datasets, archs,
proxies, schedules); an unknown key, a wrong type or a missing field is an error that names the
field and the file. Nothing in a recipe is imported or executed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, cast, get_args, get_origin

import yaml

from .limits import check_seed
from .yaml_io import SettingsFileError, load_yaml, read_settings_text

__all__ = [
    "Recipe",
    "RecipeError",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "parse_recipe",
    "recipe_reference",
    "shipped_recipe",
]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # package data: in a checkout and in a wheel alike


class RecipeError(ValueError):
    """A recipe that cannot be read: the message names the file and the field."""


@dataclass(frozen=True)
class DatasetSpec:
    name: Literal["fashion_mnist", "cifar10", "cifar100", "imagenet"]
    data_dir: str | None = None


@dataclass(frozen=True)
class OptimSpec:
    """SGD as in the paper: lr, momentum, Nesterov, weight decay; schedule cosine or step."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step"] = "cosine"
    step_size: int = 30
    step_gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    subset: int | None = None


@dataclass(frozen=True)
class TeacherSpec:
    """A zoo checkpoint (``pretrained: arch.tag``) or an arch trained from scratch with ``train``."""

    arch: str
    pretrained: str | None = None
    train: OptimSpec | None = None
    name: str | None = None  # arch.tag to publish the trained teacher as (e.g. wrn_40_2.fmnist)


@dataclass(frozen=True)
class SearchSpec:
    """A search: under a budget of parameters or MACs, or of latency on a named setting (then ``budget`` is
    left out; ``max_params`` may cap parameters as well)."""

    backbone: str
    budget: str | None = None
    metric: Literal["params", "macs"] = "params"
    tolerance: float = 0.025
    samples: int = 1000
    proxy: Literal["fisher", "grad_norm", "snip", "synflow", "naswot"] = "fisher"
    mode: Literal["exact", "fast"] = "fast"
    seed: int = 0
    latency: str | None = None  # e.g. 2.5ms: predicted by the latency table of the setting below
    latency_device: str = "cpu"
    latency_batch: int = 1
    latency_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_params: str | None = None


@dataclass(frozen=True)
class StudentSpec:
    """Exactly one of: a fixed genotype (compact form or registered arch), or a search."""

    genotype: str | None = None
    search: SearchSpec | None = None


@dataclass(frozen=True)
class DistillSpec:
    beta: float = 1000.0
    at_mode: Literal["code", "paper"] = "code"
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0


@dataclass(frozen=True)
class ExpectedSpec:
    """The metric the run must reach: |measured - value| <= tolerance (percentage points)."""

    value: float
    tolerance: float
    metric: Literal["top1", "top5"] = "top1"


@dataclass(frozen=True)
class Recipe:
    name: str  # the arch.tag of the checkpoint it produces
    kind: Literal["official", "example"]
    description: str
    dataset: DatasetSpec
    teacher: TeacherSpec | None
    student: StudentSpec
    train: OptimSpec
    distill: DistillSpec | None = None
    expected: ExpectedSpec | None = None
    seed: int = 0
    role: Literal["student", "baseline", "teacher"] = "student"  # what the checkpoint is in the zoo's tables
    budget: str | None = None  # the parameter budget it is compared at (a searched student's: its search budget)
    license: str = "mit"
    notes: str = ""
    source: str = field(default="", compare=False)  # the file it was read from
    sha256: str = field(default="", compare=False)  # of the file's bytes

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (dataclass, Literal, Optional, scalar)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error names the inner field
            return _convert(value, options[0], where)
        for a in options:
            try:
                return _convert(value, a, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(cast(type, tp), value, where)  # a dataclass type (an annotation), not an instance
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    numeric_text = where.endswith(("budget", "max_params", "latency"))  # 400000 or 2.5 reads as 400k or 2.5 (ms)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool) and numeric_text:
        return str(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise RecipeError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source", "sha256")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{path}: required field is missing")
    return cls(**kwargs)


def _field(where: str, check: Callable[[Any], object], value: Any) -> None:  # noqa: ANN401
    """``check(value)``, its ValueError (GenotypeError, ...) as a RecipeError that names the field."""
    try:
        check(value)
    except ValueError as e:
        raise RecipeError(f"{where}: {e}") from None


def _validate(r: Recipe) -> None:
    from .sources import resolve_genotype

    if not re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", r.name):
        raise RecipeError(
            f"name: {r.name!r} must be 'arch.tag' in lowercase letters, digits and underscores (the checkpoint "
            "it produces), e.g. wrn_16_2_bs100k.fmnist_at"
        )
    if (r.student.genotype is None) == (r.student.search is None):
        raise RecipeError("student: give exactly one of 'genotype' or 'search'")
    _field("seed", check_seed, r.seed)
    if r.student.genotype is not None:
        _field("student.genotype", resolve_genotype, r.student.genotype)
    if r.expected is not None:
        e = r.expected
        if not (math.isfinite(e.value) and 0 <= e.value <= 100):
            raise RecipeError(f"expected.value: a percentage in 0..100, got {e.value!r}")
        if not (math.isfinite(e.tolerance) and 0 <= e.tolerance <= 100):
            raise RecipeError(f"expected.tolerance: percentage points in 0..100, got {e.tolerance!r}")
    if r.teacher is not None:
        _field("teacher.arch", resolve_genotype, r.teacher.arch)  # a registered arch or a plain backbone
        if (r.teacher.pretrained is None) == (r.teacher.train is None):
            raise RecipeError("teacher: give exactly one of 'pretrained' (a zoo checkpoint) or 'train'")
        zoo_weights = r.teacher.pretrained is not None and ":" not in r.teacher.pretrained  # arch.tag, not torchvision:
        if zoo_weights and cast(str, r.teacher.pretrained).partition(".")[0] != r.teacher.arch:
            raise RecipeError(
                f"teacher.pretrained: {r.teacher.pretrained!r} is not a checkpoint of teacher.arch {r.teacher.arch!r}; "
                "make them agree"
            )
        if r.teacher.name is not None:
            if (
                r.teacher.train is None
                or r.teacher.name.partition(".")[0] != r.teacher.arch
                or "." not in r.teacher.name
            ):
                raise RecipeError(
                    f"teacher.name: {r.teacher.name!r} must be '{r.teacher.arch}.TAG' of a trained teacher"
                )
    if r.distill is not None and r.teacher is None:
        raise RecipeError("distill: needs a teacher")
    for where, spec in (("train", r.train), ("teacher.train", r.teacher.train if r.teacher else None)):
        if spec is not None and (spec.epochs < 1 or spec.batch_size < 1 or spec.lr <= 0):
            raise RecipeError(f"{where}: epochs and batch_size must be >= 1 and lr > 0")
    if r.student.search is not None:
        _validate_search(r.student.search)
    _validate_budget(r)


def _validate_budget(r: Recipe) -> None:
    """``budget`` parses, and a student searched under a parameter budget is compared at that budget."""
    from .search.sampler import parse_budget

    if r.budget is None:
        return
    _field("budget", parse_budget, r.budget)
    s = r.student.search
    if s is None or s.budget is None or s.metric != "params":
        return
    if parse_budget(s.budget) != parse_budget(r.budget):
        raise RecipeError(
            f"budget: {r.budget!r} differs from student.search.budget {s.budget!r}; a searched student is compared "
            "at its search budget (leave budget out, or make them agree)"
        )


def _validate_search(s: SearchSpec) -> None:
    """What run_search would refuse, refused here: before a teacher has trained for it."""
    from .search.runner import MAX_SAMPLES
    from .search.sampler import _backbone, parse_budget

    try:
        _backbone(s.backbone)
    except ValueError as e:
        raise RecipeError(f"student.search.backbone: {e}") from None
    if (s.budget is None) == (s.latency is None):
        raise RecipeError(
            "student.search: give exactly one of budget (parameters or MACs) and latency (e.g. 2.5ms); "
            "cap parameters under a latency budget with max_params"
        )
    for name in ("budget", "max_params"):
        if getattr(s, name) is not None:
            _field(f"student.search.{name}", parse_budget, getattr(s, name))
    if s.latency is None and s.max_params is not None:
        raise RecipeError("student.search.max_params: only with a latency budget (budget already caps parameters)")
    if s.latency is not None:
        from .latency import parse_latency

        _field("student.search.latency", parse_latency, s.latency)
        if s.latency_batch < 1:
            raise RecipeError(f"student.search.latency_batch: must be >= 1, got {s.latency_batch}")
        if s.latency_device.split(":")[0] not in ("cpu", "cuda"):
            raise RecipeError(f"student.search.latency_device: cpu, cuda or cuda:N, got {s.latency_device!r}")
    if not 1 <= s.samples <= MAX_SAMPLES:
        raise RecipeError(f"student.search.samples: must be in 1..{MAX_SAMPLES:,}, got {s.samples}")
    _field("student.search.seed", check_seed, s.seed)
    if not 0 <= s.tolerance < 1:
        raise RecipeError(f"student.search.tolerance: must be in [0, 1) (0.025: +-2.5%), got {s.tolerance}")


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Parse recipe text (YAML: safe tags only, no code, no aliases: ``load_yaml``) and validate it."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML (only plain YAML is accepted, no tags): {e}") from None
    try:
        recipe = _build(Recipe, data, "")
        _validate(recipe)
    except (RecipeError, ValueError) as e:
        raise RecipeError(f"{source}: {e}") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return dataclasses.replace(recipe, source=source, sha256=digest)


def list_recipes(kind: str | None = None) -> list[Path]:
    """The recipe files shipped in ``blockswap_zoo/recipes/`` (official and examples)."""
    files = sorted(RECIPES_DIR.glob("**/*.yaml"))
    if kind == "official":
        files = [f for f in files if "examples" not in f.parts]
    return files


def recipe_reference(path: str | Path) -> str:
    """How records and cards name a recipe: ``recipes/<file>`` for a shipped one (``reproduce`` takes that
    anywhere, checkout or wheel), else its absolute path."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(RECIPES_DIR):
        return resolved.relative_to(RECIPES_DIR.parent).as_posix()
    return str(resolved)


def shipped_recipe(reference: str) -> Path | None:
    """The shipped file a ``recipes/<file>`` reference names, or None when it names none."""
    if not reference.startswith("recipes/"):
        return None
    path = (RECIPES_DIR.parent / reference).resolve()
    return path if path.is_relative_to(RECIPES_DIR.resolve()) and path.is_file() else None


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe path, a shipped recipe's reference (``recipes/<file>``), or the shipped recipe whose file stem
    or name matches."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    shipped = shipped_recipe(str(name_or_path))
    if shipped is not None:
        return shipped
    for f in list_recipes():
        if f.stem == str(name_or_path) or f.name == str(name_or_path):
            return f
    names = ", ".join(f.stem for f in list_recipes())
    if not names:
        raise RecipeError(
            f"no recipe {str(name_or_path)!r}: not a recipe file, and this installation ships no recipes (they are "
            "in blockswap_zoo/recipes/ of a full install); pass the path of a recipe file"
        )
    raise RecipeError(f"no recipe {str(name_or_path)!r}: not a file, and not one of the shipped recipes ({names})")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Find (``find_recipe``), read and parse a recipe; RecipeError naming the file for anything unreadable."""
    path = find_recipe(name_or_path)
    try:
        text = read_settings_text(path)
    except SettingsFileError as e:
        raise RecipeError(str(e)) from None
    return parse_recipe(text, str(path))
