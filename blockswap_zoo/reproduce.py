"""``reproduce``: recipe -> teacher -> student genotype (fixed or searched) -> distillation ->
evaluation -> checkpoint directory. Each stage writes into the run directory and is skipped
when its output is already there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .dir_lock import lock_directory
from .genotype import Genotype
from .io import atomic_write_text
from .recipe import OptimSpec, Recipe, RecipeError, recipe_reference
from .sources import resolve_genotype

if TYPE_CHECKING:
    from .models import SwapNet

__all__ = [
    "ReproduceResult",
    "check_run_dir",
    "distill_group_key",
    "plan",
    "preflight",
    "reproduce",
    "reproduce_together",
    "stage_costs",
    "student_genotype_of",
    "training_summary",
]


@dataclass(frozen=True)
class ReproduceResult:
    run_dir: Path
    checkpoint_dir: Path
    metrics: dict[str, float]
    passed: bool | None  # None: no expectation checked (smoke run or no expected metric)
    message: str


def student_genotype_of(recipe: Recipe) -> Genotype | None:
    """The fixed student genotype (a registered arch, backbone or genotype text); None when it is searched."""
    return None if recipe.student.genotype is None else resolve_genotype(recipe.student.genotype)


def _train_kwargs(spec: OptimSpec) -> dict[str, Any]:
    return {
        "epochs": spec.epochs, "batch_size": spec.batch_size, "lr": spec.lr, "momentum": spec.momentum,
        "nesterov": spec.nesterov, "weight_decay": spec.weight_decay, "schedule": spec.schedule,
        "step_size": spec.step_size, "gamma": spec.step_gamma, "warmup_epochs": float(spec.warmup_epochs),
        "label_smoothing": spec.label_smoothing, "subset": spec.subset,
    }  # fmt: skip


def preflight(recipe: Recipe, max_steps: int | None = None) -> None:
    """Refuse, before anything is written or trained, what a stage would only refuse hours later: a budget
    no student meets, training settings TrainConfig rejects, a student whose stages the teacher lacks, data
    that is missing or unreadable or smaller than a batch, a teacher source that does not resolve."""
    from .data import get_dataset_info
    from .search import BudgetError, sample_genotypes
    from .train import ConfigError, TrainConfig

    if max_steps is not None and max_steps < 1:
        raise RecipeError(f"--max-steps must be >= 1, got {max_steps}")
    info = get_dataset_info(recipe.dataset.name)
    n_train = _check_data(recipe)
    for where, spec in (("train", recipe.train), ("teacher.train", recipe.teacher.train if recipe.teacher else None)):
        available = min(spec.subset or n_train, n_train) if spec is not None else 0
        if spec is not None and spec.batch_size > available:
            of = f"the {spec.subset:,}-image subset" if spec.subset and spec.subset < n_train else "the training split"
            raise RecipeError(
                f"{recipe.source}: {where}.batch_size {spec.batch_size} is larger than {of} "
                f"({available:,} images); lower the batch size or raise the subset"
            )
    if recipe.teacher is not None and recipe.teacher.pretrained is not None:
        _check_teacher_source(recipe)
    s = recipe.student.search
    student = student_genotype_of(recipe)
    if s is not None and s.budget is None:  # a latency budget: its table is measured when the search runs
        student = Genotype.uniform(s.backbone)  # the largest student the search can pick: a bound for the checks
    elif s is not None and s.budget is not None:
        try:
            student = sample_genotypes(s.backbone, s.budget, 1, s.seed, s.tolerance, s.metric, info.num_classes,
                                       info.in_chans, tuple(info.input_size[1:]))[0]  # fmt: skip
        except BudgetError as e:
            raise RecipeError(f"{recipe.source}: student.search: {e}") from None
    assert student is not None
    stages = [("train", recipe.train, student.to_string())]
    if recipe.teacher is not None and recipe.teacher.train is not None:
        stages.append(("teacher.train", recipe.teacher.train, recipe.teacher.arch))
    for where, spec, arch in stages:
        try:
            TrainConfig(arch=arch, dataset=info.name, seed=recipe.seed, max_steps=max_steps, **_train_kwargs(spec),
                        **(_distill_kwargs(recipe) if where == "train" else {}))  # fmt: skip
        except ConfigError as e:
            raise RecipeError(f"{recipe.source}: {where}: {e}") from None
    if recipe.teacher is not None and recipe.distill is not None:
        teacher_stages = len(resolve_genotype(recipe.teacher.arch).backbone_spec.stage_depths)
        if len(student.backbone_spec.stage_depths) != teacher_stages:
            raise RecipeError(
                f"{recipe.source}: the student ({student.backbone}) has {len(student.backbone_spec.stage_depths)} "
                f"stages but the teacher ({recipe.teacher.arch}) {teacher_stages}: attention transfer pairs stages"
            )


def _check_data(recipe: Recipe) -> int:
    """Both splits of the recipe's dataset found and readable (DatasetNotFoundError / DatasetError, which name
    where they looked and how to get the data); returns the number of training images."""
    from .data import get_dataset_info, image_folder, load_arrays

    info = get_dataset_info(recipe.dataset.name)
    data_dir = recipe.dataset.data_dir
    if info.in_memory:
        load_arrays(info.name, "test", data_dir)
        return len(load_arrays(info.name, "train", data_dir))
    image_folder(info.name, "val", data_dir, None)
    return len(image_folder(info.name, "train", data_dir, None))


def _check_teacher_source(recipe: Recipe) -> None:
    """``teacher.pretrained`` resolves to weights for ``teacher.arch``: a published record, a checkpoint
    directory (``local-dir:``; ``hf-hub:`` is pulled or found in the cache), or a torchvision weights enum."""
    from .checkpoint import read_checkpoint_config
    from .pretrained import get_weights
    from .sources import checkpoint_directory, parse_source

    t = recipe.teacher
    assert t is not None and t.pretrained is not None
    where = f"{recipe.source}: teacher.pretrained {t.pretrained!r}"
    try:
        if t.pretrained.startswith("torchvision:"):
            import torchvision

            torchvision.models.get_weight(t.pretrained.split(":", 1)[1])
        elif (source := parse_source(t.pretrained, files=False)).kind in ("checkpoint_dir", "hf_hub"):
            read_checkpoint_config(checkpoint_directory(source))
        else:
            get_weights(t.pretrained)
    except (ValueError, KeyError, AttributeError, FileNotFoundError) as e:
        raise RecipeError(
            f"{where} does not resolve ({e}); use a published name (`blockswap-zoo list --pretrained`), "
            "local-dir:PATH, hf-hub:ORG/NAME or torchvision:ENUM.WEIGHTS"
        ) from None


def _distill_kwargs(recipe: Recipe) -> dict[str, Any]:
    d = recipe.distill
    return {
        "beta": d.beta if d else 1000.0, "at_mode": d.at_mode if d else "code",
        "kd_alpha": d.kd_alpha if d else 0.0, "kd_temperature": d.kd_temperature if d else 4.0,
    }  # fmt: skip


def plan(recipe: Recipe) -> dict[str, Any]:
    """The resolved plan and its cost: steps, images seen and training MACs of each stage."""
    from .data import get_dataset_info

    info = get_dataset_info(recipe.dataset.name)
    n_train = {"fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}[info.name]
    hw = cast(tuple[int, int], tuple(info.input_size[1:]))
    out: dict[str, Any] = {
        "recipe": recipe.name,
        "source": recipe.source,
        "sha256": recipe.sha256,
        "dataset": info.name,
    }

    def stage(genotype: Genotype, spec: OptimSpec, extra_forward_macs: int = 0) -> dict[str, Any]:
        images = (min(spec.subset or n_train, n_train) // spec.batch_size) * spec.batch_size * spec.epochs
        macs = genotype.macs(info.num_classes, info.in_chans, hw)
        return {
            "genotype": genotype.to_string(),
            "params": genotype.num_params(info.num_classes, info.in_chans),
            "macs_per_image": macs,
            "steps": (min(spec.subset or n_train, n_train) // spec.batch_size)
            * spec.epochs,  # last partial batch dropped
            "images": images,
            "train_macs": images * (3 * macs + extra_forward_macs),  # forward + backward ~ 3x forward
        }

    teacher_g = None
    if recipe.teacher is not None:
        teacher_g = resolve_genotype(recipe.teacher.arch)
        if recipe.teacher.train is not None:
            out["teacher"] = {"arch": recipe.teacher.arch, "train": stage(teacher_g, recipe.teacher.train)}
        else:
            out["teacher"] = {"arch": recipe.teacher.arch, "pretrained": recipe.teacher.pretrained}
    fixed = student_genotype_of(recipe)
    if fixed is None:
        s = recipe.student.search
        assert s is not None
        out["search"] = {"backbone": s.backbone, "budget": s.budget, "metric": s.metric, "samples": s.samples,
                         "proxy": s.proxy, "mode": s.mode, "seed": s.seed}  # fmt: skip
        if s.latency is not None:
            out["search"] |= {"latency": s.latency, "latency_device": s.latency_device,
                              "latency_batch": s.latency_batch, "latency_dtype": s.latency_dtype,
                              "max_params": s.max_params}  # fmt: skip
        fixed = Genotype.uniform(s.backbone)  # cost bound: the search's student is at most this big
        out["student_cost_note"] = "student cost shown for the all-S backbone (an upper bound before the search)"
    teacher_fwd = teacher_g.macs(info.num_classes, info.in_chans, hw) if (teacher_g and recipe.distill) else 0
    out["student"] = stage(fixed, recipe.train, teacher_fwd)
    total = out["student"]["train_macs"] + out.get("teacher", {}).get("train", {}).get("train_macs", 0)
    out["total_train_macs"] = total
    out["expected"] = None if recipe.expected is None else vars(recipe.expected)
    return out


STAGES = ("teacher", "search", "student")


def _jsonl_sum(path: Path, key: str) -> float:
    if not path.is_file():
        return 0.0
    return sum(float(json.loads(line).get(key, 0.0)) for line in path.read_text().splitlines() if line.strip())


def _json_field(path: Path, *keys: str) -> str | None:
    """A nested field of a JSON file, or None when the file or a key is missing."""
    if not path.is_file():
        return None
    value: Any = json.loads(path.read_text())
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return str(value)


def stage_costs(run_dir: Path) -> dict[str, tuple[float, str | None]]:
    """(seconds, hardware) of each stage of a run that did work, summed over resumed sessions.

    Read from the stages' own records (per-epoch ``epoch_time_s``, per-candidate ``seconds``, and
    the device each stage recorded), so a run interrupted on one machine and finished on another
    reports its whole cost; evaluation passes are not included.
    """
    search_env = run_dir / "search" / "environment.json"
    costs = {
        "teacher": (_jsonl_sum(run_dir / "teacher" / "metrics.jsonl", "epoch_time_s"),
                    _json_field(run_dir / "teacher" / "config.json", "metrics", "device_name")),
        "search": (_jsonl_sum(run_dir / "search" / "candidates.jsonl", "seconds"),
                   _json_field(search_env, "gpu") or f"CPU ({_json_field(search_env, 'processor')})"),
        "student": (_jsonl_sum(run_dir / "student" / "metrics.jsonl", "epoch_time_s"),
                    _json_field(run_dir / "student" / "config.json", "metrics", "device_name")),
    }  # fmt: skip
    return {name: cost for name, cost in costs.items() if cost[0] > 0}


def _schedule(spec: OptimSpec) -> str:
    return f"{spec.epochs} epochs, {spec.schedule} lr {spec.lr}, batch {spec.batch_size}"


def training_summary(
    recipe: Recipe, run_dir: Path, device: str, max_steps: int | None = None, stages: tuple[str, ...] = STAGES
) -> str:
    """One line for a model card: the schedule, and each stage's measured cost and hardware.

    ``device`` names the hardware of a stage that did not record its own.
    """
    costs = stage_costs(run_dir)
    t = recipe.teacher
    if stages == ("teacher",):
        assert t is not None and t.train is not None
        what = f"the teacher stage of recipe {Path(recipe.source).name}: {t.arch}, {_schedule(t.train)}"
    elif recipe.role == "teacher" and t is None:
        what = f"recipe {Path(recipe.source).name}: {recipe.arch}, {_schedule(recipe.train)}"
    else:
        teacher = "none" if t is None else t.arch + (f" ({t.train.epochs} epochs)" if t.train else f" ({t.pretrained})")
        what = f"recipe {Path(recipe.source).name}: teacher {teacher}, student {_schedule(recipe.train)}"
    parts = [f"{name} {costs[name][0] / 60:.1f} min on {costs[name][1] or device}" for name in stages if name in costs]
    total = sum(costs[name][0] for name in stages if name in costs)
    smoke = f"SMOKE RUN (--max-steps {max_steps}) " if max_steps is not None else ""
    return f"{smoke}{what}; measured: {', '.join(parts)} ({total / 60:.1f} min in all, evaluation not counted)"


def _environment() -> dict[str, Any]:
    from . import __version__
    from .train.distributed import device_name, resolve_device

    dev = device_name(resolve_device("auto"))
    return {
        "package_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "device": dev, "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
    }  # fmt: skip


def _load_teacher(recipe: Recipe, run_dir: Path, device: str, max_steps: int | None, resume: bool) -> nn.Module:
    from .factory import create_model
    from .train import TrainConfig, load_run, train

    t = recipe.teacher
    assert t is not None
    info_name = recipe.dataset.name
    if t.pretrained is not None:
        if t.pretrained.startswith("torchvision:"):
            import torchvision

            weights = torchvision.models.get_weight(t.pretrained.split(":", 1)[1])
            model = create_model(t.arch)
            model.load_state_dict(weights.get_state_dict(progress=True), strict=True)
            return model
        return create_model(t.pretrained, pretrained=True)
    out = run_dir / "teacher"
    if (out / "model.safetensors").is_file():
        return load_run(out)
    assert t.train is not None
    cfg = TrainConfig(
        arch=t.arch, dataset=info_name, data_dir=recipe.dataset.data_dir, seed=recipe.seed, device=device,
        max_steps=max_steps, **_train_kwargs(t.train),
    )  # fmt: skip
    return train(cfg, out_dir=out, resume=resume and out.exists()).model  # type: ignore[return-value]


def _search(recipe: Recipe, run_dir: Path, device: str, max_steps: int | None, resume: bool) -> Genotype:
    from .search import parse_budget, run_search

    s = recipe.student.search
    assert s is not None
    out = run_dir / "search"
    winner = out / "winner.json"
    if winner.is_file():
        return Genotype.load(winner)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    latency = None
    if s.latency is not None:
        from .latency import parse_latency
        from .latency.budget import LatencyBudget

        cap = None if s.max_params is None else parse_budget(s.max_params)
        latency = LatencyBudget(parse_latency(s.latency), s.latency_device, s.latency_batch, s.latency_dtype,
                                max_params=cap)  # fmt: skip
    result = run_search(
        s.backbone, s.budget, min(s.samples, 8) if max_steps else s.samples, metric=s.metric,
        tolerance=s.tolerance, proxy=s.proxy, mode=s.mode, seed=s.seed, dataset=recipe.dataset.name,
        data_dir=recipe.dataset.data_dir, device=device, workers="auto", report_dir=out,
        resume=resume and out.exists(), latency=latency,
    )  # fmt: skip
    return result.winner


def _write_checkpoint(
    model: nn.Module,
    ckpt_dir: Path,
    recipe: Recipe,
    *,
    name: str,
    role: str,
    description: str,
    teacher: str | None,
    training: str,
    stage_dir: Path,
    smoke: bool = False,
    wall: float | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (fp32, test split) and write its checkpoint directory: weights, config, recipe,
    per-epoch metrics and model card. Returns the config written."""
    from .cards import model_card
    from .checkpoint import save_checkpoint_dir
    from .data import get_dataset_info
    from .train import evaluate

    metrics = evaluate(model.eval(), recipe.dataset.name, data_dir=recipe.dataset.data_dir)
    info = get_dataset_info(recipe.dataset.name)
    label_names = list(info.label_names)
    if (stage_dir / "config.json").is_file():  # the training run's: an image folder's class names
        label_names = (
            json.loads((stage_dir / "config.json").read_text(encoding="utf-8")).get("label_names") or label_names
        )
    config: dict[str, Any] = {
        "name": name, "arch": name.partition(".")[0], "role": role, "description": description,
        "dataset": info.name, "label_names": label_names, "input_size": list(info.input_size),
        "mean": list(info.mean), "std": list(info.std), "metrics": {k: float(v) for k, v in metrics.items()},
        "teacher": teacher, "recipe": recipe_reference(recipe.source), "recipe_sha256": recipe.sha256,
        "license": recipe.license, "training": training,
        "eval_command": f"blockswap-zoo evaluate {name} --dataset {recipe.dataset.name}",
        "eval_transform": "normalise with the dataset mean/std, no augmentation", "environment": _environment(),
        "smoke": smoke,
    }  # fmt: skip
    if recipe.budget is not None and role != "teacher":  # the budget a zoo table compares the model at
        from .search import parse_budget

        config["budget"] = parse_budget(recipe.budget)
    if wall is not None:
        config["wall_seconds"] = round(wall, 1)
    full = save_checkpoint_dir(cast("SwapNet", model), ckpt_dir, config, overwrite=True)
    atomic_write_text(ckpt_dir / "recipe.yaml", Path(recipe.source).read_text())
    if (stage_dir / "metrics.jsonl").is_file():
        shutil.copyfile(stage_dir / "metrics.jsonl", ckpt_dir / "metrics.jsonl")
    atomic_write_text(ckpt_dir / "README.md", model_card(name, full))
    return full


