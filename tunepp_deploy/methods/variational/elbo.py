r"""The variational objective.

The seed's loss is ``(N / B) * (0.01 CE + 0.99 Dice) + KL`` (N training cases, B batch size): a
minibatch estimate of the negative ELBO with the data term counted once per training case. With
mean-field layers the KL is ~2 nats per weight at init (``log sigma^2 = -5``), i.e. millions of
nats for a 16-32-64-128 U-Net against a data term of order N/B: the KL dominates, drives every
posterior back to the prior and the network stops learning on small phantom sets. So besides
``"seed"`` we offer, and use by default, the per-voxel scaling ``"voxel"``:

    loss = 0.01 CE + 0.99 Dice + KL / (N * V)

the negative ELBO divided by the number of training voxels ``N * V`` (V voxels per case): the data
terms are means over voxels, so this is the same objective up to the constant factor ``N * V`` if
each voxel counts as one observation. Both are available; the comparison reports which one it used.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from tunepp_deploy.losses.dice_ce import dice_ce_loss

KLScale = Literal["voxel", "seed"]
CE_WEIGHT, DICE_WEIGHT = 0.01, 0.99


def elbo_loss(
    logits: Tensor, target: Tensor, kl: Tensor, n_train: int, batch: int, voxels_per_case: int,
    scale: KLScale = "voxel",
) -> tuple[Tensor, dict[str, float]]:
    """``(loss, parts)`` for one minibatch (module docstring for the two scalings)."""
    dice, ce = dice_ce_loss(logits, target)
    data = CE_WEIGHT * ce + DICE_WEIGHT * dice
    if scale == "seed":
        loss = (n_train / batch) * data + kl
    elif scale == "voxel":
        loss = data + kl / float(n_train * voxels_per_case)
    else:
        raise ValueError(f"unknown KL scale {scale!r}")
    return loss, {"dice_loss": float(dice.detach()), "ce": float(ce.detach()), "kl": float(kl.detach())}


__all__ = ["CE_WEIGHT", "DICE_WEIGHT", "KLScale", "elbo_loss"]
