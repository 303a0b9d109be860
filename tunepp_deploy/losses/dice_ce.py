r"""Soft Dice + cross-entropy, the data term of every TUNE++ scale.

For logits ``z`` ``[B, K, ...]``, ``p = softmax(z)`` over classes and targets ``g`` (one-hot of the
labels, or soft class fractions for down-sampled deep-supervision targets):

    Dice_c = (2 * sum_{b,v} p_{b,c,v} g_{b,c,v} + eps) / (sum_{b,v} p_{b,c,v} + sum_{b,v} g_{b,c,v} + eps)
    L_dice = 1 - mean_{c = 1..K-1} Dice_c                                   (foreground classes only)
    L_ce   = - mean_{b,v} sum_c g_{b,c,v} log p_{b,c,v}

Dice is **batch-wise** (sums over the batch and all voxels before the ratio, as nnU-Net's
``batch_dice``): a crop without some organ does not produce a 0/0 term, and small organs count as
much as large ones. Background is excluded from Dice (it would dominate) but present in CE.
``eps = 1e-5``: an absent class predicted absent gives Dice 1, predicted present is penalised.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

DICE_EPS = 1e-5


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """``[B, ...]`` int64 labels -> ``[B, K, ...]`` float one-hot."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def soft_dice_loss(probs: Tensor, target: Tensor, eps: float = DICE_EPS) -> Tensor:
    """``L_dice`` above, from probabilities and (soft) one-hot targets of the same shape."""
    dims = [0, *range(2, probs.dim())]
    inter = (probs * target).sum(dims)[1:]
    denom = probs.sum(dims)[1:] + target.sum(dims)[1:]
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def dice_ce_loss(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_dice, L_ce)`` for ``logits [B, K, ...]`` and int labels ``[B, ...]`` or soft targets ``[B, K, ...]``."""
    logits = logits.float()
    if target.dim() == logits.dim() - 1:
        target = one_hot(target, logits.shape[1])
    log_p = F.log_softmax(logits, dim=1)
    ce = -(target * log_p).sum(1).mean()
    return soft_dice_loss(log_p.exp(), target), ce


__all__ = ["DICE_EPS", "dice_ce_loss", "one_hot", "soft_dice_loss"]
