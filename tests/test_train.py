"""Training engine: losses by hand, config files, checkpoints, exact resume, distillation, a real
Fashion-MNIST run, evaluation, CLI errors and a 2-process torchrun run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from blockswap_zoo.cli import app
from blockswap_zoo.data.datasets import FASHION_MNIST_SYSTEM_DIR
from blockswap_zoo.genotype import Genotype
from blockswap_zoo.models import build_model
from blockswap_zoo.train import (
    ConfigError,
    RunDirError,
    TrainConfig,
    TrainResult,
    at_loss,
    evaluate,
    kd_loss,
    load_checkpoint,
    load_run,
    resolve_config,
    train,
    train_together,
)
from blockswap_zoo.train.checkpoint import get_rng_state, set_rng_state
from blockswap_zoo.train.engine import lr_lambda

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist",
)


def _hand_attention(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    out = np.zeros((n, a.shape[2] * a.shape[3]))
    for i in range(n):
        m = np.zeros(a.shape[2] * a.shape[3])
        for c in range(a.shape[1]):
            m += (a[i, c] ** 2).reshape(-1)
        m /= a.shape[1]
        out[i] = m / math.sqrt(sum(v * v for v in m))
    return out


def test_attention_transfer_losses_match_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 8, 5, 5, generator=g)  # channels may differ
    fs, ft = _hand_attention(s.double().numpy()), _hand_attention(t.double().numpy())
    code = ((fs - ft) ** 2).sum() / fs.size
    paper = sum(math.sqrt(((fs[i] - ft[i]) ** 2).sum()) for i in range(3)) / 3
    assert at_loss(s, t, "code").item() == pytest.approx(code, rel=1e-5)
    assert at_loss(s, t, "paper").item() == pytest.approx(paper, rel=1e-5)
    assert at_loss(s, s * 3.0, "code").item() == pytest.approx(0.0, abs=1e-9)  # scale-invariant
    with pytest.raises(ValueError, match="spatial"):
        at_loss(s, torch.randn(3, 4, 4, 4))
    with pytest.raises(ValueError, match="at_mode"):
        at_loss(s, t, "other")


def test_kd_loss_matches_hand_computation() -> None:
    s, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.2, 3.0, 1.0]])
    temp = 4.0
    p = np.exp(t.numpy()[0] / temp) / np.exp(t.numpy()[0] / temp).sum()
    q = np.exp(s.numpy()[0] / temp) / np.exp(s.numpy()[0] / temp).sum()
    assert kd_loss(s, t, temp).item() == pytest.approx(float((p * np.log(p / q)).sum() * temp * temp), rel=1e-5)


def test_config_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("dataset: fashion_mnist\nepochs: 3\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown setting 'lerning_rate'"):
        resolve_config(f, {})
    f.write_text("arch: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(f, {})
    f.write_text("dataset: &d fashion_mnist\narch: *d\n")  # aliases could expand to gigabytes: refused
    with pytest.raises(ConfigError, match="aliases"):
        resolve_config(f, {})
    f.write_text("dataset: fashion_mnist\nepochs: 3\nlr: 0.05\n")
    cfg = resolve_config(f, {"epochs": 5, "lr": None})
    assert (cfg.epochs, cfg.lr, cfg.dataset, cfg.weight_decay) == (5, 0.05, "fashion_mnist", 5e-4)
    inet = resolve_config(None, {"dataset": "imagenet"})
    assert (inet.beta, inet.schedule, inet.weight_decay, inet.batch_size) == (750.0, "step", 1e-4, 256)
    with pytest.raises(ConfigError, match="at_mode"):
        TrainConfig(at_mode="l2")


def test_lr_schedules() -> None:
    cfg = TrainConfig(schedule="cosine", warmup_epochs=1)
    f = lr_lambda(cfg, steps_per_epoch=10, total_steps=100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    step = lr_lambda(TrainConfig(schedule="step", step_size=30, gamma=0.1), 10, 1000)
    assert step(299) == 1.0 and step(300) == pytest.approx(0.1) and step(600) == pytest.approx(0.01)


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    from blockswap_zoo.train import save_checkpoint

    torch.manual_seed(1)
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "rng": get_rng_state()})
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # torch.load(weights_only=True) inside
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.pt")


def _tiny(**kw) -> TrainConfig:
    base = dict(
        arch="wrn_10_1",
        dataset="fashion_mnist",
        epochs=2,
        batch_size=32,
        lr=0.05,
        subset=128,
        eval_subset=64,
        progress=False,
        deterministic=True,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def _interrupt_after_epoch_1(cfg: TrainConfig, out: Path) -> None:
    """Start a run in ``out`` and stop it by an exception at the end of its first epoch (its checkpoint written)."""

    class Interrupt(Exception):
        pass

    def stop(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, out_dir=out, on_epoch_end=stop)


@needs_fmnist
def test_interrupt_and_resume_gives_identical_weights(tmp_path: Path) -> None:
    straight = train(_tiny(), out_dir=tmp_path / "a")
    _interrupt_after_epoch_1(_tiny(), tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 0
    with pytest.raises(RunDirError, match="--resume"):
        train(_tiny(), out_dir=tmp_path / "b")
    with pytest.raises(RunDirError, match="batch_size"):
        train(_tiny(batch_size=16), out_dir=tmp_path / "b", resume=True)
    for changed in ({"lr": 0.5}, {"momentum": 0.5}, {"weight_decay": 0.1}, {"max_steps": 100}):
        with pytest.raises(RunDirError, match=f"{next(iter(changed))} was .*keeps its settings"):
            train(_tiny(**changed), out_dir=tmp_path / "b", resume=True)  # the optimiser would keep the old ones
    with pytest.raises(RunDirError, match="contradict"):
        train(_tiny(), out_dir=tmp_path / "b", resume=True, force=True)
    resumed = train(_tiny(eval_batch_size=64), out_dir=tmp_path / "b", resume=True)  # how it runs may change
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    run = tmp_path / "b"
    for name in ("checkpoint.pt", "metrics.jsonl", "curves.png", "model.safetensors", "config.json", "config.yaml"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    loaded = load_run(run)
    assert all(torch.equal(loaded.state_dict()[k], sb[k]) for k in sb)


@needs_fmnist
def test_resume_is_exact_on_the_dataloader_path_with_workers(tmp_path: Path) -> None:
    """Worker RNGs are re-seeded per epoch, so interrupting after epoch 1 and resuming changes nothing."""
    cfg = dict(epochs=3, batch_size=16, subset=32, eval_subset=16, eval_every=0, loader="dataloader", num_workers=1)
    straight = train(_tiny(**cfg), out_dir=tmp_path / "a")
    _interrupt_after_epoch_1(_tiny(**cfg), tmp_path / "b")
    resumed = train(_tiny(**cfg), out_dir=tmp_path / "b", resume=True)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


@needs_fmnist
def test_distillation_trains_student_and_leaves_teacher_frozen(tmp_path: Path) -> None:
    teacher = build_model(Genotype.uniform("wrn_10_1"), 10, 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = Genotype("wrn_10_1", ("G(2)", "B(2)", "S"))
    cfg = _tiny(arch=student.to_string(), epochs=1, beta=1000.0, at_mode="paper", kd_alpha=0.5)
    r = train(cfg, teacher=teacher)
    assert r.history[0]["at_loss"] > 0 and math.isfinite(r.history[0]["train_loss"])
    assert not teacher.training and all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert r.model.genotype == student
    bad_teacher = build_model(Genotype.uniform("wrn_16_1"), 10, 1)  # same stages: fine
    train(_tiny(epochs=1, max_steps=1), teacher=bad_teacher)


@needs_fmnist
def test_compiled_distillation_matches_eager(tmp_path: Path) -> None:
    """--compile wraps the student and the teacher in torch.compile; three steps land where eager ones do."""
    teacher = build_model(Genotype.uniform("wrn_10_1"), 10, 1)
    student = Genotype("wrn_10_1", ("G(2)", "B(2)", "S")).to_string()
    runs = {}
    for compiled in (False, True):
        # beta 1: with 1000, fp32 reassociation inside the compiled kernels is amplified past any useful bound
        cfg = _tiny(
            arch=student,
            epochs=1,
            max_steps=3,
            kd_alpha=0.5,
            beta=1.0,
            deterministic=False,
            compile=compiled,
            amp="none",
        )  # fp32: bf16 rounding would hide what compiling changes
        runs[compiled] = train(cfg, teacher=teacher)
    eager, comp = runs[False].model.state_dict(), runs[True].model.state_dict()
    for k in eager:  # compiled kernels reassociate fp32 sums and flip ReLU masks near 0: loose per tensor
        a, b = eager[k].double(), comp[k].double()
        assert (a - b).norm() <= 1e-2 * a.norm() + 1e-4, k
    for key in ("train_loss", "at_loss"):
        assert runs[True].history[0][key] == pytest.approx(runs[False].history[0][key], rel=1e-4)
    with pytest.raises(ConfigError, match="compile_mode"):
        TrainConfig(compile_mode="fastest")


def test_training_compiles_by_default_on_one_gpu_only() -> None:
    """No flag: CUDA graphs (reduce-overhead) on one GPU, eager on a CPU and under DDP; flags win."""
    from blockswap_zoo.train.engine import compile_mode_for

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert TrainConfig().compile is None and TrainConfig().compile_mode == "auto"
    assert compile_mode_for(None, "auto", gpu) == "reduce-overhead"
    assert compile_mode_for(None, "auto", gpu, distributed=True) is None
    assert compile_mode_for(None, "auto", cpu) is None
    assert compile_mode_for(False, "auto", gpu) is None  # --no-compile
    assert compile_mode_for(True, "auto", cpu) == "default"
    assert compile_mode_for(None, "max-autotune", gpu) == "max-autotune"
    with pytest.raises(ConfigError, match="compile must be true, false or null"):
        TrainConfig(compile="yes")  # type: ignore[arg-type]


@needs_fmnist
def test_real_fashion_mnist_run_reaches_well_above_chance(tmp_path: Path) -> None:
    cfg = TrainConfig(
        arch="wrn_10_1",
        dataset="fashion_mnist",
        epochs=1,
        batch_size=64,
        lr=0.1,
        nesterov=True,
        max_steps=400,
        eval_subset=2000,
        progress=False,
        seed=0,
        device="cpu",
    )
    r = train(cfg, out_dir=tmp_path / "run")
    first = evaluate(load_run(tmp_path / "run"), "fashion_mnist", subset=2000)
    again = evaluate(tmp_path / "run", "fashion_mnist", subset=2000)
    assert first == again and first["n"] == 2000
    assert first["top1"] == pytest.approx(r.metrics["top1"])
    assert first["top1"] > 70.0, first  # chance is 10%
    assert first["top5"] >= first["top1"]


def test_cli_errors_for_missing_dataset_and_existing_run(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "train-teacher",
            "--arch",
            "wrn_10_1",
            "--dataset",
            "fashion_mnist",
            "--data-dir",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ],
    )
    assert r.exit_code != 0
    out = " ".join(r.output.split())
    assert str(tmp_path / "nothing") in out and "apt-get install dataset-fashion-mnist" in out
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("user file")
    r = runner.invoke(app, ["train-teacher", "--dataset", "fashion_mnist", "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and "--force" in " ".join(r.output.split())
    assert (tmp_path / "run" / "keep.txt").read_text() == "user file"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbogus: 2\n")
    r = runner.invoke(app, ["distill", "--config", str(cfg), "--out", str(tmp_path / "r2")])
    assert r.exit_code != 0 and "bogus" in r.output and "c.yaml" in r.output


@needs_fmnist
def test_cli_train_then_evaluate(tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "t"
    r = runner.invoke(
        app,
        [
            "train-teacher",
            "--arch",
            "wrn_10_1",
            "--dataset",
            "fashion_mnist",
            "--out",
            str(run),
            "--epochs",
            "1",
            "--subset",
            "64",
            "--batch-size",
            "32",
            "--eval-subset",
            "100",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(run), "--subset", "100", "--json"])
    assert r.exit_code == 0 and '"n": 100' in r.output
    r = runner.invoke(
        app,
        [
            "distill",
            "--arch",
            "wrn_10_1",
            "--teacher",
            str(run),
            "--dataset",
            "fashion_mnist",
            "--out",
            str(tmp_path / "s"),
            "--max-steps",
            "1",
            "--subset",
            "64",
            "--batch-size",
            "32",
            "--eval-subset",
            "100",
            "--device",
            "cpu",
            "--no-progress",
            "--at-mode",
            "paper",
        ],
    )
    assert r.exit_code == 0, r.output


@needs_fmnist
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent("""
        import sys, torch
        torch.set_num_threads(1)
        from blockswap_zoo.cli import main
        sys.argv = ["blockswap-zoo"] + sys.argv[1:]
        main()
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(script),
        "train-teacher",
        "--arch",
        "wrn_10_1",
        "--dataset",
        "fashion_mnist",
        "--out",
        str(tmp_path / "ddp"),
        "--epochs",
        "1",
        "--subset",
        "128",
        "--batch-size",
        "32",
        "--eval-subset",
        "200",
        "--device",
        "cpu",
        "--no-progress",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count('"world_size": 2') == 1 and '"n_test": 200' in p.stdout  # rank 0 alone prints
    model = load_run(tmp_path / "ddp")
    assert evaluate(model, "fashion_mnist", subset=200)["n"] == 200


