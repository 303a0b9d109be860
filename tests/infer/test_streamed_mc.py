"""The streamed MC engine against independent references: the per-sample blend computed by hand,
brute-force Monte Carlo of the logit noise, and the law of total variance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from infer_helpers import FakeRunner
from tunepp_deploy.export.metadata import ModelMeta, meta_for

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.logit_noise import draw_logit_noise, sampled_softmax
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.moments import SLAB_BYTES, SampleStats
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.torch_runner import TorchRunner
from tunepp_deploy.infer.sampling import plan_chunk
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.infer.uncertainty import gini_impurity, maps_from_samples
from tunepp_deploy.model import TUNEPP
from tunepp_deploy.model.blocks.dropout import DropoutSite

SITES = (DropoutSite("dec1", 16, 0.2, "channel", (4, 4, 4)), DropoutSite("dec0", 8, 0.2, "channel", (2, 2, 2)))
WIN = (16, 16, 16)


class _NoisyFake(FakeRunner):
    """The shared fake runner with a log-variance that varies over the window."""

    varying_log_var = True


@pytest.fixture
def fake(cfg) -> _NoisyFake:
    return _NoisyFake(ModelMeta(cfg, WIN, SITES), torch.device("cpu"))


def _reference(volume: torch.Tensor, runner: Runner, samples: int, seed: int, draws: int):
    """Per-sample blend by hand: each sample's predictive stitched over the volume, then the formulas."""
    masks = sample_masks(runner.meta.sites, runner.meta.window, samples, seed)
    noise = torch.from_numpy(draw_logit_noise(seed, range(samples), draws, runner.meta.num_classes))
    stitched = []
    for s in range(samples):
        def predictor(x: torch.Tensor, s: int = s) -> list[torch.Tensor]:
            logits, log_var = runner(x, masks.rows([s], x.shape[0]))
            return [sampled_softmax(logits, log_var, noise[[s]].repeat(x.shape[0], 1, 1))]

        stitched.append(sliding_window(volume, predictor, runner.meta.window, overlap=0.5, batch=2)[0])
    return maps_from_samples(torch.stack(stitched).double()), masks


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_streamed_equals_per_sample_blend_for_any_chunk(fake: _NoisyFake, chunk: int) -> None:
    vol = torch.rand(1, 30, 26, 20, generator=torch.Generator().manual_seed(3))
    ref, masks = _reference(vol, fake, 5, seed=4, draws=4)
    res = mc_predict(vol, fake, masks, MCSettings(samples=5, seed=4, max_batch=2, noise_draws=4, sample_chunk=chunk))
    assert res.sample_chunk == chunk and res.blend == "sample"
    for name in ("mean_probs", "epistemic", "aleatoric", "predictive_entropy", "mutual_information"):
        assert float((getattr(res.maps, name).double() - getattr(ref, name)).abs().max()) <= 1e-6, name


def test_budget_picks_chunks_and_refuses_what_cannot_fit(fake: _NoisyFake) -> None:
    v = 240 * 240 * 160
    # float32 chunk (+ its normalised copy) per sample; float64 stats + input/norm/importance + slab temporaries
    per_sample, fixed = 2 * 4 * 9 * v, (9 + 2) * 8 * v + 12 * v + 4 * min(SLAB_BYTES, 9 * 8 * v)
    assert plan_chunk((240, 240, 160), (96, 96, 96), 9, 25, (fixed + 3 * per_sample + 100) / 2**30) == 3
    assert plan_chunk((240, 240, 160), (96, 96, 96), 9, 25, 100.0) == 25
    assert plan_chunk((240, 240, 160), (96, 96, 96), 9, 25, (fixed + 3 * per_sample + 100) / 2**30,
                      per_sample_bytes=per_sample) == 1  # each sample's call buffers count too
    with pytest.raises(TuneppError, match="exact blend"):
        plan_chunk((240, 240, 160), (96, 96, 96), 9, 25, (fixed + per_sample - 1) / 2**30)
    vol = torch.rand(1, 30, 26, 20, generator=torch.Generator().manual_seed(3))
    masks = sample_masks(SITES, WIN, 6, seed=0)
    full = mc_predict(vol, fake, masks, MCSettings(samples=6))
    two = mc_predict(vol, fake, masks, MCSettings(samples=6, sample_chunk=2))
    assert full.sample_chunk == 6 and full.trunk == "once" and two.trunk == "recomputed"  # one-graph runner
    assert torch.allclose(full.maps.stacked(), two.maps.stacked(), atol=1e-6)


def test_torch_trunk_cached_across_chunks_changes_nothing(net: TUNEPP, cfg) -> None:
    runner = TorchRunner(net, meta_for(net, cfg), torch.device("cpu"))
    vol = torch.rand(1, 52, 40, 30, generator=torch.Generator().manual_seed(0))
    masks = sample_masks(runner.meta.sites, runner.meta.window, 4, seed=1)
    one = mc_predict(vol, runner, masks, MCSettings(samples=4, noise_draws=2))
    cached = mc_predict(vol, runner, masks, MCSettings(samples=4, noise_draws=2, sample_chunk=1))
    assert one.trunk == "once" and cached.trunk == "cached" and cached.extra["sample_chunks"] == 4
    assert float((one.maps.stacked() - cached.maps.stacked()).abs().max()) <= 1e-6


