"""Variational uncertainty maps: the law-of-total-variance identity, the one-hot-variance meaning of the
aleatoric term, and the streaming moments against the all-samples reference."""

from __future__ import annotations

import torch

from tunepp_deploy.infer.uncertainty import entropy, epistemic_variance
from tunepp_deploy.methods.variational.uncertainty import SampleMoments, gini_impurity, variational_maps


def _probs(s: int = 7, k: int = 4, shape=(5, 6, 3), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3.0 * torch.randn(s, k, *shape, generator=g, dtype=torch.float64), dim=1)


def test_aleatoric_plus_epistemic_is_gini_of_the_mean() -> None:
    p = _probs()
    m = variational_maps(p)
    pbar = p.mean(0)
    assert torch.allclose(m.aleatoric + m.epistemic, 1.0 - (pbar * pbar).sum(0), atol=1e-12)
    assert torch.allclose(m.total, 1.0 - (pbar * pbar).sum(0), atol=1e-12)
    assert torch.allclose(m.epistemic, epistemic_variance(p))
    assert (m.aleatoric >= 0).all() and (m.epistemic >= 0).all() and (m.total <= 1.0).all()


def test_aleatoric_is_the_variance_of_a_one_hot_draw() -> None:
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    y = torch.nn.functional.one_hot(torch.multinomial(p, 400_000, replacement=True, generator=g), 3).double()
    assert abs(float(y.var(0, unbiased=False).sum()) - float(gini_impurity(p, 0))) < 2e-3
    assert float(gini_impurity(torch.tensor([0.0, 1.0, 0.0]), 0)) == 0.0  # a certain network: no label noise


def test_one_sample_or_identical_samples_have_no_epistemic_part() -> None:
    p = _probs(s=1)
    m = variational_maps(p.expand(5, *p.shape[1:]))
    assert torch.allclose(m.epistemic, torch.zeros_like(m.epistemic), atol=1e-12)
    assert torch.allclose(m.aleatoric, gini_impurity(p[0], 0))


def test_streaming_moments_equal_the_all_samples_maps() -> None:
    p = _probs(s=9).float()
    ref = variational_maps(p)
    acc = SampleMoments()
    for ps in p:
        acc.add(ps)
    got = acc.maps()
    for name in ("mean_probs", "epistemic", "aleatoric", "predictive_entropy", "mutual_information"):
        assert torch.allclose(getattr(got, name), getattr(ref, name).float(), atol=1e-6), name
    assert torch.allclose(got.predictive_entropy, entropy(p.mean(0), 0), atol=1e-6)
