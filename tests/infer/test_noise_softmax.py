"""The fused CPU sampled softmax (infer/noise_softmax.py) against the torch ops it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunepp_deploy.infer.logit_noise import draw_logit_noise, sampled_softmax
from tunepp_deploy.infer.noise_softmax import FACTOR_BOUND, antithetic_partners, exp_f32


def test_exp_matches_numpy_over_its_range() -> None:
    x = np.linspace(-87.0, 88.0, 2_000_001, dtype=np.float32)
    ref = np.exp(x.astype(np.float64))
    rel = np.abs(exp_f32(x).astype(np.float64) / ref - 1.0)
    assert rel.max() < 2e-7


def test_partners_found_only_where_draws_are_negated() -> None:
    assert antithetic_partners(draw_logit_noise(3, range(4), 8, 5)).tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert antithetic_partners(draw_logit_noise(3, range(4), 7, 5)).tolist() == [4, 5, 6, -1, 0, 1, 2]
    rng = np.random.default_rng(0)
    assert antithetic_partners(rng.standard_normal((4, 8, 5)).astype(np.float32)).tolist() == [-1] * 8
    e = draw_logit_noise(3, range(4), 8, 5)
    e[2, 6, 1] += 1.0  # one row breaks the pair (2, 6): neither may use the shortcut
    assert antithetic_partners(e).tolist() == [4, 5, -1, 7, 0, 1, -1, 3]


@pytest.mark.parametrize("draws", [1, 2, 7, 8])
@pytest.mark.parametrize("antithetic", [True, False])
def test_fused_equals_torch_path(draws: int, antithetic: bool) -> None:
    g = torch.Generator().manual_seed(draws + 10 * antithetic)
    rows, k, shape = 6, 5, (9, 10, 11)  # 990 voxels: two blocks per row, the second partial
    z = torch.randn(rows, k, *shape, generator=g) * 4
    lv = torch.randn(rows, 1, *shape, generator=g) - 2
    lv[2, :, :3] = 9.0  # sigma = e^4.5: sigma |eps| far above the factored form's bound in those blocks
    if antithetic:
        eps = torch.from_numpy(draw_logit_noise(5, range(rows), draws, k))
    else:
        eps = torch.randn(rows, draws, k, generator=g)
    assert float(torch.exp(0.5 * lv).max() * eps.abs().max()) > FACTOR_BOUND  # the fallback branch runs
    ref = sampled_softmax(z, lv, eps, fused=False)
    got = sampled_softmax(z, lv, eps)
    assert torch.isfinite(got).all()
    assert float((got - ref).abs().max()) < 1e-6
    assert torch.allclose(got.sum(1), torch.ones(rows, *shape), atol=1e-6)


def test_extreme_logits_stay_finite_and_exact() -> None:
    k = 5
    z = torch.zeros(2, k, 4, 4, 40)
    z[:, 0] = 80.0
    z[:, 3] = -90.0  # exp(z - max) far below float32's range: 0, as torch gives
    z[1, 2] = 79.5
    lv = torch.full((2, 1, 4, 4, 40), -1.0)
    eps = torch.from_numpy(draw_logit_noise(1, range(2), 8, k))
    ref = sampled_softmax(z, lv, eps, fused=False)
    got = sampled_softmax(z, lv, eps)
    assert torch.isfinite(got).all() and float((got - ref).abs().max()) < 1e-6


def test_non_contiguous_inputs_and_out_buffer() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, 6, 6, 12, generator=g).transpose(2, 4)  # non-contiguous logits
    lv = torch.randn(4, 1, 6, 6, 12, generator=g).transpose(2, 4)
    eps = torch.from_numpy(draw_logit_noise(0, [0], 4, 3)).expand(4, -1, -1)  # as the naive loop passes it
    out = torch.full(z.shape, float("nan"))
    got = sampled_softmax(z, lv, eps, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert float((got - sampled_softmax(z, lv, eps, fused=False)).abs().max()) < 1e-6
