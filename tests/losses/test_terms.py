"""Topology, uncertainty, calibration and hierarchical terms: hand values and behaviour."""

from __future__ import annotations

import math

import numpy as np
import torch

from tunepp_deploy.losses import (
    brier_score,
    calibration_loss,
    complexity_weights,
    dca,
    downsampled_targets,
    heteroscedastic_loss,
    hierarchical_loss,
    scale_weights,
    topology_loss,
)
from tunepp_deploy.losses.dice_ce import DICE_EPS


def test_topology_loss_hand_value() -> None:
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    labels[0, 0] = 1
    logits = torch.zeros(1, 2, 2, 2, 2, requires_grad=True)
    weights = torch.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    loss = topology_loss(logits, labels, weights)
    assert math.isclose(loss.item(), 4.5 * math.log(2), rel_tol=1e-6)  # mean(W) * log 2
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_spurious_component_costs_more_than_harmless_errors() -> None:
    """Same number of wrong voxels with the same confidence: a detached blob must cost more than a
    one-voxel layer added to the organ's face (no topology change). Fails if W ignores anomalies or
    is normalised by its sum."""
    lab = np.zeros((24, 24, 16), np.int64)
    lab[4:14, 4:14, 4:12] = 1
    harmless = lab.copy()
    harmless[14, 4:14, 4:12] = 1  # 10 x 8 = 80 voxels, a layer on one face
    spurious = lab.copy()
    spurious[18:22, 18:22, 2:7] = 1  # 4 x 4 x 5 = 80 voxels, detached
    assert (harmless != lab).sum() == (spurious != lab).sum() == 80
    labels = torch.from_numpy(lab)[None]

    def loss_for(pred: np.ndarray) -> float:
        logits = 4.0 * torch.nn.functional.one_hot(torch.from_numpy(pred), 2).movedim(-1, 0)[None].float()
        w = complexity_weights(lab[None], pred[None], 2, w_b=1.0, w_j=2.0, w_a=3.0, sigma=2.0)
        return topology_loss(logits, labels, torch.from_numpy(w)).item()

    assert loss_for(spurious) > 1.3 * loss_for(harmless)


def test_heteroscedastic_hand_value_with_explicit_noise() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, 2)
    log_var = torch.randn(1, 1, 2, 2, 2).requires_grad_()
    labels = torch.randint(0, 3, (1, 2, 2, 2))
    noise = torch.randn(4, 1, 3, 2, 2, 2)
    got = heteroscedastic_loss(logits, log_var, labels, noise=noise)
    z = logits.numpy()[None] + np.exp(0.5 * log_var.detach().numpy())[None] * noise.numpy()
    p = np.exp(z) / np.exp(z).sum(2, keepdims=True)
    py = np.take_along_axis(p, labels.numpy()[None, :, None], axis=2)[:, :, 0]  # [T, B, ...]
    expected = -np.log(py.mean(0)).mean()
    assert math.isclose(got.item(), float(expected), rel_tol=1e-5)
    got.backward()
    assert log_var.grad is not None and log_var.grad.abs().sum() > 0


def test_heteroscedastic_reduces_to_ce_without_noise_and_attenuates_errors() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, 2)
    labels = torch.randint(0, 3, (2, 2, 2, 2))
    tiny = torch.full((2, 1, 2, 2, 2), -30.0)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(heteroscedastic_loss(logits, tiny, labels), ce, atol=1e-5)
    # A confidently wrong voxel: more predicted variance lowers the loss (attenuation).
    wrong = torch.tensor([8.0, 0.0, 0.0]).view(1, 3, 1, 1, 1)
    y = torch.ones(1, 1, 1, 1, dtype=torch.long)
    torch.manual_seed(1)
    low = heteroscedastic_loss(wrong, torch.full((1, 1, 1, 1, 1), -4.0), y, samples=256)
    high = heteroscedastic_loss(wrong, torch.full((1, 1, 1, 1, 1), 4.0), y, samples=256)
    assert high < low


def test_calibration_hand_value() -> None:
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    labels[0, 0, 0] = 1  # 2 of 8 voxels are class 1
    logits = torch.zeros(1, 2, 2, 2, 2)
    logits[:, 0] = 2.0  # predicts class 0 everywhere with p0 = sigmoid(2)
    logits.requires_grad_()
    p0 = 1 / (1 + math.exp(-2))
    brier = (6 * 2 * (1 - p0) ** 2 + 2 * 2 * p0**2) / 8
    gap = abs(p0 - 6 / 8)
    probs = logits.softmax(1)
    assert math.isclose(brier_score(probs, labels).item(), brier, rel_tol=1e-5)
    assert math.isclose(dca(probs, labels).item(), gap, rel_tol=1e-5)
    loss = calibration_loss(logits, labels)
    assert math.isclose(loss.item(), brier + gap, rel_tol=1e-5)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_hierarchical_hand_value_and_weights() -> None:
    assert scale_weights(2) == [2 / 3, 1 / 3]
    assert scale_weights(1) == [1.0]
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    labels[0, 0] = 1  # half of the voxels
    t = downsampled_targets(labels, 2, (1, 1, 1))
    assert torch.allclose(t.flatten(), torch.tensor([0.5, 0.5]))
    aux = torch.zeros(1, 2, 1, 1, 1, requires_grad=True)
    loss = hierarchical_loss([aux], labels)
    dice = 1 - (2 * 0.5 * 0.5 + DICE_EPS) / (0.5 + 0.5 + DICE_EPS)
    assert math.isclose(loss.item(), dice + math.log(2), rel_tol=1e-5)
    loss.backward()
    assert aux.grad is not None
    assert hierarchical_loss([], labels).item() == 0.0
