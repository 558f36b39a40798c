"""The model contract every blockswap-zoo network follows (timm's, trimmed) and the shared init."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..backbones import Part, StageInfo
from ..genotype import Genotype

__all__ = ["BlockFactory", "SwapNet", "fresh_block", "init_weights"]

BlockFactory = Callable[[type[nn.Module], dict[str, Part]], nn.Module]


def fresh_block(block_class: type[nn.Module], parts: dict[str, Part]) -> nn.Module:
    """A newly constructed block: what the builders use unless given another factory."""
    return block_class(parts)


def init_weights(model: nn.Module) -> None:
    """The reference (and WRN) init: conv ~ N(0, 2 / (k*k*C_out)), BN 1/0, linear bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class SwapNet(nn.Module):
    """Base of the builders: classifier head, ``forward``, ``reset_classifier``, ``get_classifier``.

    Subclasses define ``forward_features`` (to the final feature map) and
    ``forward_intermediates`` (the per-stage outputs attention transfer uses).
    """

    def __init__(self, genotype: Genotype, num_classes: int, in_chans: int, drop_rate: float) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 drops the classifier), got {num_classes}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.genotype = genotype
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        spec = genotype.backbone_spec
        self.num_features = spec.num_features
        self.feature_info = stage_info_dicts(spec.feature_info())
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = self._classifier(num_classes)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: features only).

        ``global_pool`` is accepted as in timm; only average pooling (``"avg"``) is offered.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: these networks pool by average only ('avg')")
        self.num_classes = num_classes
        self.fc = self._classifier(num_classes)
        if isinstance(self.fc, nn.Linear):
            nn.init.zeros_(self.fc.bias)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The input to the first swappable block."""
        raise NotImplementedError

    def forward_final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """What follows the last block before pooling (pre-activation nets normalise there; others pass)."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, intermediates_only: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def swap_blocks(self) -> list[nn.Module]:
        """The swappable blocks in network order; each has a ``probe`` on its residual branch."""
        return [m for m in self.modules() if hasattr(m, "probe") and isinstance(m.probe, nn.Identity)]


def select(feats: list[torch.Tensor], indices: int | list[int] | None) -> list[torch.Tensor]:
    """The stage outputs at ``indices`` (all when None; an int n: the last n, as timm); negative indices
    count from the end."""
    if indices is None:
        return feats
    if isinstance(indices, int):
        if not 0 < indices <= len(feats):
            raise ValueError(f"indices={indices}: this network has {len(feats)} stage outputs; ask for 1..{len(feats)}")
        return feats[-indices:]
    bad = [i for i in indices if not -len(feats) <= i < len(feats)]
    if bad:
        raise ValueError(
            f"indices {bad} out of range: this network has {len(feats)} stage outputs (0..{len(feats) - 1})"
        )
    return [feats[i] for i in indices]


def stage_info_dicts(infos: list[StageInfo]) -> list[dict[str, object]]:
    return [{"num_chs": s.num_chs, "reduction": s.reduction, "module": s.module} for s in infos]
