"""Distillation losses: attention transfer (Zagoruyko & Komodakis) as the reference code and as
the paper write it, and Hinton knowledge distillation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["attention_map", "attention_transfer", "at_loss", "kd_loss"]


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """f(A): mean over channels of A^2, flattened per sample and L2-normalised (N x HW, float32)."""
    return F.normalize(a.float().pow(2).mean(1).flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, mode: str = "code") -> torch.Tensor:
    """Attention-transfer loss at one point.

    ``code``: mean((f_s - f_t)^2) over batch and positions (the reference implementation);
    ``paper``: ||f_s - f_t||_2 per sample (un-squared), averaged over the batch (the paper's equation).
    """
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"attention transfer needs matching batch and spatial sizes; student {tuple(student.shape)} "
            f"vs teacher {tuple(teacher.shape)}"
        )
    diff = attention_map(student) - attention_map(teacher)
    if mode == "code":
        return diff.pow(2).mean()
    if mode == "paper":
        return diff.norm(p=2, dim=1).mean()
    raise ValueError(f"at_mode must be 'code' or 'paper', got {mode!r}")


def attention_transfer(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], mode: str = "code"
) -> torch.Tensor:
    """sum_i at_loss(student_i, teacher_i) over the attention points (the stage outputs)."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"student has {len(student_feats)} attention points, teacher {len(teacher_feats)}")
    return torch.stack([at_loss(s, t, mode) for s, t in zip(student_feats, teacher_feats, strict=True)]).sum()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    q = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean", log_target=True) * (t * t)
