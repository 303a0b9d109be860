"""The fused fold and the in-place stitching against the torch formulas they replace."""

from __future__ import annotations

import numpy as np
import torch

from tunepp_deploy.infer.allocator import Workspace
from tunepp_deploy.infer.logit_noise import draw_logit_noise, sampled_softmax
from tunepp_deploy.infer.moments import SampleStats
from tunepp_deploy.infer.sampling import stream_chunks
from tunepp_deploy.infer.sliding_window import sliding_window, stitch_sums
from tunepp_deploy.infer.stitch import ENTROPY_EPS, can_fold, entropy64, fold_chunk
from tunepp_deploy.infer.uncertainty import _EPS, entropy


def _probs(n: int, k: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    p = torch.rand(n, k, *shape, generator=torch.Generator().manual_seed(seed)) ** 3
    return p / p.sum(1, keepdim=True)


def _torch_fold(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p64 = chunk.double()
    return p64.sum(0), (p64 * p64).sum(1).sum(0), entropy(p64, 1).sum(0)


def test_fold_equals_torch_with_norm_and_crop() -> None:
    acc = _probs(4, 3, (9, 7, 6)) * 2.5
    norm = torch.rand(9, 7, 6, generator=torch.Generator().manual_seed(1)) + 0.5
    acc = acc * norm  # acc / norm is a distribution again, up to float32 round-off
    s, sq, ent = torch.zeros(3, 8, 5, 4, dtype=torch.float64), torch.zeros(8, 5, 4, dtype=torch.float64), None
    ent = torch.zeros_like(sq)
    fold_chunk(s, sq, ent, acc, norm)
    want = _torch_fold((acc / norm)[..., :8, :5, :4])
    for got, ref in zip((s, sq, ent), want, strict=True):
        assert float((got - ref).abs().max()) <= 1e-12


def test_sample_stats_paths_agree_for_any_chunking() -> None:
    p = _probs(7, 4, (6, 5, 4), seed=2)
    assert can_fold(p) and not can_fold(p.double())
    fused, slabs, stitched = SampleStats(), SampleStats(), SampleStats()
    fused.add(p[:3])
    fused.add(p[3:])
    slabs.add(p.double())  # the torch path
    stitched.add_stitched(p * 2.0, torch.full((6, 5, 4), 2.0), (6, 5, 4))
    a, b, c = fused.maps().stacked(), slabs.maps().stacked(), stitched.maps().stacked()
    assert float((a - b).abs().max()) <= 1e-6 and float((a - c).abs().max()) <= 1e-6


def test_one_sample_has_exactly_zero_mutual_information() -> None:
    st = SampleStats()
    st.add(_probs(1, 5, (4, 4, 4), seed=3))
    assert float(st.maps().mutual_information.abs().max()) == 0.0
    assert ENTROPY_EPS == _EPS
    p = _probs(1, 5, (4, 4, 4))[0].double()
    assert float((entropy64(p) - entropy(p, 0)).abs().max()) <= 1e-15


def test_in_place_stitching_equals_the_product_then_sum() -> None:
    vol = torch.rand(1, 21, 18, 13, generator=torch.Generator().manual_seed(4))
    w = (8, 8, 8)

    def pred(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.sigmoid(x.repeat(1, 3, 1, 1, 1) * torch.arange(1, 4).view(1, 3, 1, 1, 1))]

    (got,) = sliding_window(vol, pred, w, batch=3)
    # the old accumulation, by hand: a[sl] += o * weight, then / norm
    from tunepp_deploy.infer.sliding_window import gaussian_importance, window_slices

    g = gaussian_importance(w)
    acc, norm = torch.zeros(3, 21, 18, 13), torch.zeros(21, 18, 13)
    for sl in window_slices((21, 18, 13), w, 0.5):
        acc[(slice(None), *sl)] += pred(vol[(slice(None), *sl)][None])[0][0] * g
        norm[sl] += g
    assert float((got - acc / norm).abs().max()) <= 1e-6


def test_sample_major_sums_match_the_batch_major_blend() -> None:
    vol = torch.rand(1, 20, 17, 12, generator=torch.Generator().manual_seed(5))
    w, m = (8, 8, 8), 3
    scale = torch.arange(1, m + 1, dtype=torch.float32).view(m, 1, 1, 1, 1, 1)

    def per_sample(x: torch.Tensor, ids, starts) -> list[torch.Tensor]:  # [m, B, 2, *w], one buffer reused
        return [torch.sigmoid(x[None].repeat(1, 1, 2, 1, 1, 1) * scale[: len(ids)])]

    ((_, (streamed,)),) = list(stream_chunks(vol, per_sample, w, m, m, batch=2))
    for s in range(m):
        (ref,) = sliding_window(vol, lambda x, s=s: [per_sample(x, range(m), None)[0][s]], w, batch=2)
        assert float((streamed[s] - ref).abs().max()) <= 1e-6
    sums = stitch_sums(vol, lambda x, st: per_sample(x, range(m), st), w, batch=2, with_starts=True,
                       sample_major=True)
    assert sums.accs[0].shape == (m, 2, 20, 17, 12) and sums.spatial == (20, 17, 12)


def test_sampled_softmax_buffers_change_nothing() -> None:
    g = torch.Generator().manual_seed(6)
    z, lv = torch.randn(6, 4, 5, 6, 7, generator=g), torch.randn(6, 1, 5, 6, 7, generator=g)
    eps = torch.from_numpy(draw_logit_noise(0, range(6), 4, 4))
    ref = sampled_softmax(z, lv, eps)
    work, out = Workspace(), torch.empty(6, 4, 5, 6, 7)
    for _ in range(2):  # the second call reuses the first one's buffers
        got = sampled_softmax(z, lv, eps, out=out, work=work)
        assert got.data_ptr() == out.data_ptr() and torch.equal(got, ref)
    assert torch.equal(sampled_softmax(z, lv, None, out=out), torch.softmax(z, 1))


def test_fold_log_within_three_ulp_of_libm() -> None:
    from tunepp_deploy.infer.stitch import log64

    x = np.concatenate([np.geomspace(ENTROPY_EPS, 1.0, 500_001), np.linspace(0.5, 2.0, 50_001), [1.0, 1 - 1e-16]])
    ref, got = np.log(x), log64(x)
    nz = ref != 0  # spacing(0) is a denormal, which is 0 where a library has set flush-to-zero (seen in CI)
    assert (np.abs(got[nz] - ref[nz]) / np.spacing(np.abs(ref[nz]))).max() <= 3.0
    assert np.all(got[~nz] == 0.0) and log64(np.array([1.0]))[0] == 0.0
