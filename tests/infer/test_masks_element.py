"""Element-mode masks are a function of the voxel's position in the volume, so overlapping windows
apply one thinned network (the issue: window-relative masks disagreed on ~2p(1-p) of an overlap)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import element_keep, identity_masks, mask_alignment, sample_masks
from tunepp_deploy.infer.sliding_window import aligned_size, sliding_window, window_slices
from tunepp_deploy.model import TUNEPP
from tunepp_deploy.model.blocks.dropout import DropoutSite

P = 0.3
SITES = (
    DropoutSite("bottleneck", 6, P, "element", (4, 4, 4)),
    DropoutSite("dec0", 4, P, "element", (2, 2, 2)),
    DropoutSite("head", 3, P, "element", (1, 1, 1)),
)
WIN = (16, 16, 8)


def _overlap(a: tuple[int, ...], b: tuple[int, ...], win: tuple[int, ...]) -> list[tuple[int, int]]:
    """Per-axis [lo, hi) of the overlap of windows starting at ``a`` and ``b`` (empty axis -> lo >= hi)."""
    return [(max(x, y), min(x, y) + w) for x, y, w in zip(a, b, win, strict=True)]


def _feature_crop(mask: np.ndarray, start: tuple[int, ...], box: list[tuple[int, int]], stride) -> np.ndarray:
    """``mask[..., d, h, w]`` (one window's site mask) restricted to the voxel box ``box`` (global coords)."""
    sl = tuple(slice((lo - a) // s, (hi - a) // s) for (lo, hi), a, s in zip(box, start, stride, strict=True))
    return mask[(..., *sl)]


def test_overlapping_windows_use_the_same_entries() -> None:
    """The issue's test: on the overlap of any two windows of a tiling, both windows' masks are equal."""
    masks = sample_masks(SITES, WIN, 3, seed=7)
    align = mask_alignment(SITES)
    starts = [tuple(d.start for d in sl) for sl in window_slices((45, 37, 21), WIN, 0.5, align)]
    rows = masks.rows(range(3), len(starts), starts=starts)  # [3 * windows, C, ...] per site
    compared = differ = 0
    for site, r in zip(SITES, rows, strict=True):
        r = r.numpy().reshape(3, len(starts), *r.shape[1:])
        for i, j in itertools.combinations(range(len(starts)), 2):
            box = _overlap(starts[i], starts[j], WIN)
            if any(lo >= hi for lo, hi in box):
                continue
            a = _feature_crop(r[:, i], starts[i], box, site.stride)
            b = _feature_crop(r[:, j], starts[j], box, site.stride)
            assert a.size > 0
            compared += a.size
            differ += int((a != b).sum())
    assert compared > 10_000 and differ == 0


def test_off_overlap_entries_are_independent_draws() -> None:
    """Window-relative comparison (what reusing one mask per window did) now agrees only by chance:
    two independent Bernoulli(1-p) entries differ with probability 2p(1-p)."""
    site = SITES[2]
    a = element_keep(site, 0, 2, range(4), WIN, (0, 0, 0))
    b = element_keep(site, 0, 2, range(4), WIN, (8, 4, 0))  # overlapping window, shifted
    n = a.size
    rate = float((a != b).mean())
    expected = 2 * P * (1 - P)
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / n)
    # ...while the same global voxels agree: b[j] is a[j + shift]
    assert np.array_equal(a[:, :, 8:, 4:, :], b[:, :, :8, :12, :])


def test_keep_rate_matches_one_minus_p() -> None:
    for site in SITES:
        keep = element_keep(site, 3, 0, range(8), (32, 32, 16), (64, 32, 16))
        n = keep.size
        assert abs(keep.mean() - (1 - P)) < 5 * math.sqrt(P * (1 - P) / n), site.name
    # different channels, samples and sites are not copies of each other
    k = element_keep(SITES[2], 3, 2, range(2), WIN, (0, 0, 0))
    assert not np.array_equal(k[0], k[1]) and not np.array_equal(k[0, 0], k[0, 1])
    assert not np.array_equal(k, element_keep(SITES[2], 3, 1, range(2), WIN, (0, 0, 0)))


def test_same_seed_same_masks_other_seed_other_masks_and_prefix() -> None:
    starts = [(0, 0, 0), (4, 8, 0), (12, 0, 8)]
    a, b, c = (sample_masks(SITES, WIN, 5, seed=s).rows(range(5), 3, starts=starts) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    fewer = sample_masks(SITES, WIN, 2, seed=3).rows(range(2), 3, starts=starts)  # first S' independent of S
    assert all(torch.equal(x[:6], y) for x, y in zip(a, fewer, strict=True))


def test_rows_shapes_values_and_sample_major_order() -> None:
    m = sample_masks(SITES, WIN, 4, seed=1)
    assert m.element and m.positional and all(x is None for x in m.per_site)
    starts = [(0, 0, 0), (8, 4, 0)]
    rows = m.rows([3, 1], 2, starts=starts)
    for r, site in zip(rows, SITES, strict=True):
        assert r.shape == (4, *site.mask_shape(WIN, 1)[1:]) and r.dtype == torch.float32
        assert set(torch.unique(r).tolist()) <= {0.0, float(np.float32(1 / (1 - site.p)))}
    for j, s in enumerate([3, 1]):
        for b, st in enumerate(starts):
            one = m.rows([s], 1, starts=[st])
            assert all(torch.equal(r[j * 2 + b], o[0]) for r, o in zip(rows, one, strict=True))


def test_element_rows_need_aligned_window_positions() -> None:
    m = sample_masks(SITES, WIN, 2, seed=0)
    with pytest.raises(TuneppError, match="need the window positions") as err:
        m.rows([0], 2)
    assert "\n" not in str(err.value)
    with pytest.raises(TuneppError, match="not a multiple"):
        m.rows([0], 1, starts=[(2, 0, 0)])  # not a multiple of the bottleneck's stride 4
    with pytest.raises(TuneppError, match="2 window starts for 3"):
        m.rows([0], 3, starts=[(0, 0, 0), (4, 4, 4)])
    with pytest.raises(TuneppError, match="sample ids"):
        m.rows([2], 1, starts=[(0, 0, 0)])


def test_channel_sites_unchanged_and_mixed_networks() -> None:
    """Channel masks are the same PCG64 draw as before, with or without starts; element sites beside them."""
    chan = DropoutSite("dec1", 5, 0.2, "channel", (4, 4, 4))
    sites = (chan, SITES[2])
    m = sample_masks(sites, WIN, 3, seed=9)
    legacy = np.random.Generator(np.random.PCG64(np.random.SeedSequence([9, 0]))).random((3, 5)) >= 0.2
    assert np.array_equal(m.per_site[0], legacy.astype(np.float32) / np.float32(0.8))
    assert m.element and m.per_site[1] is None
    rows = m.rows([2, 0], 2, starts=[(0, 0, 0), (3, 5, 1)])  # head has stride 1: any start is aligned
    assert torch.equal(rows[0], torch.from_numpy(np.repeat(m.per_site[0][[2, 0]], 2, axis=0)))
    assert rows[1].shape == (4, 3, *WIN)
    only_channel = sample_masks((chan,), WIN, 3, seed=9)
    assert not only_channel.element and not only_channel.positional
    assert torch.equal(only_channel.rows([1], 4)[0], only_channel.rows([1], 4, starts=[(1, 2, 3)] * 4)[0])


def test_identity_and_p0_element_masks_are_ones() -> None:
    ident = identity_masks(SITES, WIN, 2)
    assert ident.element and not ident.positional  # ones are the same everywhere: no starts needed
    assert all((r == 1).all() for r in ident.rows([1], 3))
    p0 = sample_masks(tuple(DropoutSite(s.name, s.channels, 0.0, "element", s.stride) for s in SITES), WIN, 2, 0)
    assert all((r == 1).all() for r in p0.rows([0, 1], 1, starts=[(4, 8, 0)]))


def test_mask_alignment() -> None:
    chan = DropoutSite("dec1", 5, 0.2, "channel", (8, 8, 8))
    assert mask_alignment(()) == (1, 1, 1)
    assert mask_alignment((chan,)) == (1, 1, 1)
    assert mask_alignment(SITES) == (4, 4, 4)
    assert mask_alignment((chan, DropoutSite("x", 1, 0.1, "element", (2, 4, 1)))) == (2, 4, 1)


def test_entries_follow_the_documented_hash() -> None:
    """A pure-Python SplitMix64 spec of a few entries: the masks do not depend on NumPy's platform."""
    full, gamma = 2**64 - 1, 0x9E3779B97F4A7C15

    def mix(x: int) -> int:
        x ^= x >> 30
        x = x * 0xBF58476D1CE4E5B9 & full
        x ^= x >> 27
        x = x * 0x94D049BB133111EB & full
        return x ^ (x >> 31)

    seed, i, site = 11, 1, SITES[1]
    key = int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0])
    start = (8, 4, 6)
    keep = element_keep(site, seed, i, [0, 2], WIN, start)
    rng = np.random.default_rng(0)
    for _ in range(50):
        j, c, d, h, w = (int(rng.integers(n)) for n in (2, site.channels, 8, 8, 4))
        s = (0, 2)[j]
        gd, gh, gw = start[0] // 2 + d, start[1] // 2 + h, start[2] // 2 + w
        kc = mix((mix((key + (s + 1) * gamma) & full) + (c + 1) * gamma) & full)
        u = mix((kc + (((gd << 42) | (gh << 21) | gw) + 1) * gamma) & full) >> 11
        assert bool(keep[j, c, d, h, w]) == (u / 2**53 >= site.p)


def _upsample(m: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    for ax, s in enumerate(stride):
        m = m.repeat_interleave(s, dim=2 + ax)
    return m


@pytest.mark.parametrize("shape", [(26, 22, 12), (25, 19, 13)])
def test_stitched_sample_is_one_network_over_the_volume(shape: tuple[int, ...]) -> None:
    """A 'network' that multiplies its input by sample s's head/dec0 masks, stitched over overlapping
    windows, equals the volume times the masks of ONE window as large as the (aligned) volume: every
    voxel saw one mask value in all windows, so blending does not mix networks."""
    sites = SITES[1:]  # dec0 (stride 2) and head (stride 1): 4 + 3 channels
    win = (8, 8, 8)
    align = mask_alignment(sites)
    masks = sample_masks(sites, win, 2, seed=5)
    vol = torch.rand(7, *shape) + 0.5
    seen: list[tuple[int, ...]] = []

    def predictor(x: torch.Tensor, starts: list[tuple[int, ...]]) -> list[torch.Tensor]:
        seen.extend(starts)
        dec0, head = masks.rows([1], x.shape[0], starts=starts)
        return [x * torch.cat([_upsample(dec0, (2, 2, 2)), head], 1)]

    (out,) = sliding_window(vol, predictor, win, overlap=0.5, batch=3, align=align, with_starts=True)
    assert len(seen) > 8 and all(a % 2 == 0 for st in seen for a in st)
    full = tuple(aligned_size(s, w, a) for s, w, a in zip(shape, win, align, strict=True))
    whole = sample_masks(sites, full, 2, seed=5)  # same seed and sites, one window = the whole volume
    dec0, head = whole.rows([1], 1, starts=[(0, 0, 0)])
    ref = torch.cat([_upsample(dec0, (2, 2, 2)), head], 1)[0][(slice(None), *(slice(0, s) for s in shape))]
    torch.testing.assert_close(out, vol * ref, rtol=1e-5, atol=1e-6)


def test_tiny_element_network_runs_with_coherent_masks() -> None:
    """End to end with a tiny element-mode TUNE++: the masks fed to the network in overlapping windows
    agree on the overlap, and the stitched samples are proper (finite, different per sample)."""
    torch.manual_seed(0)
    net = TUNEPP(in_channels=1, num_classes=3, widths=[8, 16], depths=[1, 1], decoder_depths=[1], heads=2,
                 proj_tokens=8, dropout_sites=("dec0", "head"), dropout_p=0.25, dropout_mode="element").eval()
    sites = net.dropout_sites()
    win = (16, 16, 8)
    align = mask_alignment(sites)
    assert align == (2, 2, 2)
    masks = sample_masks(sites, win, 2, seed=0)
    vol = torch.rand(1, 27, 20, 11)
    fed: list[tuple[tuple[int, ...], list[np.ndarray]]] = []

    def predictor(s: int):
        def run(x: torch.Tensor, starts: list[tuple[int, ...]]) -> list[torch.Tensor]:
            rows = masks.rows([s], x.shape[0], starts=starts)
            fed.extend((st, [r[b].numpy() for r in rows]) for b, st in enumerate(starts))
            with torch.no_grad():
                return [torch.softmax(net(x, rows, with_aux=False).logits, 1)]
        return run

    probs = [sliding_window(vol, predictor(s), win, batch=4, align=align, with_starts=True)[0] for s in (0, 1)]
    assert all(p.shape == (3, 27, 20, 11) and torch.isfinite(p).all() for p in probs)
    assert not torch.allclose(probs[0], probs[1])
    n_win = len(fed) // 2
    overlaps = 0
    for (sa, ma), (sb, mb) in itertools.combinations(fed[:n_win], 2):  # sample 0's windows
        box = _overlap(sa, sb, win)
        if any(lo >= hi for lo, hi in box):
            continue
        overlaps += 1
        for site, a, b in zip(sites, ma, mb, strict=True):
            assert np.array_equal(_feature_crop(a, sa, box, site.stride), _feature_crop(b, sb, box, site.stride))
    assert overlaps >= 3
