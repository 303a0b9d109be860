r"""The supervision term of the TUPA blocks' supervised gates (``model.gate: supervised``).

Each supervised block predicts ``u = sigmoid(z)``, the probability that the network's *final*
prediction is wrong at a token (:class:`~tunepp_deploy.model.blocks.tupa.SupervisedGate`). The target
is the final softmax's own miss, ``1 - p_true``, of the **detached** logits, averaged over the
token's cell of ``stride^3`` voxels:

    q_j   = mean_{v in cell j} (1 - softmax(logits.detach())_{y_v}(v))
    L_gate = mean_blocks mean_{b, j} KL( Bernoulli(q_j) || Bernoulli(sigmoid(z_j)) )
           = mean_blocks mean_{b, j} [ BCE(z_j, q_j) - H(q_j) ]

Why ``1 - p_true`` and not the cell's arg-max error rate: it is what the arg-max error rate
estimates when the softmax is calibrated, it is non-zero (and so trains) on right-but-unsure
voxels, and it does not jump when a voxel flips class. Why the Bernoulli KL: it has the gradient of
the soft-label BCE (``sigmoid(z) - q``, no vanishing on saturation as a squared error would have)
and is exactly zero when the prediction equals the target, so its value reads as a distance.
The logits are detached so the term trains the gates' uncertainty heads (and the features they
read), never the segmentation towards being easy to predict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tunepp_deploy.errors import TuneppError


def miss_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """``1 - p_true`` per voxel, ``[B, 1, D, H, W]``, from logits ``[B, K, D, H, W]`` (detached)."""
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise TuneppError(f"gate loss: labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    p = torch.softmax(logits.detach().float(), dim=1)
    return 1.0 - p.gather(1, labels.long().unsqueeze(1))


def pool_to(volume: Tensor, shape: Sequence[int]) -> Tensor:
    """Average ``[B, 1, D, H, W]`` over non-overlapping cells down to spatial ``shape`` (must divide)."""
    full = tuple(int(s) for s in volume.shape[2:])
    if len(shape) != 3 or any(t <= 0 or f % t for f, t in zip(full, shape, strict=True)):
        raise TuneppError(f"gate loss: token grid {tuple(shape)} does not divide the label grid {full}")
    kernel = tuple(f // t for f, t in zip(full, shape, strict=True))
    return volume if kernel == (1, 1, 1) else F.avg_pool3d(volume, kernel, kernel)


def bernoulli_kl_with_logits(z: Tensor, q: Tensor) -> Tensor:
    """Elementwise ``KL(Bernoulli(q) || Bernoulli(sigmoid(z)))``, >= 0 and 0 iff ``sigmoid(z) == q``."""
    entropy = -(torch.xlogy(q, q) + torch.xlogy(1.0 - q, 1.0 - q))
    return F.binary_cross_entropy_with_logits(z, q, reduction="none") - entropy


def gate_loss(gate_logits: Sequence[Tensor], logits: Tensor, labels: Tensor) -> Tensor:
    """``L_gate`` (module docstring) for the blocks' error logits ``[B, 1, d, h, w]`` each.

    No gate logits (a learned-gate network, or eval mode) gives a zero that has no gradient path:
    nothing to supervise.
    """
    if not gate_logits:
        return torch.zeros((), device=logits.device)
    miss = miss_probability(logits, labels)
    total = torch.zeros((), device=logits.device)
    for z in gate_logits:
        if z.dim() != 5 or z.shape[:2] != (logits.shape[0], 1):
            raise TuneppError(f"gate loss: an error logit is {tuple(z.shape)}, expected [B, 1, d, h, w]")
        q = pool_to(miss, z.shape[2:]).clamp(0.0, 1.0)
        total = total + bernoulli_kl_with_logits(z.float(), q).mean()
    return total / len(gate_logits)


__all__ = ["bernoulli_kl_with_logits", "gate_loss", "miss_probability", "pool_to"]
