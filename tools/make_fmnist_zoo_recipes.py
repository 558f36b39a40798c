"""Write the Fashion-MNIST zoos' recipes into blockswap_zoo/recipes/fmnist_zoo/ (the GPU zoo, issue 18) and
blockswap_zoo/recipes/fmnist_cpu_zoo/ (the same zoo with schedules sized for a 2-core CPU, issue 30).

Each zoo: one teacher (WRN-40-2), a Fisher-searched BlockSwap student at each of the paper's seven budgets, and at 200K, 400K and 800K the same-budget baselines, all distilled the same way
from that teacher (the students' shorter schedule is the same for every student and baseline):

- single-blocktype WRN-40-2: the one cheap block type whose network has the most parameters within the
  budget's upper tolerance, so the baseline is never smaller than it must be;
- a random mixed genotype: the sampler's draw within the budget, fixed seed (what the search adds over chance);
- the scaled WRNs of the paper's Table 2, each compared at the smallest budget it fits.

Every student recipe of a zoo trains the same teacher in its teacher stage, so each reproduces alone;
``blockswap-zoo reproduce`` with several recipes trains that teacher once and shares it. The two zoos differ
in their epochs only (and so in their names' tags); their searches are the same.

    python tools/make_fmnist_zoo_recipes.py [--check]   # --check: exit 1 if the files differ from what it writes
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from blockswap_zoo.blocks import sampled_block_names
from blockswap_zoo.genotype import Genotype
from blockswap_zoo.search import parse_budget, sample_genotypes

RECIPES = Path(__file__).resolve().parents[1] / "blockswap_zoo" / "recipes"
BACKBONE = "wrn_40_2"
BUDGETS = ("150k", "200k", "250k", "400k", "500k", "800k", "1.6m")
BASELINE_BUDGETS = ("200k", "400k", "800k")
SCALED_WRNS = ("wrn_16_1", "wrn_40_1", "wrn_16_2")
TOLERANCE = 0.025
RANDOM_SEED = 2026  # not the search's seed 0, so the random baseline is not the search's first candidate
NUM_CLASSES, IN_CHANS, HW = 10, 1, (28, 28)


@dataclass(frozen=True)
class Zoo:
    """One zoo's folder and schedules; every student and baseline of a zoo is distilled alike."""

    folder: str
    title: str  # "zoo" or "CPU zoo", after "Fashion-MNIST" in each recipe's header
    issue: str
    teacher_epochs: int
    student_epochs: int
    schedule: str  # the teacher's schedule, for its header
    why: str  # the teacher's schedule, for its description

    @property
    def out(self) -> Path:
        return RECIPES / self.folder

    @property
    def teacher(self) -> str:
        return f"wrn_40_2.fmnist_e{self.teacher_epochs}"

    @property
    def student_tag(self) -> str:
        return f"fmnist_at_e{self.student_epochs}"

    @property
    def header(self) -> str:
        return (
            f"# Official, Fashion-MNIST {self.title} ({self.issue}). Written by "
            "tools/make_fmnist_zoo_recipes.py: edit that, not this.\n# {what}\n"
            "# Augmentation: Fashion-MNIST's default (pad-4 crop, flip, Cutout 14). No expected metric until it has "
            "run.\n"
        )


ZOOS = (
    Zoo("fmnist_zoo", "zoo", "issue 18", 200, 30, "the paper's schedule", "the paper's 200-epoch schedule"),
    # sized for a 2-core CPU (issue 30): the teacher's 50 epochs (about 2.8 h) for >= 95% top-1; the students'
    # 6 epochs follow from the measured distillation speed (docs/benchmarks.md) so that the zoo fits 10 CPU-hours
    Zoo(
        "fmnist_cpu_zoo",
        "CPU zoo",
        "issue 30",
        50,
        6,
        "a schedule sized for a 2-core CPU",
        "a 50-epoch schedule sized for a 2-core CPU",
    ),
)


def _optim(epochs: int) -> str:
    return (
        f"    epochs: {epochs}\n    batch_size: 128\n    lr: 0.1\n    momentum: 0.9\n    weight_decay: 0.0005\n"
        "    schedule: cosine\n"
    )


def _teacher_stage(zoo: Zoo) -> str:
    return f"teacher:\n  arch: {BACKBONE}\n  name: {zoo.teacher}\n  train:\n{_optim(zoo.teacher_epochs)}"


def _student_recipe(zoo: Zoo, name: str, what: str, description: str, role: str, budget: str, student: str) -> str:
    return (
        zoo.header.format(what=what)
        + f"name: {name}\nkind: official\nrole: {role}\nbudget: {budget}\ndescription: {description}\n"
        + "dataset:\n  name: fashion_mnist\nseed: 0\n"
        + _teacher_stage(zoo)
        + student
        + "distill:\n  beta: 1000\n  at_mode: code\n"
        + "train:\n"
        + _optim(zoo.student_epochs).replace("    ", "  ")
    )


def _budget_tag(budget: str) -> str:
    return f"{round(parse_budget(budget) / 1000)}k"


def _params(g: Genotype) -> int:
    return g.num_params(NUM_CLASSES, IN_CHANS)


def single_blocktype(budget: str) -> Genotype:
    """The uniform genotype with the most parameters within ``budget``'s upper tolerance."""
    cap = parse_budget(budget) * (1 + TOLERANCE)
    fits = [Genotype.uniform(BACKBONE, b) for b in sampled_block_names()]
    return max((g for g in fits if _params(g) <= cap), key=_params)


