"""CLI: list / info, JSON for scripts, exit code 2 with a clear message on bad input, training options."""

import dataclasses
import inspect
import json

import pytest
from typer.testing import CliRunner

from blockswap_zoo.cli import app
from blockswap_zoo.cli.train import distill_cmd, finetune_cmd, train_teacher_cmd
from blockswap_zoo.data import get_dataset_info
from blockswap_zoo.data.datasets import FASHION_MNIST_SYSTEM_DIR
from blockswap_zoo.genotype import Genotype
from blockswap_zoo.models import build_model
from blockswap_zoo.train import TrainConfig, engine, save_checkpoint
from blockswap_zoo.train.artifacts import model_config
from blockswap_zoo.train.engine import TrainResult

runner = CliRunner()


def test_list_json_and_pattern() -> None:
    res = runner.invoke(app, ["list", "wrn_40_2_bs*", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert {r["name"] for r in rows} >= {"wrn_40_2_bs811k", "wrn_40_2_bs162k"}
    assert next(r for r in rows if r["name"] == "wrn_40_2_bs811k")["params"] == 811_370


def test_info_table_and_json() -> None:
    res = runner.invoke(app, ["info", "wrn_40_2_bs811k"])
    assert res.exit_code == 0 and "811,370" in res.stdout and "36.2%" in res.stdout
    res = runner.invoke(app, ["info", "wrn_40_2_bs811k", "--json", "--num-classes", "100"])
    data = json.loads(res.stdout)
    assert data["teacher_params"] == 2_243_546 + 90 * 129 and len(data["blocks"]) == 18


def test_info_on_compact_genotype() -> None:
    res = runner.invoke(app, ["info", "wrn_16_1:v1:S;S;G(4);B(2);S;S", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["genotype"]["blocks"][2] == "G(4)"


def test_bad_input_exits_2_with_message() -> None:
    res = runner.invoke(app, ["info", "wrn_40_2_bs811"])
    assert res.exit_code == 2 and "did you mean" in res.stderr
    res = runner.invoke(app, ["info", "wrn_16_1:v1:S;S"])
    assert res.exit_code == 2 and "has 6 swappable blocks" in res.stderr
    res = runner.invoke(app, ["list", "nothing*"])
    assert res.exit_code == 2 and "no model matches" in res.stderr


# ---- training commands: options, bad input, output -----------------------------------------------

HAVE_FMNIST = (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file()


def _capture_train(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """Replace the train loop with one that records the config it gets (no data, no training)."""
    seen: list[TrainConfig] = []

    def fake_train(config: TrainConfig, **kwargs) -> TrainResult:
        seen.append(config)
        return TrainResult(kwargs.get("out_dir"), {"top1": 1.0})

    monkeypatch.setattr(engine, "train", fake_train)
    return seen


def test_every_train_setting_is_an_option() -> None:
    """Each TrainConfig field a user sets is an option of train-teacher (distill adds the teacher's;
    finetune takes its network as the argument)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    distill_only = {"teacher", "beta", "at_mode", "kd_alpha", "kd_temperature"}
    assert fields - distill_only <= set(inspect.signature(train_teacher_cmd).parameters)
    assert fields <= set(inspect.signature(distill_cmd).parameters)
    assert fields - distill_only - {"arch"} <= set(inspect.signature(finetune_cmd).parameters)


def test_training_options_reach_the_config_and_override_the_file(tmp_path, monkeypatch) -> None:
    seen = _capture_train(monkeypatch)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("momentum: 0.5\ngamma: 0.3\neval_every: 5\ndeterministic: true\n")
    args = ["--config", str(cfg_file), "--out", str(tmp_path / "r"), "--momentum", "0.8", "--step-size", "7",
            "--lr-scaling", "linear", "--base-batch-size", "64", "--drop-rate", "0.2", "--no-deterministic",
            "--eval-batch-size", "256", "--no-download"]  # fmt: skip
    for command in (["train-teacher"], ["distill", "--teacher", "t", "--arch", "wrn_16_1"]):
        res = runner.invoke(app, [*command, *args])
        assert res.exit_code == 0, res.output
        c = seen.pop()
        assert (c.momentum, c.step_size, c.lr_scaling, c.base_batch_size, c.drop_rate) == (0.8, 7, "linear", 64, 0.2)
        assert (c.deterministic, c.eval_batch_size, c.download) == (False, 256, False)
        assert (c.gamma, c.eval_every) == (0.3, 5)  # from the file: not given as options
    res = runner.invoke(app, ["train-teacher", "--out", str(tmp_path / "r"), "--drop-rate", "1.5"])
    assert res.exit_code == 2 and "drop_rate" in res.stderr


def test_only_rank_0_prints_the_result(tmp_path, monkeypatch) -> None:
    _capture_train(monkeypatch)
    res = runner.invoke(app, ["train-teacher", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0 and json.loads(res.stdout)["top1"] == 1.0
    monkeypatch.setenv("RANK", "1")
    res = runner.invoke(app, ["train-teacher", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0 and res.stdout == ""


def test_channel_mismatch_is_a_clear_error(tmp_path) -> None:
    from blockswap_zoo import create_model
    from blockswap_zoo.checkpoint import save_checkpoint_dir

    rgb = tmp_path / "rgb"  # a trained-looking 3-channel checkpoint, evaluated on 1-channel images
    save_checkpoint_dir(create_model("wrn_16_1").eval(), rgb, {"dataset": "cifar10", "metrics": {}})
    res = runner.invoke(app, ["evaluate", str(rgb), "--dataset", "fashion_mnist", "--subset", "10", "--device", "cpu"])
    msg = " ".join(res.stderr.split())
    assert res.exit_code == 2, res.output  # a traceback would exit 1
    assert "3-channel input" in msg and "1 channel" in msg and "in_chans=1" in msg
    res = runner.invoke(app, ["distill", "--arch", "wrn_16_1", "--teacher", str(rgb), "--dataset", "fashion_mnist",
                              "--device", "cpu", "--no-progress", "--max-steps", "1", "--out", str(tmp_path / "d")])  # fmt: skip
    msg = " ".join(res.stderr.split())
    assert res.exit_code == 2 and f"teacher {rgb} takes 3-channel input" in msg and "in_chans=1" in msg


def test_untrained_architectures_are_not_teachers_or_evaluated(tmp_path) -> None:
    """A bare arch or genotype has no trained weights: refused, not silently used at random init."""
    for name, hint in (("wrn_40_2", "published: wrn_40_2.fmnist"), ("wrn_10_1:v1:S;S;S", "published arch.tag")):
        res = runner.invoke(app, ["evaluate", name, "--dataset", "fashion_mnist", "--subset", "10"])
        assert res.exit_code == 2 and "names an architecture, not trained weights" in res.stderr, res.output
        assert hint in " ".join(res.stderr.split())
    res = runner.invoke(app, ["distill", "--arch", "wrn_16_1", "--teacher", "wrn_40_2", "--dataset", "fashion_mnist",
                              "--device", "cpu", "--no-progress", "--max-steps", "1", "--out", str(tmp_path / "d")])  # fmt: skip
    assert res.exit_code == 2 and "names an architecture, not trained weights" in res.stderr
    res = runner.invoke(app, ["evaluate", str(tmp_path / "runs" / "typo"), "--dataset", "fashion_mnist"])
    assert res.exit_code == 2 and "no such file or folder" in " ".join(res.stderr.split())


def test_out_that_is_a_file_is_a_clear_error(tmp_path) -> None:
    f = tmp_path / "somefile"
    f.write_text("mine")
    for out in (f, f / "run"):
        for extra in ([], ["--resume"]):
            res = runner.invoke(app, ["train-teacher", "--dataset", "fashion_mnist", "--out", str(out), *extra])
            assert res.exit_code == 2 and "is a file" in " ".join(res.stderr.split()), res.output
    assert f.read_text() == "mine"


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_evaluate_interrupted_run_takes_the_dataset_from_its_checkpoint(tmp_path) -> None:
    info = get_dataset_info("fashion_mnist")
    model = build_model(Genotype.uniform("wrn_10_1"), 10, 1)
    save_checkpoint(
        tmp_path / "checkpoint.pt", {"model": model.state_dict(), "model_config": model_config(model, info)}
    )
    for target in (tmp_path, tmp_path / "checkpoint.pt"):
        res = runner.invoke(app, ["evaluate", str(target), "--subset", "10", "--device", "cpu", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["dataset"] == "fashion_mnist"


def test_help_texts_have_no_brackets_rich_would_swallow() -> None:
    """Typer renders help with rich markup: an unescaped ``[@REV]`` vanishes from ``--help``."""
    import typer.main

    root = typer.main.get_command(app)
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            assert "[" not in text.replace("\\[", ""), f"{name}: {text!r}"