def test_cli_bf16_and_channels_last_on_cpu(tmp_path: Path) -> None:
    """The CPU fast path (native bf16 and channels_last) is an option of every training command."""
    run = tmp_path / "amp"
    args = ["train-teacher", "--arch", "wrn_10_1", "--dataset", "fashion_mnist", "--out", str(run), "--epochs", "1",
            "--subset", "64", "--batch-size", "32", "--eval-subset", "64", "--device", "cpu", "--no-progress",
            "--amp", "bf16", "--channels-last"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "config.json").read_text())["train_config"]
    assert saved["amp"] == "bf16" and saved["channels_last"] is True


def test_image_folder_run_records_the_class_folder_names(tmp_path: Path) -> None:
    """An ImageNet-style run's config.json names its labels after the class folders, not an empty list."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("ant", "bee"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(2):
                img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / "data" / split / c / f"{i}.png")
    cfg = _tiny(dataset="imagenet", data_dir=str(tmp_path / "data"), epochs=1, batch_size=2, subset=None,
                eval_subset=2, num_workers=0, max_steps=1)  # fmt: skip
    train(cfg, out_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["label_names"] == ["ant", "bee"]


def test_run_files_are_written_atomically_with_normal_permissions(tmp_path: Path) -> None:
    """model.safetensors gets the same umask-respecting mode as config.json and leaves no temp file."""
    from blockswap_zoo.checkpoint import save_checkpoint_dir

    model = build_model(Genotype.uniform("wrn_10_1"), 10, 1)
    old = os.umask(0o022)
    try:
        save_checkpoint_dir(model, tmp_path, {"dataset": "fashion_mnist"})
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("config.json", "model.safetensors")} == {0o644}
    assert all(torch.equal(v, load_run(tmp_path).state_dict()[k]) for k, v in model.state_dict().items())


def test_a_run_stopped_before_its_first_checkpoint_can_start_again(tmp_path: Path) -> None:
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text("arch: wrn_10_1\n")  # all that a run interrupted in epoch 1 leaves
    result = train(_tiny(epochs=1, max_steps=1), out_dir=run, resume=True)
    assert result.metrics["steps"] == 1 and (run / "checkpoint.pt").is_file()


def test_settings_are_validated_with_the_key_named(tmp_path: Path) -> None:
    bad = [
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"warmup_epochs": float("inf")}, "warmup_epochs must be a finite number"),
        ({"eval_every": "1"}, "eval_every must be an integer"),
        ({"kd_temperature": "four"}, "kd_temperature must be a finite number"),
        ({"epochs": True}, "epochs must be a positive integer"),
        ({"extra": 5}, "extra must be a mapping"),
        ({"nesterov": True, "momentum": 0}, "nesterov needs momentum > 0"),
        ({"device": "foo"}, "device must be auto, cpu, cuda"),
        ({"loader": "device", "dataset": "imagenet"}, None),  # valid settings; refused when the run starts
    ]
    for kwargs, message in bad:
        if message is None:
            with pytest.raises(ValueError, match="--loader device keeps a dataset in memory"):
                train(_tiny(**kwargs, data_dir=str(tmp_path)), out_dir=tmp_path / "x")
            continue
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict({**_tiny().to_dict(), **kwargs})
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("weight_decay: 5e-4\nlr: 1e-1\n")  # YAML 1.1 reads these as strings
    cfg = resolve_config(cfg_file, {})
    assert (cfg.weight_decay, cfg.lr) == (5e-4, 0.1)


def test_cli_refuses_settings_that_belong_to_another_command(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("teacher: some/run\n")
    res = CliRunner().invoke(app, ["train-teacher", "--config", str(cfg_file), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "teacher is a distill setting" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["distill", "--teacher", "some/run", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "distill needs --arch" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["evaluate", "wrn_40_2.fmnist", "--subset", "-5"])
    assert res.exit_code == 2 and "subset must be a positive number" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["evaluate", "wrn_40_2.fmnist", "--device", "foo"])
    assert res.exit_code == 2 and "unknown device 'foo'" in " ".join(res.output.split())
    bare = tmp_path / "bare.pt"
    torch.save({"model": build_model(Genotype.uniform("wrn_10_1"), 10, 1).state_dict()}, bare)
    res = CliRunner().invoke(app, ["evaluate", str(bare), "--dataset", "fashion_mnist"])
    assert res.exit_code == 2 and "is not a blockswap-zoo checkpoint" in " ".join(res.output.split())


@needs_fmnist
def test_a_missing_test_split_fails_before_any_training(tmp_path: Path) -> None:
    import shutil

    from blockswap_zoo.data import DatasetNotFoundError

    for f in Path(FASHION_MNIST_SYSTEM_DIR).glob("train-*"):
        shutil.copy(f, tmp_path / f.name)
    started = []
    with pytest.raises(DatasetNotFoundError, match="test split not found"):
        train(_tiny(data_dir=str(tmp_path)), out_dir=tmp_path / "run", on_epoch_end=lambda *a: started.append(a))
    assert not started


def test_a_resumed_teacher_may_be_spelt_differently(tmp_path: Path, monkeypatch) -> None:
    from blockswap_zoo.train.engine import _same_setting

    (tmp_path / "t").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _same_setting("teacher", "t", "./t") and _same_setting("teacher", "t", str(tmp_path / "t"))
    assert not _same_setting("teacher", "t", "other") and not _same_setting("lr", 0.1, 0.2)


def test_training_flags_are_set_for_the_run_and_restored_after() -> None:
    """Deterministic runs and GPU runs change process-wide backend flags only for their duration."""
    from blockswap_zoo.numerics import training_flags

    def flags() -> tuple:
        return (
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )

    before = flags()
    with training_flags(deterministic=True, cuda=False):
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") is not None
    assert flags() == before
    with training_flags(deterministic=False, cuda=True):
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
    assert flags() == before
    with pytest.raises(RuntimeError), training_flags(deterministic=True, cuda=True):
        raise RuntimeError("a failed run restores them too")
    assert flags() == before


@needs_fmnist
def test_a_training_run_leaves_the_process_flags_alone() -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    train(_tiny(epochs=1, max_steps=1, deterministic=True))
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


def test_students_trained_together_end_as_they_would_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One teacher pass, several students: each ends bit-identical to its run alone, even when one of them
    was interrupted, resumed beside a fresh student, and so trained in a pass of its own for a while."""
    from blockswap_zoo.train import engine

    teacher = build_model(Genotype.uniform("wrn_10_1"), 10, 1)
    a = _tiny(arch=Genotype("wrn_10_1", ("G(2)", "B(2)", "S")).to_string(), drop_rate=0.2)  # dropout draws RNG
    b = _tiny(arch=Genotype("wrn_10_1", ("S", "G(4)", "B(4)")).to_string(), lr=0.02, beta=10.0)
    alone = {c.arch: train(c, teacher=teacher, out_dir=tmp_path / f"alone{i}") for i, c in enumerate((a, b))}

    together = train_together([a, b], teacher=teacher, out_dirs=[tmp_path / "a", tmp_path / "b"])
    for r, c in zip(together, (a, b), strict=True):
        _assert_same_run(r, alone[c.arch])
    assert together[0].history[0]["group_size"] == 2 and "group_size" not in alone[a.arch].history[0]

    real_end = engine._end_epoch  # interrupt a fresh pass of a and b after the first epoch's checkpoints
    calls = []

    def end_then_stop(run, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_end(run, *args, **kwargs)
        calls.append(run)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_end_epoch", end_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_together([a, b], teacher=teacher, out_dirs=[tmp_path / "a2", tmp_path / "b2"])
    monkeypatch.setattr(engine, "_end_epoch", real_end)
    assert (tmp_path / "a2" / "checkpoint.pt").is_file() and not (tmp_path / "a2" / "model.safetensors").exists()
    # a resumes at epoch 2 beside b started afresh in another folder: two passes, each ends as alone
    shutil.rmtree(tmp_path / "b2")
    resumed = train_together([a, b], teacher=teacher, out_dirs=[tmp_path / "a2", tmp_path / "b2"], resume=True)
    for r, c in zip(resumed, (a, b), strict=True):
        _assert_same_run(r, alone[c.arch])
    with pytest.raises(ValueError, match="share batch_size"):
        train_together([a, replace(b, batch_size=16)], teacher=teacher)
    with pytest.raises(ValueError, match="the same run directory"):
        train_together([a, b], teacher=teacher, out_dirs=[tmp_path / "x", tmp_path / "x"])


def _assert_same_run(got: TrainResult, want: TrainResult) -> None:
    assert got.model is not None and want.model is not None
    mine, theirs = got.model.state_dict(), want.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    keys = ("train_loss", "train_top1", "at_loss", "test_top1", "lr", "step")
    assert [{k: h[k] for k in keys} for h in got.history] == [{k: h[k] for k in keys} for h in want.history]
    assert got.metrics["top1"] == want.metrics["top1"]


def test_cli_a_full_disk_or_a_busy_run_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while saving: exit 2 naming the folder and --resume, the checkpoint before it intact; a run
    folder another process writes: exit 2 naming its PID."""
    import errno

    from blockswap_zoo.dir_lock import lock_directory
    from blockswap_zoo.train import engine

    run = tmp_path / "run"
    args = ["train-teacher", "--arch", "wrn_10_1", "--dataset", "fashion_mnist", "--out", str(run), "--epochs", "2",
            "--subset", "64", "--batch-size", "32", "--eval-subset", "32", "--device", "cpu", "--no-progress"]  # fmt: skip
    real_save, saved = engine.save_checkpoint, []

    def save_once(path, state):  # noqa: ANN001, ANN202 - the second epoch's save meets a full disk
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, state)
        saved.append(path)

    monkeypatch.setattr(engine, "save_checkpoint", save_once)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "no space left on the device" in r.output and "--resume" in r.output, r.output
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 0  # the first epoch's checkpoint is intact
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    with lock_directory(run):
        r = CliRunner().invoke(app, [*args, "--resume"])
    assert r.exit_code == 2 and f"process {os.getpid()}" in " ".join(r.output.split()), r.output
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0