RUN_KIND = "run.json"  # {"max_steps": null} for a full run, N for a smoke run


def check_run_dir(recipe: Recipe, run_dir: Path, resume: bool, force: bool, max_steps: int | None) -> None:
    """Whether ``run_dir`` can take this run as asked (new, resumed, or replaced with ``force``); FileExistsError
    with the fix if not. Writes nothing: the dry run asks it too."""
    marker = run_dir / "recipe.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file, not a directory; choose a directory for the run")
    if run_dir.exists() and any(run_dir.iterdir()):
        if force:
            if not marker.is_file() and not (run_dir / RUN_KIND).is_file():
                raise FileExistsError(f"{run_dir} is not a reproduce run (no recipe.yaml); --force only replaces runs")
            return
        if not resume:
            raise FileExistsError(f"{run_dir} is not empty; pass --resume to continue it or --force to start over")
        if marker.is_file() and marker.read_text() != Path(recipe.source).read_text():
            raise FileExistsError(f"{run_dir} was started from a different recipe; use another --out or --force")
    _check_same_kind_of_run(run_dir, max_steps)


def _check_same_kind_of_run(run_dir: Path, max_steps: int | None) -> None:
    """A resumed run keeps its kind: a smoke run's finished stages must not end up in a 'full' checkpoint."""
    kind = run_dir / RUN_KIND
    if not kind.is_file():
        return
    before = json.loads(kind.read_text()).get("max_steps")
    if before != max_steps:
        what = f"a smoke run (--max-steps {before})" if before is not None else "a full run"
        again = f"--max-steps {before}" if before is not None else "no --max-steps"
        raise FileExistsError(
            f"{run_dir} holds {what}; resume it with {again}, or start over with --force or another --out"
        )


