r"""lambda3 term: calibration = multi-class Brier score + DCA.

    Brier = mean_{b,v} sum_k (p_{b,k,v} - g_{b,k,v})^2                  (in [0, 2])
    DCA   = | mean_{b,v} max_k p_{b,k,v}  -  mean_{b,v} 1[argmax_k p_{b,k,v} = y_{b,v}] |
    L_cal = Brier + DCA

Why these two. The Brier score is a strictly proper scoring rule: its minimum is the true class
posterior, so it rewards calibrated probabilities and cannot be gamed by hedging; unlike NLL its
gradient is bounded, so it does not fight the Dice term on ambiguous boundary voxels. It decomposes
into calibration + refinement, and the calibration part is small for a good segmenter, so we add
DCA (Liang et al., 2020, "difference between confidence and accuracy"): the batch-level gap between
mean confidence and accuracy — the quantity ECE bins — with gradient through the confidence (the
accuracy indicator is a constant). It directly penalises the systematic over-confidence of
segmentation networks.

Fixes the audit's L_cal: Brier only, with an ECE part that was a stub returning 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tunepp_deploy.losses.dice_ce import one_hot


def brier_score(probs: Tensor, labels: Tensor) -> Tensor:
    """Multi-class Brier score of ``probs [B, K, ...]`` against int ``labels [B, ...]``."""
    return ((probs - one_hot(labels, probs.shape[1])) ** 2).sum(1).mean()


def dca(probs: Tensor, labels: Tensor) -> Tensor:
    """``|mean confidence - accuracy|`` over all voxels of the batch."""
    conf, pred = probs.max(dim=1)
    acc = (pred == labels).float().mean()
    return (conf.mean() - acc).abs()


def calibration_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """``L_cal = Brier + DCA`` for logits ``[B, K, ...]`` and int labels ``[B, ...]``."""
    probs = F.softmax(logits.float(), dim=1)
    return brier_score(probs, labels.long()) + dca(probs, labels.long())


__all__ = ["brier_score", "calibration_loss", "dca"]