def test_tightest_budget_streams_without_the_trunk_cache(net: TUNEPP, cfg) -> None:
    """At the smallest budget that fits one sample per chunk, the trunk cache cannot take its share: the engine
    recomputes the trunk per chunk (same maps) instead of refusing a run that fits."""
    runner = TorchRunner(net, meta_for(net, cfg), torch.device("cpu"))
    vol = torch.rand(1, 52, 40, 30, generator=torch.Generator().manual_seed(0))
    masks = sample_masks(runner.meta.sites, runner.meta.window, 4, seed=1)
    ample = mc_predict(vol, runner, masks, MCSettings(samples=4, noise_draws=2))

    def fits(gb: float) -> bool:
        try:
            plan = mc_predict(vol, runner, masks, MCSettings(samples=4, noise_draws=2, memory_gb=gb))
        except TuneppError:
            return False
        fitted.append(plan)
        return True

    fitted: list = []
    lo, hi = 1e-4, 1.0
    assert fits(hi) and not fits(lo)
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    tight = fitted[-1]
    assert tight.sample_chunk < 4 and tight.trunk == "recomputed" and tight.extra["trunk_cache_bytes"] == 0
    # float32 round-off only: the tight budget also runs fewer windows per call (other conv batch shapes)
    assert float((ample.maps.stacked() - tight.maps.stacked()).abs().max()) <= 1e-5


def test_decomposition_sums_exactly() -> None:
    p = torch.rand(7, 4, 50, dtype=torch.float64)
    p = p / p.sum(1, keepdim=True)
    stats = SampleStats()
    stats.add(p[:3])
    stats.add(p[3:])
    m = stats.maps()
    pbar = p.mean(0)
    assert torch.allclose(m.total.double(), 1 - (pbar * pbar).sum(0), atol=1e-6)
    assert torch.allclose(m.aleatoric.double(), gini_impurity(p, 1).mean(0), atol=1e-6)
    assert torch.allclose(m.epistemic.double(), p.var(0, unbiased=False).sum(0), atol=1e-6)
    assert torch.allclose(m.predictive_entropy, m.mutual_information + m.expected_entropy, atol=1e-6)


def _brute_force_gini(margin: float, sigma: float, n: int = 200_000) -> float:
    """Gini impurity of E[softmax(z + sigma eps)] for z = (margin, 0), independent NumPy draws."""
    e = np.random.default_rng(123).standard_normal((n, 2))
    p1 = 1.0 / (1.0 + np.exp(-(margin + sigma * (e[:, 0] - e[:, 1]))))
    pbar = p1.mean()
    return float(1.0 - pbar**2 - (1.0 - pbar) ** 2)


@pytest.mark.parametrize(("margin", "sigma"), [(8.0, 4.0), (8.0, 2.0), (4.0, 2.0), (1.0, 2.0)])
def test_sampled_aleatoric_matches_brute_force(margin: float, sigma: float) -> None:
    """The four cases where the first-order map failed (5e-5 vs ~0.2 at margin 8, sigma 4)."""
    want = _brute_force_gini(margin, sigma)
    z = torch.tensor([margin, 0.0]).view(1, 2, 1)
    lv = torch.full((1, 1, 1), math.log(sigma**2))
    S, T = 200, 32  # aleatoric = mean over S samples of the T-draw predictive's Gini
    eps = torch.from_numpy(draw_logit_noise(7, range(S), T, 2))
    ginis = [float(gini_impurity(sampled_softmax(z, lv, eps[[s]]), 1)) for s in range(S)]
    got = float(np.mean(ginis))
    # the T-draw estimate of a Gini is biased low by sum_k Var[p_k] / T (<= 0.5 / T): allow that + MC error
    assert got == pytest.approx(want, abs=0.5 / T + 4 * np.std(ginis) / math.sqrt(S) + 2e-3)
    assert got > 0.25 * want  # never ~0 where the noise flips the argmax


def test_zero_noise_gives_expected_gini_of_plain_softmax() -> None:
    z = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(0))
    lv = torch.full((3, 1, 10), -40.0)  # sigma = 2e-9
    eps = torch.from_numpy(draw_logit_noise(0, range(3), 6, 4))
    assert torch.allclose(sampled_softmax(z, lv, eps), torch.softmax(z, 1), atol=1e-6)
    assert torch.equal(sampled_softmax(z, lv, eps[:, :0]), torch.softmax(z, 1))


def test_noise_draws_depend_on_seed_and_sample_only() -> None:
    a = draw_logit_noise(3, [0, 1, 2, 3], 6, 5)
    assert np.array_equal(a[2:], draw_logit_noise(3, [2, 3], 6, 5))  # the first S' samples do not depend on S
    assert not np.array_equal(a, draw_logit_noise(4, [0, 1, 2, 3], 6, 5))
    assert np.allclose(a[:, :3], -a[:, 3:])  # antithetic pairs