def reproduce(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    max_steps: int | None = None,
    device: str = "auto",
    search_only: bool = False,
) -> ReproduceResult:
    """Run the whole recipe into ``run_dir``; the checkpoint lands in ``run_dir/checkpoint`` (and a
    teacher the recipe names and trains in ``run_dir/teacher_checkpoint``). ``search_only`` runs the
    student search alone (into ``run_dir/search``; a later run resumes after it), e.g. on a CPU before
    the training goes to a GPU."""
    run_dir = Path(run_dir)
    if search_only and recipe.student.search is None:
        preflight(recipe, max_steps)
        raise RecipeError(f"{recipe.source}: --search-only: the recipe's student is fixed, it has no search")
    preflight(recipe, max_steps)  # nothing is written, not even the run's folder, for a recipe that cannot run
    check_run_dir(recipe, run_dir, resume, force, max_steps)
    with lock_directory(run_dir, "reproduce run"):
        _start_run(recipe, run_dir, resume, force, max_steps)
        if search_only:
            winner = _search(recipe, run_dir, device, max_steps, resume)
            return ReproduceResult(run_dir, run_dir / "search", {}, None, f"{recipe.name}: searched, winner {winner}")
        return _reproduce_locked([recipe], [run_dir], resume, max_steps, device)[0]


