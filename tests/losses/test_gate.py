"""The supervised gate's loss against hand-counted cases and scipy's Bernoulli KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.losses.gate import bernoulli_kl_with_logits, gate_loss, miss_probability, pool_to


def _two_class_case() -> tuple[torch.Tensor, torch.Tensor, float]:
    """2 classes on a 2x2x2 grid; logits (0, ln 3) give p = (1/4, 3/4) everywhere.

    Labels: five voxels class 1 (miss 1/4), three voxels class 0 (miss 3/4): mean miss
    (5 * 0.25 + 3 * 0.75) / 8 = 3.5 / 8 = 0.4375.
    """
    logits = torch.zeros(1, 2, 2, 2, 2, dtype=torch.float64)
    logits[:, 1] = math.log(3.0)
    labels = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]).reshape(1, 2, 2, 2)
    return logits, labels, 3.5 / 8


def test_miss_probability_hand_counted() -> None:
    logits, labels, _ = _two_class_case()
    miss = miss_probability(logits, labels)
    want = torch.where(labels == 1, 0.25, 0.75).unsqueeze(1).to(miss.dtype)
    assert miss.shape == (1, 1, 2, 2, 2)
    assert torch.allclose(miss, want, atol=1e-6)


def test_zero_when_prediction_equals_target() -> None:
    logits, labels, q = _two_class_case()
    z = torch.full((1, 1, 1, 1, 1), math.log(q / (1 - q)))  # sigmoid(z) == 0.4375
    assert float(gate_loss([z], logits, labels)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("u", [0.05, 0.3, 0.9])
def test_value_is_scipy_bernoulli_kl(u: float) -> None:
    logits, labels, q = _two_class_case()
    z = torch.full((1, 1, 1, 1, 1), math.log(u / (1 - u)))
    want = entropy([q, 1 - q], [u, 1 - u])  # KL(q || u) in nats
    assert float(gate_loss([z], logits, labels)) == pytest.approx(want, rel=1e-5)


def test_mean_over_blocks_and_cells_against_numpy() -> None:
    """Two blocks at strides 1 and (2, 2, 1); target = per-cell mean of 1 - p_true (numpy)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 2, generator=g)
    labels = torch.randint(0, 3, (2, 4, 4, 2), generator=g)
    z_fine = torch.randn(2, 1, 4, 4, 2, generator=g)
    z_coarse = torch.randn(2, 1, 2, 2, 2, generator=g)
    p = torch.softmax(logits.double(), 1).numpy()
    miss = 1 - np.take_along_axis(p, labels.numpy()[:, None], 1)[:, 0]  # [2, 4, 4, 2]
    coarse = miss.reshape(2, 2, 2, 2, 2, 2, 1).mean(axis=(2, 4, 6))  # cells of 2x2x1

    def kl(q: np.ndarray, z: torch.Tensor) -> float:
        u = 1 / (1 + np.exp(-z.double().numpy()[:, 0]))
        return float(np.mean(q * np.log(q / u) + (1 - q) * np.log((1 - q) / (1 - u))))

    want = (kl(miss, z_fine) + kl(coarse, z_coarse)) / 2
    assert float(gate_loss([z_fine, z_coarse], logits, labels)) == pytest.approx(want, rel=1e-5)


def test_gradient_is_sigmoid_minus_target_and_logits_are_detached() -> None:
    logits, labels, q = _two_class_case()
    logits = logits.float().requires_grad_(True)
    z = torch.full((1, 1, 1, 1, 1), 1.2, requires_grad=True)
    gate_loss([z], logits, labels).backward()
    assert z.grad is not None
    assert float(z.grad) == pytest.approx(1 / (1 + math.exp(-1.2)) - q, rel=1e-5)
    assert logits.grad is None  # the term never trains the segmentation


def test_kl_is_nonnegative_at_target_extremes() -> None:
    z = torch.linspace(-30, 30, 61)
    for q in (0.0, 1.0, 0.5):
        kl = bernoulli_kl_with_logits(z, torch.full_like(z, q))
        assert torch.isfinite(kl).all() and (kl >= -1e-6).all()
    assert float(bernoulli_kl_with_logits(torch.tensor(-30.0), torch.tensor(0.0))) == pytest.approx(0.0, abs=1e-6)


def test_pool_to_is_cell_mean() -> None:
    v = torch.arange(32.0).reshape(1, 1, 4, 4, 2)
    want = v.numpy().reshape(1, 1, 2, 2, 2, 2, 2, 1).mean(axis=(3, 5, 7))
    assert np.allclose(pool_to(v, (2, 2, 2)).numpy(), want)
    assert pool_to(v, (4, 4, 2)) is v


def test_no_gate_logits_is_a_zero_without_gradient() -> None:
    logits, labels, _ = _two_class_case()
    out = gate_loss([], logits.requires_grad_(True), labels)
    assert float(out) == 0.0 and not out.requires_grad


def test_bad_inputs_are_one_line_errors() -> None:
    logits, labels, _ = _two_class_case()
    with pytest.raises(TuneppError, match="does not divide"):
        gate_loss([torch.zeros(1, 1, 3, 1, 1)], logits, labels)
    with pytest.raises(TuneppError, match="do not match"):
        gate_loss([torch.zeros(1, 1, 1, 1, 1)], logits, labels[:, :1])
    with pytest.raises(TuneppError, match="expected"):
        gate_loss([torch.zeros(1, 2, 1, 1, 1)], logits, labels)
