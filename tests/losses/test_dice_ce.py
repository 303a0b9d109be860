"""Dice + CE against hand-computed values on 2x2x2 volumes."""

from __future__ import annotations

import math

import torch

from tunepp_deploy.losses import dice_ce_loss, one_hot
from tunepp_deploy.losses.dice_ce import DICE_EPS


def test_uniform_prediction_hand_value() -> None:
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    labels[0, 0, 0, :] = 1
    labels[0, 1, 1, 1] = 1  # 3 foreground voxels of 8
    logits = torch.zeros(1, 2, 2, 2, 2, requires_grad=True)
    dice, ce = dice_ce_loss(logits, labels)
    # p = 1/2 everywhere: Dice_1 = (2 * 0.5 * 3 + eps) / (0.5 * 8 + 3 + eps)
    expected = 1 - (3 + DICE_EPS) / (7 + DICE_EPS)
    assert math.isclose(dice.item(), expected, rel_tol=1e-6)
    assert math.isclose(ce.item(), math.log(2), rel_tol=1e-6)
    (dice + ce).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_batchwise_dice_and_soft_targets_match_hard() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 2, 2, 2))
    logits = torch.randn(2, 3, 2, 2, 2)
    hard = dice_ce_loss(logits, labels)
    soft = dice_ce_loss(logits, one_hot(labels, 3))
    assert torch.allclose(hard[0], soft[0]) and torch.allclose(hard[1], soft[1])
    # batch-wise: sums over both samples before the ratio
    p = logits.softmax(1)
    g = one_hot(labels, 3)
    d = [(2 * (p[:, c] * g[:, c]).sum() + DICE_EPS) / (p[:, c].sum() + g[:, c].sum() + DICE_EPS) for c in (1, 2)]
    assert math.isclose(hard[0].item(), 1 - (d[0] + d[1]).item() / 2, rel_tol=1e-6)


def test_perfect_prediction_is_near_zero() -> None:
    labels = torch.randint(0, 3, (1, 2, 2, 2))
    logits = 30.0 * one_hot(labels, 3)
    dice, ce = dice_ce_loss(logits, labels)
    assert dice.item() < 1e-6 and ce.item() < 1e-6
