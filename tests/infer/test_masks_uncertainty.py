"""Mask sampler and uncertainty formulas on tiny hand-made cases (no network, no export)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from infer_helpers import FakeRunner

from tunepp_deploy.infer.masks import identity_masks, sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.uncertainty import epistemic_variance, maps_from_samples
from tunepp_deploy.model.blocks.dropout import DropoutSite

SITES = (DropoutSite("dec1", 16, 0.1, "channel", (4, 4, 4)), DropoutSite("dec0", 8, 0.1, "channel", (2, 2, 2)))
WIN = (8, 8, 8)


def test_same_seed_same_masks_other_seed_other_masks() -> None:
    a, b, c = (sample_masks(SITES, WIN, 5, seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a.per_site, b.per_site, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.per_site, c.per_site, strict=True))


def test_masks_values_shapes_and_prefix_property() -> None:
    m = sample_masks(SITES, WIN, 6, seed=0)
    assert [x.shape for x in m.per_site] == [(6, 16), (6, 8)]
    for x, site in zip(m.per_site, SITES, strict=True):
        assert set(np.unique(x)) <= {0.0, np.float32(1 / (1 - site.p))}
    fewer = sample_masks(SITES, WIN, 3, seed=0)  # the first S' samples do not depend on S
    assert all(np.array_equal(x[:3], y) for x, y in zip(m.per_site, fewer.per_site, strict=True))
    assert all((x == 1).all() for x in identity_masks(SITES, WIN, 2).per_site)
    p0 = sample_masks(tuple(replace(s, p=0.0) for s in SITES), WIN, 4, seed=0)
    assert all((x == 1).all() for x in p0.per_site)


def test_rows_are_sample_major() -> None:
    m = sample_masks(SITES, WIN, 3, seed=1)
    rows = m.rows([0, 2], windows=2)
    site0 = m.per_site[0]
    expected = np.stack([site0[0], site0[0], site0[2], site0[2]])
    assert np.array_equal(rows[0].numpy(), expected)


def test_epistemic_and_mutual_information_hand_case() -> None:
    # two samples that disagree completely: p = [1, 0] and [0, 1]
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, :, None]  # [S=2, K=2, 1 voxel]
    maps = maps_from_samples(probs)
    assert maps.epistemic.item() == pytest.approx(0.5)  # 0.25 + 0.25
    assert maps.aleatoric.item() == pytest.approx(0.0)  # each network is certain
    assert maps.total.item() == pytest.approx(0.5)  # 1 - (0.5^2 + 0.5^2)
    assert maps.predictive_entropy.item() == pytest.approx(math.log(2))
    assert maps.mutual_information.item() == pytest.approx(math.log(2))
    one = maps_from_samples(probs[:1])  # S = 1: nothing epistemic
    assert one.epistemic.item() == 0.0 and one.mutual_information.item() == 0.0


def test_epistemic_variance_is_population_variance() -> None:
    probs = torch.rand(5, 3, 4)
    probs = probs / probs.sum(1, keepdim=True)
    ref = probs.numpy().var(axis=0).sum(0)
    assert np.allclose(epistemic_variance(probs).numpy(), ref, atol=1e-6)


@pytest.fixture
def fake(cfg) -> FakeRunner:
    from tunepp_deploy.export.metadata import ModelMeta

    meta = ModelMeta(cfg, (16, 16, 16), SITES)
    return FakeRunner(meta, torch.device("cpu"))


def test_blends_agree_on_one_window_and_window_blend_moves_aleatoric_to_epistemic(fake: FakeRunner) -> None:
    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, 16, 16, 16, generator=g)
    m = sample_masks(SITES, (16, 16, 16), 6, seed=0)
    a = mc_predict(one, fake, m, MCSettings(samples=6, blend="sample")).maps
    b = mc_predict(one, fake, m, MCSettings(samples=6, blend="window")).maps
    assert torch.allclose(a.epistemic, b.epistemic, atol=1e-6)
    assert torch.allclose(a.mean_probs, b.mean_probs, atol=1e-6)
    ramp = torch.linspace(0, 1, 30).view(1, 30, 1, 1)  # windows with different means disagree
    big = ramp + 0.1 * torch.rand(1, 30, 26, 20, generator=g)
    a = mc_predict(big, fake, m, MCSettings(samples=6, blend="sample")).maps
    b = mc_predict(big, fake, m, MCSettings(samples=6, blend="window")).maps
    assert torch.allclose(a.mean_probs, b.mean_probs, atol=1e-5)  # the mean is linear: identical
    assert torch.allclose(a.total, b.total, atol=1e-5)  # total depends on the mean alone: exact in both
    assert (b.epistemic >= a.epistemic - 1e-6).all()  # var of a blend <= blend of vars
    assert (b.epistemic > a.epistemic + 1e-6).any()


def test_rows_per_call_change_nothing(fake: FakeRunner) -> None:
    """Fewer rows per runner call (a tight budget) give the same maps; the per-window blend uses the whole
    budget for calls, so it is where a tiny budget splits a window's samples over several calls."""
    vol = torch.rand(1, 20, 18, 17, generator=torch.Generator().manual_seed(1))
    m = sample_masks(SITES, (16, 16, 16), 5, seed=2)
    full = mc_predict(vol, fake, m, MCSettings(samples=5, blend="window"))
    rows3 = 3 * 16**3 * 4 * (8 * 8 + 3 * 5 + 4) / 2**30  # ~3 rows of the phantom config's row estimate per call
    chunked = mc_predict(vol, fake, m, MCSettings(samples=5, blend="window", memory_gb=rows3))
    assert chunked.plan.samples_per_call < 5 and chunked.calls > full.calls
    assert torch.allclose(full.maps.stacked(), chunked.maps.stacked(), atol=1e-6)


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 8, 13, 25])
@pytest.mark.parametrize("blend", ["sample", "window"])
def test_chosen_rows_per_call_change_nothing(fake: FakeRunner, rows: int, blend: str) -> None:
    """``MCSettings.rows_per_call`` at every candidate size gives the maps of one call of all 25 rows."""
    vol = torch.rand(1, 20, 18, 17, generator=torch.Generator().manual_seed(1))
    m = sample_masks(SITES, (16, 16, 16), 25, seed=2)
    whole = mc_predict(vol, fake, m, MCSettings(samples=25, blend=blend, rows_per_call=25, max_batch=1))
    assert whole.plan.samples_per_call == 25
    split = mc_predict(vol, fake, m, MCSettings(samples=25, blend=blend, rows_per_call=rows, max_batch=1))
    assert split.plan.samples_per_call == rows and split.calls == whole.windows * -(-25 // rows)
    assert torch.allclose(whole.maps.stacked(), split.maps.stacked(), atol=1e-6)
