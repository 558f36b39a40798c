"""Model registry: the named archs (teachers, baselines, the paper's searched students, published
students). Names are ``arch`` or ``arch.tag``: the arch fixes the structure, the tag names a set of
weights (``pretrained.py``); ``sources.py`` parses names and ``factory.py`` builds models.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from .genotype import Genotype

__all__ = ["Arch", "UnknownModelError", "get_arch", "is_registered", "list_models", "register_arch"]


class UnknownModelError(ValueError):
    """A model name that is not registered."""


@dataclass(frozen=True)
class Arch:
    """A registered architecture: a genotype plus the defaults it was designed for."""

    name: str
    genotype: Genotype
    description: str
    num_classes: int
    in_chans: int = 3
    input_size: tuple[int, int, int] = (3, 32, 32)
    role: str = "student"  # teacher | baseline | student

    @property
    def params(self) -> int:
        return self.genotype.num_params(self.num_classes, self.in_chans)

    @property
    def macs(self) -> int:
        return self.genotype.macs(self.num_classes, self.in_chans, self.input_size[1:])


_ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    if arch.name in _ARCHS:
        raise ValueError(f"arch {arch.name!r} is already registered")
    _ARCHS[arch.name] = arch
    return arch


# The paper's searched CIFAR-10 students of WRN-40-2 (Table 2), from the reference genotype
# files, in this project's notation. Named by their parameter count at 10 classes.
_PAPER_WRN_STUDENTS: dict[str, tuple[str, str]] = {
    "wrn_40_2_bs162k": (
        "BG(2,2) BG(2,M/16) BG(4,M/8) G(N) G(N) BG(2,4) G(N/4) G(N/4) G(N/2) BG(4,M/2) BG(2,8) "
        "BG(2,M/4) BG(2,M/16) BG(4,M/2) BG(4,M/8) BG(2,M/2) BG(4,M/4) B(4)",
        "162.2K, 5.17% CIFAR-10 error",
    ),
    "wrn_40_2_bs217k": (
        "BG(2,16) BG(2,16) B(4) G(N) BG(2,M/16) G(N) BG(2,8) B(2) BG(2,M/2) G(N/16) BG(2,M/4) "
        "BG(2,M/8) G(N/2) BG(2,16) BG(2,8) BG(2,16) BG(2,8) BG(2,M/4)",
        "217.0K, 4.68% CIFAR-10 error",
    ),
    "wrn_40_2_bs289k": (
        "G(16) G(2) G(N/4) G(2) BG(2,8) B(4) G(2) B(2) BG(2,M/4) G(N/8) G(16) BG(2,16) G(N/2) "
        "BG(2,M/16) G(N/4) BG(2,M/8) BG(2,M/2) BG(2,M/8)",
        "289.2K, 4.45% CIFAR-10 error",
    ),
    "wrn_40_2_bs404k": (
        "S G(N/16) G(N) G(2) B(2) G(8) G(N/2) G(N/16) G(8) G(16) G(N/8) G(4) G(N/4) G(N/4) "
        "BG(2,4) G(N/8) G(N/8) BG(2,M/16)",
        "404.2K, 4.21% CIFAR-10 error",
    ),
    "wrn_40_2_bs556k": (
        "G(N/16) BG(2,M/8) G(2) G(N) G(N/16) G(N/4) B(4) BG(2,M/16) G(4) G(N/8) BG(2,2) BG(2,4) "
        "G(N/2) G(2) G(N/16) G(N/2) G(N/16) G(N/2)",
        "556.0K, 4.17% CIFAR-10 error",
    ),
    "wrn_40_2_bs811k": (
        "B(4) S BG(2,16) G(4) G(8) B(4) G(4) S G(16) G(2) S G(N/16) G(N/8) G(2) G(2) BG(2,M/8) BG(2,M/4) G(8)",
        "811.4K, 3.79% CIFAR-10 error",
    ),
    "wrn_40_2_bs1645k": (
        "S G(2) G(2) G(2) G(2) S S G(2) G(2) G(2) G(2) S S G(2) G(2) G(2) G(2) S",
        "1.6M, from the reference genotype bs1.6m",
    ),
}

# The paper's ImageNet students of ResNet-34 (Table 3), built in torchvision's layout.
_PAPER_RESNET_STUDENTS: dict[str, tuple[str, str]] = {
    "resnet34_bs3083k": (
        "G(8) BG(2,M/2) BG(2,M/2) S G(2) G(N/2) B(2) G(16) BG(2,16) BG(2,M/16) G(N/4) BG(2,2) "
        "BG(2,8) BG(2,M/2) G(N/4) BG(2,4)",
        "the paper's 3.1M ImageNet student (29.57% top-1 error)",
    ),
    "resnet34_bs8194k": (
        "BG(2,M/4) G(N/4) BG(2,8) S BG(2,M/4) BG(2,M/16) BG(2,M/8) S BG(2,2) BG(2,8) BG(2,4) G(4) S S G(N) BG(2,M/8)",
        "the paper's 8.1M ImageNet student (26.24% top-1 error)",
    ),
}


def _register_defaults() -> None:
    cifar = (3, 32, 32)
    for name, desc in {
        "wrn_40_2": "WRN-40-2, the paper's CIFAR teacher (2.24M params)",
        "wrn_16_2": "WRN-16-2, depth-scaled baseline (Table 2)",
        "wrn_40_1": "WRN-40-1, width-scaled baseline (Table 2)",
        "wrn_16_1": "WRN-16-1, depth- and width-scaled baseline (Table 2)",
    }.items():
        role = "teacher" if name == "wrn_40_2" else "baseline"
        register_arch(Arch(name, Genotype.uniform(name), desc, 10, input_size=cifar, role=role))
    for name, (blocks, desc) in _PAPER_WRN_STUDENTS.items():
        g = Genotype("wrn_40_2", tuple(blocks.split()))
        register_arch(Arch(name, g, f"BlockSwap student of WRN-40-2, {desc} (paper)", 10, input_size=cifar))
    imagenet = (3, 224, 224)
    register_arch(
        Arch(
            "resnet34",
            Genotype.uniform("resnet34"),
            "ResNet-34 (torchvision layout), the paper's ImageNet teacher",
            1000,
            input_size=imagenet,
            role="teacher",
        )
    )
    register_arch(
        Arch(
            "resnet18",
            Genotype.uniform("resnet18"),
            "ResNet-18 (torchvision layout), baseline (Table 3)",
            1000,
            input_size=imagenet,
            role="baseline",
        )
    )
    for name, (blocks, desc) in _PAPER_RESNET_STUDENTS.items():
        g = Genotype("resnet34", tuple(blocks.split()))
        register_arch(Arch(name, g, f"BlockSwap student of ResNet-34, {desc}", 1000, input_size=imagenet))


def _register_published() -> None:
    """Register the arch of every published record that is not a built-in one (searched students).

    A searched student's genotype is only known once its recipe has run, so its arch lives in
    the record (``pretrained.json``) rather than in this file.
    """
    from .pretrained import load_records

    for w in load_records().values():
        if w.arch not in _ARCHS:
            description = str(w.extra.get("description") or f"BlockSwap student published as {w.name}")
            genotype = Genotype.from_string(w.genotype)
            input_size = cast(tuple[int, int, int], tuple(w.input_size))
            register_arch(Arch(w.arch, genotype, description, w.num_classes, w.in_chans, input_size))


_register_defaults()
_register_published()


def list_models(pattern: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
    """Registered arch names matching a wildcard pattern (or any of several), sorted."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    names = [n for n in _ARCHS if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return sorted(n for n in names if not any(fnmatch.fnmatchcase(n, e) for e in excludes))


def is_registered(arch: str) -> bool:
    """Whether ``arch`` (without a tag) is a registered architecture."""
    return arch in _ARCHS


def get_arch(name: str) -> Arch:
    """The registered arch of ``name`` (a tag, if any, is ignored)."""
    arch = name.partition(".")[0]
    if arch not in _ARCHS:
        close = difflib.get_close_matches(arch, list(_ARCHS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint}. Run `blockswap-zoo list` or list_models() for all "
            f"{len(_ARCHS)} names, or pass a Genotype"
        )
    return _ARCHS[arch]