def reproduce_together(
    recipes: list[Recipe],
    run_dirs: list[Path],
    resume: bool = True,
    max_steps: int | None = None,
    device: str = "auto",
) -> list[ReproduceResult]:
    """Reproduce several recipes that distil from the same teacher with the same data and schedule, their
    students trained in one pass (``train_together``: the teacher runs once per batch); each run in its own
    directory, resumable on its own, each student as it would be alone. The first recipe's teacher stage
    serves every run that has none of its own."""
    if len(recipes) > 1 and (len(keys := {distill_group_key(r) for r in recipes}) > 1 or None in keys):
        raise RecipeError(
            f"{', '.join(r.name for r in recipes)}: only recipes that distil from the same trained teacher "
            "with the same data, seed and schedule train together"
        )
    for r, d in zip(recipes, run_dirs, strict=True):
        preflight(r, max_steps)
        check_run_dir(r, d, resume, False, max_steps)
    with contextlib.ExitStack() as held:  # every run directory for this process alone
        for d in run_dirs:
            held.enter_context(lock_directory(d, "reproduce run"))
        for r, d in zip(recipes, run_dirs, strict=True):
            _start_run(r, d, resume, False, max_steps)
        return _reproduce_locked(recipes, run_dirs, resume, max_steps, device)


def _reproduce_locked(
    recipes: list[Recipe], run_dirs: list[Path], resume: bool, max_steps: int | None, device: str
) -> list[ReproduceResult]:
    from .train import TrainConfig, load_run, train_together

    clock = time.perf_counter()
    first = recipes[0]
    if len(recipes) > 1:
        for d in run_dirs[1:]:  # one teacher stage for the group
            for name in ("teacher", "teacher_checkpoint"):
                if not (d / name).exists() and not (d / name).is_symlink():
                    target = os.path.relpath(run_dirs[0].resolve() / name, d.resolve())  # any two folders
                    (d / name).symlink_to(target, target_is_directory=True)
    teacher = _load_teacher(first, run_dirs[0], device, max_steps, resume) if first.teacher else None
    configs: list[Any] = []
    todo: list[int] = []
    students: list[nn.Module | None] = []
    for r, d in zip(recipes, run_dirs, strict=True):
        genotype = student_genotype_of(r) or _search(r, d, device, max_steps, resume)
        cfg = TrainConfig(
            arch=genotype.to_string(), dataset=r.dataset.name, data_dir=r.dataset.data_dir, seed=r.seed,
            device=device, max_steps=max_steps, **_distill_kwargs(r), **_train_kwargs(r.train),
        )  # fmt: skip
        if (d / "student" / "model.safetensors").is_file():
            students.append(load_run(d / "student"))
        else:
            students.append(None)
            todo.append(len(configs))
        configs.append(cfg)
    if todo:
        results = train_together(
            [configs[i] for i in todo], teacher=teacher if first.distill else None,
            out_dirs=[run_dirs[i] / "student" for i in todo], resume=resume,
        )  # fmt: skip
        for i, result in zip(todo, results, strict=True):
            students[i] = result.model
    wall = time.perf_counter() - clock
    return [
        _finish_run(r, d, teacher, cast(nn.Module, m), max_steps, wall)
        for r, d, m in zip(recipes, run_dirs, students, strict=True)
    ]


