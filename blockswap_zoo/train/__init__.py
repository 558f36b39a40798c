"""Training: teacher training and attention-transfer distillation, checkpoints, evaluation.

from blockswap_zoo.train import TrainConfig, train, evaluate, load_run
result = train(TrainConfig(arch="wrn_16_1", dataset="fashion_mnist", epochs=1), out_dir="runs/x")
model = load_run("runs/x")
evaluate(model, "fashion_mnist")  # {"top1": ..., "top5": ..., "n": 10000, ...}
finetune("wrn_40_2_bs400k.fmnist_at", TrainConfig(dataset="fashion_mnist", epochs=1, lr=0.01), out_dir="runs/ft")
"""

from __future__ import annotations

from .artifacts import load_model, load_run, read_run_config
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, load_config_file, resolve_config
from .engine import RunDirError, TrainResult, build_student, load_teacher, train, train_together
from .evaluate import evaluate
from .finetune import finetune, load_for_finetuning
from .losses import at_loss, attention_map, attention_transfer, kd_loss

__all__ = [
    "ConfigError",
    "RunDirError",
    "TrainConfig",
    "TrainResult",
    "at_loss",
    "attention_map",
    "attention_transfer",
    "build_student",
    "evaluate",
    "finetune",
    "kd_loss",
    "load_checkpoint",
    "load_config_file",
    "load_for_finetuning",
    "load_model",
    "load_run",
    "load_teacher",
    "read_run_config",
    "resolve_config",
    "save_checkpoint",
    "train",
    "train_together",
]
