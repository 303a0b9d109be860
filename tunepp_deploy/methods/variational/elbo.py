r"""The variational objective: a minibatch estimate of the negative ELBO (Bayes by Backprop).

For N training cases of V voxels each, treated as N * V independent categorical observations,

    -ELBO(q) = KL(q(w) || p(w)) - sum_{n, v} E_q[ log p(y_{n,v} | x_n, w) ].

One step sees B crops of C voxels; the sum over the whole data set is estimated by scaling the
crops' summed NLL by ``N V / (B C)``. Two data terms (``objective``) and two scalings (``scale``):

``objective="nll"`` — the data term *is* the likelihood: the categorical NLL
``-log softmax(z)_y`` of every voxel (``ce`` below, the mean over the crops' voxels).

* ``scale="voxel"`` (default): the negative ELBO divided by ``N V`` (nats per training voxel),

      loss = mean_{b,v} NLL_{b,v} + beta * KL / (N * V)

  i.e. Bayes by Backprop's per-datum form ``NLL summed over a case + KL / N``, divided by ``V``.
* ``scale="seed"``: the seed's scaling ``(N / B) * data + KL`` with the NLL summed over each crop,

      loss = (N / B) * sum_{b,v} NLL_{b,v} + beta * KL

  i.e. a crop counted as a whole case: the KL weighs ``V / C`` times more than under ``"voxel"``.

``objective="dice"`` (default) — the seed's data term ``0.01 CE + 0.99 Dice`` (both means over
voxels) in place of the NLL, with ``loss = data + beta KL / (N V)`` (``"voxel"``) or
``(N / B) data + beta KL`` (``"seed"``). Soft Dice is not a log-likelihood, so this is a generalised
(Gibbs) posterior rather than the Bayesian one; it stays the default because on the phantoms the
pure NLL did not segment at all in a short schedule (validation Dice 0.00 after 200 iterations
against 0.49, docs/results/variational_posterior.md).

Why the posterior width used to stay at its initial value — *not* because the KL's gradient is
negligible: at ``log sigma^2 = -10`` the KL term's gradient on ``log sigma^2`` is 440-590x the Dice
term's (64-97x the NLL's; 3 seeds) on the phantom study's data set. Adam moves a parameter by at most ~lr per
step whatever the gradient's size, so the KL dragged every ``log sigma^2`` upward at that maximum
speed and the schedule, not the objective, set where it ended. The fix is the separate Adam
learning rate of the ``log sigma^2`` parameters in :mod:`.train` (``log_var_lr_scale``).

``beta`` (``kl_weight``) is the KL warm-up factor of the training schedule (1 = the ELBO).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from tunepp_deploy.errors import ConfigError
from tunepp_deploy.losses.dice_ce import dice_ce_loss

KLScale = Literal["voxel", "seed"]
Objective = Literal["nll", "dice"]
KL_SCALES: tuple[str, ...] = ("voxel", "seed")
OBJECTIVES: tuple[str, ...] = ("nll", "dice")
CE_WEIGHT, DICE_WEIGHT = 0.01, 0.99


def elbo_loss(
    logits: Tensor, target: Tensor, kl: Tensor, n_train: int, batch: int, voxels_per_case: int,
    scale: KLScale = "voxel", objective: Objective = "dice", kl_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """``(loss, parts)`` for one minibatch of ``batch`` crops (module docstring for the formulas).

    ``parts``: ``dice_loss``, ``ce`` (mean NLL per voxel), ``kl`` (nats, unweighted), ``kl_weight``.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown variational objective {objective!r} (use {' or '.join(OBJECTIVES)})")
    if scale not in KL_SCALES:
        raise ConfigError(f"unknown KL scale {scale!r} (use {' or '.join(KL_SCALES)})")
    if n_train < 1 or batch < 1 or voxels_per_case < 1:
        raise ConfigError(f"n_train, batch and voxels_per_case must be >= 1, got {n_train}, {batch}, {voxels_per_case}")
    if not kl_weight >= 0.0:
        raise ConfigError(f"kl_weight must be >= 0, got {kl_weight}")
    dice, ce = dice_ce_loss(logits, target)
    if objective == "nll":
        # sum over the crops' voxels (B * C of them) for "seed"; the mean for "voxel"
        crop_voxels = logits[0, 0].numel()
        data = ce * (batch * crop_voxels) if scale == "seed" else ce
    else:
        data = CE_WEIGHT * ce + DICE_WEIGHT * dice
    if scale == "seed":
        loss = (n_train / batch) * data + kl_weight * kl
    else:
        loss = data + kl_weight * kl / float(n_train * voxels_per_case)
    return loss, {"dice_loss": float(dice.detach()), "ce": float(ce.detach()), "kl": float(kl.detach()),
                  "kl_weight": float(kl_weight)}


def kl_warmup_weight(iteration: int, warmup_iters: int) -> float:
    """Linear KL warm-up: ``beta = min(1, iteration / warmup_iters)`` for the 1-based ``iteration``;
    ``warmup_iters = 0`` is no warm-up (beta = 1 from the first step)."""
    if warmup_iters < 0 or iteration < 1:
        raise ConfigError(f"iteration must be >= 1 and warmup_iters >= 0, got {iteration}, {warmup_iters}")
    return 1.0 if warmup_iters == 0 else min(1.0, iteration / warmup_iters)


__all__ = [
    "CE_WEIGHT",
    "DICE_WEIGHT",
    "KL_SCALES",
    "OBJECTIVES",
    "KLScale",
    "Objective",
    "elbo_loss",
    "kl_warmup_weight",
]