def _arch_of_block(block: str) -> str:
    """G(16) -> g16, BG(2,M/8) -> bg2_m8: a block type as an arch-name part."""
    inner = block.replace("(", "_").replace(")", "").replace(",", "_").replace("/", "").lower()
    return inner.replace("_", "", 1) if inner.startswith(("g_", "b_")) else inner.replace("bg_", "bg", 1)


def scaled_wrn_budget(arch: str) -> str:
    """The smallest of the seven budgets whose upper tolerance the scaled WRN fits."""
    p = _params(Genotype.uniform(arch))
    return next(b for b in BUDGETS if p <= parse_budget(b) * (1 + TOLERANCE))


def recipes(zoo: Zoo) -> dict[str, str]:
    """File name -> recipe text, for every recipe of ``zoo``."""
    TEACHER, STUDENT_TAG = zoo.teacher, zoo.student_tag  # noqa: N806 - the zoo's constants
    out = {
        f"{TEACHER}.yaml": zoo.header.format(
            what=f"The teacher: WRN-40-2 with {zoo.schedule} ({zoo.teacher_epochs} epochs, cosine)."
        )
        + f"name: {TEACHER}\nkind: official\nrole: teacher\n"
        + f"description: WRN-40-2 teacher for the Fashion-MNIST zoo, trained with {zoo.why}\n"
        + f"dataset:\n  name: fashion_mnist\nseed: 0\nteacher: null\nstudent:\n  genotype: {BACKBONE}\ntrain:\n"
        + _optim(zoo.teacher_epochs).replace("    ", "  ")
    }
    for budget in BUDGETS:
        tag = _budget_tag(budget)
        search = (
            f"student:\n  search:\n    backbone: {BACKBONE}\n    budget: {budget}\n    metric: params\n"
            f"    tolerance: {TOLERANCE}\n    samples: 1000\n    proxy: fisher\n    mode: exact\n    seed: 0\n"
        )
        name = f"{BACKBONE}_bs{tag}.{STUDENT_TAG}"
        out[f"{name}.yaml"] = _student_recipe(
            zoo, name, f"BlockSwap at {tag}: a 1000-candidate Fisher-potential search (exact mode), then AT distillation.",
            f"Fisher-potential-searched {tag}-parameter student of WRN-40-2, distilled with attention transfer "
            f"from {TEACHER} on Fashion-MNIST", "student", budget, search,
        )  # fmt: skip
    for budget in BASELINE_BUDGETS:
        tag = _budget_tag(budget)
        uniform = single_blocktype(budget)
        block = uniform.blocks[0]
        name = f"{BACKBONE}_{_arch_of_block(block)}.{STUDENT_TAG}"
        out[f"{name}.yaml"] = _student_recipe(
            zoo, name, f"Single-blocktype baseline at {tag}: every block {block} ({_params(uniform):,} parameters), "
            "the type with the most parameters within the budget.",
            f"WRN-40-2 with every block {block}, the single-blocktype baseline at {tag}, distilled with attention "
            f"transfer from {TEACHER} on Fashion-MNIST", "baseline", budget,
            f"student:\n  genotype: {uniform.to_string()}\n",
        )  # fmt: skip
        drawn = sample_genotypes(BACKBONE, budget, 1, RANDOM_SEED, TOLERANCE, "params", NUM_CLASSES, IN_CHANS, HW)[0]
        name = f"{BACKBONE}_rand{tag}.{STUDENT_TAG}"
        out[f"{name}.yaml"] = _student_recipe(
            zoo, name, f"Random baseline at {tag}: the sampler's draw (seed {RANDOM_SEED}, +-{TOLERANCE:.1%}), "
            f"{_params(drawn):,} parameters, no search.",
            f"A random mixed-blocktype {tag}-parameter student of WRN-40-2 (no search), distilled with attention "
            f"transfer from {TEACHER} on Fashion-MNIST", "baseline", budget,
            f"student:\n  genotype: {drawn.to_string()}\n",
        )  # fmt: skip
    for arch in SCALED_WRNS:
        budget = scaled_wrn_budget(arch)
        p = _params(Genotype.uniform(arch))
        name = f"{arch}.{STUDENT_TAG}"
        out[f"{name}.yaml"] = _student_recipe(
            zoo, name, f"Scaled-WRN baseline (the paper's Table 2): {arch}, {p:,} parameters, compared at {budget}.",
            f"{arch.upper().replace('_', '-')}, a scaled-WRN baseline, distilled with attention transfer from "
            f"{TEACHER} on Fashion-MNIST", "baseline", budget, f"student:\n  genotype: {arch}\n",
        )  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be written")
    args = parser.parse_args()
    stale_any = False
    for zoo in ZOOS:
        wanted, out = recipes(zoo), zoo.out
        present = {p.name: p.read_text() for p in out.glob("*.yaml")} if out.is_dir() else {}
        if args.check:
            stale = sorted(set(wanted) ^ set(present) | {n for n in wanted if present.get(n) != wanted[n]})
            for n in stale:
                print(f"differs: {out / n}", file=sys.stderr)
            stale_any = stale_any or bool(stale)
            continue
        out.mkdir(parents=True, exist_ok=True)
        for n, text in wanted.items():
            (out / n).write_text(text)
        for n in set(present) - set(wanted):
            (out / n).unlink()
        print(f"wrote {len(wanted)} recipes to {out}")
    return 1 if stale_any else 0


if __name__ == "__main__":
    sys.exit(main())