def distill_group_key(r: Recipe) -> tuple | None:
    """What recipes trained together must share (teacher, data, seed, schedule); None when it distils nothing."""
    t = r.teacher
    if t is None or r.distill is None or t.train is None:
        return None
    return (r.dataset, r.seed, resolve_genotype(t.arch).to_string(), t.train, r.train.epochs,
            r.train.batch_size, r.train.subset)  # fmt: skip


def _start_run(recipe: Recipe, run_dir: Path, resume: bool, force: bool, max_steps: int | None) -> None:
    """Mark the (checked and locked) run directory as this recipe's run; with ``force`` clear it first."""
    the_plan = plan(recipe)
    if force:  # its contents, not the folder: the folder is what the lock is held on
        for p in run_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_KIND, json.dumps({"max_steps": max_steps}) + "\n")
    atomic_write_text(run_dir / "recipe.yaml", Path(recipe.source).read_text())
    atomic_write_text(run_dir / "plan.json", json.dumps(the_plan, indent=2) + "\n")


def _finish_run(
    recipe: Recipe, run_dir: Path, teacher: nn.Module | None, student: nn.Module, max_steps: int | None, wall: float
) -> ReproduceResult:
    """Write the run's checkpoints (the teacher's once) and check its expected metric."""
    ckpt_dir = run_dir / "checkpoint"
    smoke = max_steps is not None
    here = str(_environment()["device"])  # the hardware of stages that did not record their own
    t = recipe.teacher
    if teacher is not None and t is not None and t.name and t.train is not None:
        teacher_ckpt = run_dir / "teacher_checkpoint"
        if not (teacher_ckpt / "model.safetensors").is_file():  # evaluated and written once
            _write_checkpoint(
                teacher, teacher_ckpt, recipe, name=t.name, role="teacher", teacher=None,
                description=f"{t.arch} teacher trained by the recipe {Path(recipe.source).name}",
                training=training_summary(recipe, run_dir, here, max_steps, ("teacher",)),
                stage_dir=run_dir / "teacher", smoke=smoke,
            )  # fmt: skip
    full = _write_checkpoint(
        student, ckpt_dir, recipe, name=recipe.name, role=recipe.role, description=recipe.description,
        teacher=(t.pretrained or t.name or t.arch) if t is not None else None,
        training=training_summary(recipe, run_dir, here, max_steps),
        stage_dir=run_dir / "student", smoke=smoke, wall=wall,
    )  # fmt: skip
    metrics = full["metrics"]

    passed: bool | None = None
    message = (
        f"{recipe.name}: top-1 {metrics.get('top1', float('nan')):.2f}%, top-5 {metrics.get('top5', float('nan')):.2f}%"
    )
    if recipe.expected is not None and not smoke:
        got = metrics[recipe.expected.metric]
        passed = abs(got - recipe.expected.value) <= recipe.expected.tolerance
        message += (
            f"; expected {recipe.expected.metric} {recipe.expected.value} +- {recipe.expected.tolerance}: "
            f"{'PASS' if passed else 'MISS'}"
        )
    elif smoke:
        message += "; smoke run (--max-steps): the expected metric is not checked"
    return ReproduceResult(run_dir, ckpt_dir, metrics, passed, message)
