"""Whole-volume saliency-variance fusion: shapes, S = 1, the fusion formula by hand, stitching parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.methods.saliency.experiment import tunepp_forward_sample
from tunepp_deploy.methods.saliency.volume import resolve_target, volume_maps, volume_saliency
from tunepp_deploy.methods.volume import per_sample_probs

WIN = (16, 16, 8)


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((24, 20, 12), dtype=np.float32)  # not a multiple of the window


def test_shapes_and_stitching_matches_plain_mc(tiny_backbone) -> None:
    masks = sample_masks(tiny_backbone.dropout_sites(), WIN, 3, seed=0)
    fwd = tunepp_forward_sample(tiny_backbone, masks)
    im = _image()
    got = volume_saliency(im, fwd, resolve_target(tiny_backbone), 3, WIN, overlap=0.5, batch=2)
    assert got.mean_probs.shape == (5, *im.shape) and got.samples == 3
    for m in (got.predictive_variance, got.saliency_variance, got.fused):
        assert m.shape == im.shape and torch.isfinite(m).all() and float(m.min()) >= 0.0
    assert float(got.fused.max()) <= 1.0 + 1e-6 and float(got.saliency_variance.max()) > 0.0
    # the softmax half is the same per-sample stitched MC as every other method's
    ref = per_sample_probs(im, fwd, 3, WIN, overlap=0.5, batch=2)
    assert torch.allclose(got.mean_probs, ref.mean(0), atol=1e-5)


def test_one_sample_has_no_saliency_variance(tiny_backbone) -> None:
    masks = sample_masks(tiny_backbone.dropout_sites(), WIN, 1, seed=0)
    got = volume_saliency(_image(), tunepp_forward_sample(tiny_backbone, masks), resolve_target(tiny_backbone), 1,
                          WIN)
    assert float(got.saliency_variance.abs().max()) == 0.0 and float(got.predictive_variance.abs().max()) == 0.0


def test_fused_map_by_hand() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((3, 2, 4, 3, 2))
    p /= p.sum(1, keepdims=True)  # [S, K, ...] probabilities
    cams = rng.random((3, 4, 3, 2)) * np.array([1.0, 4.0, 9.0])[:, None, None, None]  # arbitrary scales
    w = 0.3
    normed = [(c - c.min()) / (c.max() - c.min()) for c in cams]  # per whole-volume sample
    sv = np.var(normed, axis=0)
    pv = p.var(axis=0).sum(0)
    want = w * (pv - pv.min()) / (pv.max() - pv.min()) + (1 - w) * (sv - sv.min()) / (sv.max() - sv.min())
    got = volume_maps(torch.from_numpy(p), torch.from_numpy(cams), w)
    assert np.allclose(got.saliency_variance.numpy(), sv) and np.allclose(got.predictive_variance.numpy(), pv)
    assert np.allclose(got.fused.numpy(), want) and np.allclose(got.mean_probs.numpy(), p.mean(0))


def test_resolve_target(tiny_backbone) -> None:
    assert resolve_target(tiny_backbone) is tiny_backbone.encoder[-1]
    assert resolve_target(tiny_backbone, "decoder.0") is tiny_backbone.decoder[0]
    with pytest.raises(TuneppError, match="not a module"):
        resolve_target(tiny_backbone, "nope")


def test_streamed_moments_equal_the_stacked_samples(tiny_backbone) -> None:
    """volume_saliency keeps running sums only; stacking every stitched sample and taking the
    variance directly (volume_maps on the stack, itself checked by hand above) must agree."""
    from tunepp_deploy.infer.sliding_window import sliding_window
    from tunepp_deploy.methods.saliency.gradcam import seg_grad_cam

    s_count = 4
    masks = sample_masks(tiny_backbone.dropout_sites(), WIN, s_count, seed=3)
    fwd = tunepp_forward_sample(tiny_backbone, masks)
    layer = resolve_target(tiny_backbone)
    im = _image()
    vol = torch.from_numpy(im)[None]
    probs, cams = [], []
    for s in range(s_count):
        def predict(x: torch.Tensor, s: int = s) -> list[torch.Tensor]:
            cam, logits = seg_grad_cam(lambda t: fwd(t, s), layer, x)
            return [torch.softmax(logits, 1), cam[:, None]]

        p, c = sliding_window(vol, predict, WIN, overlap=0.5, batch=2)
        probs.append(p)
        cams.append(c[0])
    want = volume_maps(torch.stack(probs), torch.stack(cams), 0.4)
    got = volume_saliency(im, fwd, layer, s_count, WIN, overlap=0.5, batch=2, w=0.4)
    for a, b in ((got.mean_probs, want.mean_probs), (got.predictive_variance, want.predictive_variance),
                 (got.saliency_variance, want.saliency_variance), (got.fused, want.fused)):
        assert torch.allclose(a, b, atol=1e-6)
    # and the stacked variance is the plain numpy one of the per-volume min-max normalised CAMs
    normed = [(c.numpy() - c.numpy().min()) / (c.numpy().max() - c.numpy().min()) for c in cams]
    assert np.allclose(got.saliency_variance.numpy(), np.var(normed, axis=0), atol=1e-6)
