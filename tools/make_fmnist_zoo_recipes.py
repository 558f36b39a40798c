"""Write the Fashion-MNIST zoo's recipes into blockswap_zoo/recipes/fmnist_zoo/ (issue 18).

One teacher (WRN-40-2, the paper's 200-epoch schedule), a Fisher-searched BlockSwap student at each of the
paper's seven budgets, and at 200K, 400K and 800K the same-budget baselines, all distilled the same way
from that teacher (the students' shorter schedule is the same for every student and baseline):

- single-blocktype WRN-40-2: the one cheap block type whose network has the most parameters within the
  budget's upper tolerance, so the baseline is never smaller than it must be;
- a random mixed genotype: the sampler's draw within the budget, fixed seed (what the search adds over chance);
- the scaled WRNs of the paper's Table 2, each compared at the smallest budget it fits.

Every student recipe trains the same teacher in its teacher stage, so each reproduces alone;
``blockswap-zoo reproduce`` with several recipes trains that teacher once and shares it.

    python tools/make_fmnist_zoo_recipes.py [--check]   # --check: exit 1 if the files differ from what it writes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blockswap_zoo.blocks import sampled_block_names
from blockswap_zoo.genotype import Genotype
from blockswap_zoo.search import parse_budget, sample_genotypes

OUT = Path(__file__).resolve().parents[1] / "blockswap_zoo" / "recipes" / "fmnist_zoo"
BACKBONE = "wrn_40_2"
BUDGETS = ("150k", "200k", "250k", "400k", "500k", "800k", "1.6m")
BASELINE_BUDGETS = ("200k", "400k", "800k")
SCALED_WRNS = ("wrn_16_1", "wrn_40_1", "wrn_16_2")
TOLERANCE = 0.025
RANDOM_SEED = 2026  # not the search's seed 0, so the random baseline is not the search's first candidate
NUM_CLASSES, IN_CHANS, HW = 10, 1, (28, 28)
TEACHER = "wrn_40_2.fmnist_e200"
TEACHER_EPOCHS, STUDENT_EPOCHS = 200, 30
STUDENT_TAG = f"fmnist_at_e{STUDENT_EPOCHS}"

HEADER = """\
# Official, Fashion-MNIST zoo (issue 18). Written by tools/make_fmnist_zoo_recipes.py: edit that, not this.
# {what}
# Augmentation: Fashion-MNIST's default (pad-4 crop, flip, Cutout 14). No expected metric until it has run.
"""


def _optim(epochs: int) -> str:
    return (
        f"    epochs: {epochs}\n    batch_size: 128\n    lr: 0.1\n    momentum: 0.9\n    weight_decay: 0.0005\n"
        "    schedule: cosine\n"
    )


def _teacher_stage() -> str:
    return f"teacher:\n  arch: {BACKBONE}\n  name: {TEACHER}\n  train:\n{_optim(TEACHER_EPOCHS)}"


def _student_recipe(name: str, what: str, description: str, role: str, budget: str, student: str) -> str:
    return (
        HEADER.format(what=what)
        + f"name: {name}\nkind: official\nrole: {role}\nbudget: {budget}\ndescription: {description}\n"
        + "dataset:\n  name: fashion_mnist\nseed: 0\n"
        + _teacher_stage()
        + student
        + "distill:\n  beta: 1000\n  at_mode: code\n"
        + "train:\n"
        + _optim(STUDENT_EPOCHS).replace("    ", "  ")
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


def recipes() -> dict[str, str]:
    """File name -> recipe text, for every zoo recipe."""
    out = {
        f"{TEACHER}.yaml": HEADER.format(what="The teacher: WRN-40-2 with the paper's schedule (200 epochs, cosine).")
        + f"name: {TEACHER}\nkind: official\nrole: teacher\n"
        + "description: WRN-40-2 teacher for the Fashion-MNIST zoo, trained with the paper's 200-epoch schedule\n"
        + f"dataset:\n  name: fashion_mnist\nseed: 0\nteacher: null\nstudent:\n  genotype: {BACKBONE}\ntrain:\n"
        + _optim(TEACHER_EPOCHS).replace("    ", "  ")
    }
    for budget in BUDGETS:
        tag = _budget_tag(budget)
        search = (
            f"student:\n  search:\n    backbone: {BACKBONE}\n    budget: {budget}\n    metric: params\n"
            f"    tolerance: {TOLERANCE}\n    samples: 1000\n    proxy: fisher\n    mode: exact\n    seed: 0\n"
        )
        name = f"{BACKBONE}_bs{tag}.{STUDENT_TAG}"
        out[f"{name}.yaml"] = _student_recipe(
            name, f"BlockSwap at {tag}: a 1000-candidate Fisher-potential search (exact mode), then AT distillation.",
            f"Fisher-potential-searched {tag}-parameter student of WRN-40-2, distilled with attention transfer "
            f"from {TEACHER} on Fashion-MNIST", "student", budget, search,
        )  # fmt: skip
    for budget in BASELINE_BUDGETS:
        tag = _budget_tag(budget)
        uniform = single_blocktype(budget)
        block = uniform.blocks[0]
        name = f"{BACKBONE}_{_arch_of_block(block)}.{STUDENT_TAG}"
        out[f"{name}.yaml"] = _student_recipe(
            name, f"Single-blocktype baseline at {tag}: every block {block} ({_params(uniform):,} parameters), "
            "the type with the most parameters within the budget.",
            f"WRN-40-2 with every block {block}, the single-blocktype baseline at {tag}, distilled with attention "
            f"transfer from {TEACHER} on Fashion-MNIST", "baseline", budget,
            f"student:\n  genotype: {uniform.to_string()}\n",
        )  # fmt: skip
        drawn = sample_genotypes(BACKBONE, budget, 1, RANDOM_SEED, TOLERANCE, "params", NUM_CLASSES, IN_CHANS, HW)[0]
        name = f"{BACKBONE}_rand{tag}.{STUDENT_TAG}"
        out[f"{name}.yaml"] = _student_recipe(
            name, f"Random baseline at {tag}: the sampler's draw (seed {RANDOM_SEED}, +-{TOLERANCE:.1%}), "
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
            name, f"Scaled-WRN baseline (the paper's Table 2): {arch}, {p:,} parameters, compared at {budget}.",
            f"{arch.upper().replace('_', '-')}, a scaled-WRN baseline, distilled with attention transfer from "
            f"{TEACHER} on Fashion-MNIST", "baseline", budget, f"student:\n  genotype: {arch}\n",
        )  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be written")
    args = parser.parse_args()
    wanted = recipes()
    present = {p.name: p.read_text() for p in OUT.glob("*.yaml")} if OUT.is_dir() else {}
    if args.check:
        stale = sorted(set(wanted) ^ set(present) | {n for n in wanted if present.get(n) != wanted[n]})
        for n in stale:
            print(f"differs: {OUT / n}", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for n, text in wanted.items():
        (OUT / n).write_text(text)
    for n in set(present) - set(wanted):
        (OUT / n).unlink()
    print(f"wrote {len(wanted)} recipes to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
