r"""Soft clDice (Shit et al. 2021) for one tubular class.

Dice counts voxels, so a one-voxel cut through a vessel costs almost nothing although it splits
the tree; clDice compares *skeletons* instead:

    Tprec = (sum S(p) * g + eps) / (sum S(p) + eps)     (the predicted skeleton lies in the truth)
    Tsens = (sum S(g) * p + eps) / (sum S(g) + eps)     (the true skeleton is covered by the prediction)
    L_cl  = 1 - 2 Tprec Tsens / (Tprec + Tsens)

with ``p = softmax(logits)[cls]``, ``g = (labels == cls)`` and S the soft skeleton. A break removes
a stretch of the true skeleton from coverage (Tsens falls), while a thickened tube keeps its
skeleton inside the truth's neighbourhood and fully covers the true skeleton, so the break costs
more at equal Dice error. Sums run over the batch and all voxels (batch-wise, as
:mod:`.dice_ce`), so a crop without the tube does not produce a 0/0.

Soft skeleton (differentiable morphological thinning): erosion is a min-pool over the 6-connected
cross (three 1-D min-pools of width 3, whose minimum is taken), dilation a 3x3x3 max-pool, opening
their composition; ``S = relu(x - open(x))`` and then ``iters`` times: erode x and add the new
``relu(x - open(x))`` where S is not already set (``S += relu(delta - S * delta)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tunepp_deploy.errors import TuneppError

CLDICE_EPS = 1.0  # the paper's smoothing: keeps the ratio defined (-> 1) when a skeleton is empty


def soft_erode(x: Tensor) -> Tensor:
    """Grey-level erosion of ``x [N, C, D, H, W]`` by the 6-connected cross."""
    a = -F.max_pool3d(-x, (3, 1, 1), 1, (1, 0, 0))
    b = -F.max_pool3d(-x, (1, 3, 1), 1, (0, 1, 0))
    c = -F.max_pool3d(-x, (1, 1, 3), 1, (0, 0, 1))
    return torch.minimum(torch.minimum(a, b), c)


def soft_dilate(x: Tensor) -> Tensor:
    """Grey-level dilation of ``x [N, C, D, H, W]`` by the 3x3x3 cube."""
    return F.max_pool3d(x, 3, 1, 1)


def soft_skeleton(x: Tensor, iters: int = 3) -> Tensor:
    """Soft skeleton of ``x [N, C, D, H, W]`` with values in [0, 1] (module docstring)."""
    skel = F.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(iters):
        x = soft_erode(x)
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def cldice_loss(logits: Tensor, labels: Tensor, cls: int, iters: int = 3) -> Tensor:
    """Soft clDice loss of class ``cls`` for ``logits [B,K,D,H,W]`` and int ``labels [B,D,H,W]``.

    ``iters`` erosion steps bound the tube radius the skeleton reaches: a tube of radius up to
    ``iters`` voxels (width ``2 iters + 1``) gets its centre line, a thicker one no skeleton at all
    (it then adds nothing to either sum), so choose ``iters`` >= the tube class's radius.
    Computed in float32 with autocast off.
    """
    if logits.dim() != 5:
        raise TuneppError(f"cldice_loss needs logits [B,K,D,H,W], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise TuneppError(
            f"cldice_loss: labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}"
        )
    if not 0 <= cls < logits.shape[1]:
        raise TuneppError(f"cldice_loss: class {cls} outside 0..{logits.shape[1] - 1}")
    if iters < 0:
        raise TuneppError(f"cldice_loss: iters must be >= 0, got {iters}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = F.softmax(logits.float(), dim=1)[:, cls : cls + 1]
        g = (labels == cls).float()[:, None]
        sp, sg = soft_skeleton(p, iters), soft_skeleton(g, iters)
        tprec = ((sp * g).sum() + CLDICE_EPS) / (sp.sum() + CLDICE_EPS)
        tsens = ((sg * p).sum() + CLDICE_EPS) / (sg.sum() + CLDICE_EPS)
        return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)


__all__ = ["CLDICE_EPS", "cldice_loss", "soft_dilate", "soft_erode", "soft_skeleton"]
