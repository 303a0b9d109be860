"""Whole-volume saliency-variance fusion (the saliency predictor): shapes, S = 1, the fusion formula by
hand, streamed chunks equal to the stacked samples (per-class CAMs after the last dropout site, and the
old bottleneck / summed-score variant), and its one-line refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_config import ROOT, TINY

from tunepp_deploy.config.load import load_config
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import mask_alignment, sample_masks
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.methods.saliency.experiment import tunepp_forward_sample
from tunepp_deploy.methods.saliency.gradcam import (
    BOTTLENECK,
    LAST_CONV,
    CamTarget,
    resolve_target,
    seg_grad_cam,
    seg_grad_cam_per_class,
)
from tunepp_deploy.model import build_network
from tunepp_deploy.predictors.saliency import SaliencyPredictor, SaliencyStats, open_saliency_predictor
from tunepp_deploy.predictors.settings import RunOptions, resolve
from tunepp_deploy.train.checkpoint import save_checkpoint

WIN = (16, 16, 8)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net(tiny_backbone):
    """A copy: the predictor freezes its network, which must not leak into the shared fixture."""
    return copy.deepcopy(tiny_backbone)


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((24, 20, 12), dtype=np.float32)  # not a multiple of the window


def _predictor(net, cfg, samples: int, seed: int = 0, chunk: int | None = None, w: float = 0.5,
               target: str = LAST_CONV, per_class: bool = True) -> SaliencyPredictor:
    settings = resolve(cfg, RunOptions(samples=samples, seed=seed, overlap=0.5, max_batch=2))
    return SaliencyPredictor(net, cfg, settings, CPU, target=target, weight=w, chunk=chunk, per_class=per_class)


def test_shapes_and_softmax_is_the_plain_per_sample_mc(net, tiny_cfg) -> None:
    im = _image()
    pred = _predictor(net, tiny_cfg, 3).predict(im)
    assert pred.probs.shape == (5, *im.shape) and pred.info["samples"] == 3 and pred.info["target"] == LAST_CONV
    assert pred.info["cam_classes"] == [1, 2, 3, 4] and pred.info["per_class"] is True
    for m in pred.maps.values():
        assert m.shape == im.shape and torch.isfinite(m).all() and float(m.min()) >= 0.0
    assert float(pred.maps["fused"].max()) <= 1.0 + 1e-6 and float(pred.maps["saliency_variance"].max()) > 0.0
    # the softmax half is the same per-sample stitched MC as every other method's (no gradients involved)
    fwd = tunepp_forward_sample(net, sample_masks(net.dropout_sites(), WIN, 3, seed=0))
    vol = torch.from_numpy(im)[None]
    with torch.no_grad():
        ref = torch.stack([sliding_window(vol, lambda x, s=s: [torch.softmax(fwd(x, s), 1)], WIN, 0.5, 2)[0]
                           for s in range(3)])
    assert torch.allclose(pred.probs, ref.mean(0), atol=1e-5)


def test_one_sample_has_no_variance(net, tiny_cfg) -> None:
    m = _predictor(net, tiny_cfg, 1).predict(_image()).maps
    assert float(m["saliency_variance"].abs().max()) == 0.0 and float(m["predictive_variance"].abs().max()) == 0.0


def test_fused_map_by_hand_any_chunking() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((3, 2, 4, 3, 2))
    p /= p.sum(1, keepdims=True)  # [S, K, ...] probabilities
    cams = rng.random((3, 4, 3, 2)) * np.array([1.0, 4.0, 9.0])[:, None, None, None]  # arbitrary scales
    w = 0.3
    normed = [(c - c.min()) / (c.max() - c.min()) for c in cams]  # per whole-volume sample
    sv = np.var(normed, axis=0)
    pv = p.var(axis=0).sum(0)
    want = w * (pv - pv.min()) / (pv.max() - pv.min()) + (1 - w) * (sv - sv.min()) / (sv.max() - sv.min())
    acc = SaliencyStats()
    acc.add(torch.from_numpy(p[:2]), torch.from_numpy(cams[:2]))  # a chunk of two, then one
    acc.add(torch.from_numpy(p[2:]), torch.from_numpy(cams[2:]))
    got = acc.maps(w)
    assert got.samples == 3
    assert np.allclose(got.saliency_variance.numpy(), sv) and np.allclose(got.predictive_variance.numpy(), pv)
    assert np.allclose(got.fused.numpy(), want) and np.allclose(got.mean_probs.numpy(), p.mean(0))
    with pytest.raises(ValueError, match="disagree"):
        acc.add(torch.from_numpy(p[:1]), torch.from_numpy(cams[:2]))


def test_fused_map_per_class_cams_by_hand() -> None:
    """Per-class CAMs [n, C, ...]: each class map normalised over the volume on its own, the class
    variances summed; a chunk with another class count is refused."""
    rng = np.random.default_rng(2)
    p = rng.random((3, 3, 4, 3, 2))
    p /= p.sum(1, keepdims=True)
    cams = rng.random((3, 2, 4, 3, 2)) * np.array([1.0, 4.0, 9.0])[:, None, None, None, None]
    sv = 0.0
    for c in range(2):
        normed = [(m - m.min()) / (m.max() - m.min()) for m in cams[:, c]]
        sv = sv + np.var(normed, axis=0)
    acc = SaliencyStats()
    acc.add(torch.from_numpy(p[:1]), torch.from_numpy(cams[:1]))
    acc.add(torch.from_numpy(p[1:]), torch.from_numpy(cams[1:]))
    assert np.allclose(acc.maps(0.5).saliency_variance.numpy(), sv)
    with pytest.raises(ValueError, match="classes"):
        acc.add(torch.from_numpy(p[:1]), torch.from_numpy(cams[:1, :1]))


def test_resolve_target(tiny_backbone) -> None:
    assert resolve_target(tiny_backbone) == CamTarget(tiny_backbone.out, "input")
    assert resolve_target(tiny_backbone, BOTTLENECK) == CamTarget(tiny_backbone.encoder[-1], "output")
    assert resolve_target(tiny_backbone, "decoder.0") == CamTarget(tiny_backbone.decoder[0], "output")
    with pytest.raises(TuneppError, match="not a module"):
        resolve_target(tiny_backbone, "nope")


def _norm(c: np.ndarray) -> np.ndarray:
    """Min-max over the whole volume; a constant map (a class no window predicts) becomes 0."""
    return (c - c.min()) / max(float(c.max() - c.min()), 1e-12)


def _stacked(net, target: str, per_class: bool) -> dict[str, np.ndarray]:
    """The reference: every sample's softmax and Grad-CAM(s) stitched on its own, then the variances
    of the stack by hand (numpy), each (class) CAM min-max normalised over its whole volume first and
    the class variances summed."""
    s_count, w = 4, 0.4
    fwd = tunepp_forward_sample(net, sample_masks(net.dropout_sites(), WIN, s_count, seed=3))
    layer = resolve_target(net, target)
    vol = torch.from_numpy(_image())[None]
    probs, cams = [], []
    for s in range(s_count):
        def predict(x: torch.Tensor, s: int = s) -> list[torch.Tensor]:
            if per_class:
                cam, logits = seg_grad_cam_per_class(lambda t: fwd(t, s), layer, x)
            else:
                cam, logits = seg_grad_cam(lambda t: fwd(t, s), layer, x)
                cam = cam[:, None]
            return [torch.softmax(logits, 1), cam]

        p, c = sliding_window(vol, predict, WIN, overlap=0.5, batch=2)
        probs.append(p.double().numpy())
        cams.append(c.double().numpy())  # [C, D, H, W]
    p, cams_a = np.stack(probs), np.stack(cams)
    sv = sum(np.var([_norm(c) for c in cams_a[:, k]], axis=0)
             for k in range(cams_a.shape[1]))
    pv = p.var(axis=0).sum(0)
    fused = w * (pv - pv.min()) / (pv.max() - pv.min()) + (1 - w) * (sv - sv.min()) / (sv.max() - sv.min())
    return {"probs": p.mean(0), "predictive_variance": pv, "saliency_variance": sv, "fused": fused,
            "classes": cams_a.shape[1]}


@pytest.fixture(scope="module")
def stacked(net) -> dict[str, np.ndarray]:
    return _stacked(net, LAST_CONV, True)


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_streamed_chunks_equal_the_stacked_samples(net, tiny_cfg, stacked, chunk: int) -> None:
    pred = _predictor(net, tiny_cfg, 4, seed=3, chunk=chunk, w=0.4).predict(_image())
    assert pred.info["sample_chunk"] == chunk and stacked["classes"] == 4
    assert np.allclose(pred.probs.numpy(), stacked["probs"], atol=1e-6)
    for k in ("predictive_variance", "saliency_variance", "fused"):
        assert np.allclose(pred.maps[k].numpy(), stacked[k], atol=1e-6), k
    assert float(pred.maps["saliency_variance"].max()) > 0.0


def test_old_bottleneck_summed_score_variant_equals_its_stacked_samples(net, tiny_cfg) -> None:
    ref = _stacked(net, BOTTLENECK, False)
    pred = _predictor(net, tiny_cfg, 4, seed=3, chunk=2, w=0.4, target=BOTTLENECK, per_class=False).predict(_image())
    assert ref["classes"] == 1 and pred.info["per_class"] is False
    for k in ("predictive_variance", "saliency_variance", "fused"):
        assert np.allclose(pred.maps[k].numpy(), ref[k], atol=1e-6), k


def test_element_masks_follow_the_volume_position(tmp_path) -> None:
    """Element-mode dropout: windows on the sites' stride grid and each window's masks from its start,
    so sample s is one thinned network over the scan — the reference stitches it that way by hand."""
    cfg = load_config(ROOT / "configs" / "phantom.yaml", {**TINY, "model.dropout.mode": "element"})
    torch.manual_seed(1)
    net = build_network(cfg).eval()
    s_count, im = 2, _image()
    masks = sample_masks(net.dropout_sites(), WIN, s_count, seed=5)
    align = mask_alignment(net.dropout_sites())
    assert masks.element and max(align) > 1  # starts really are constrained: the check is not vacuous
    layer = resolve_target(net)
    vol = torch.from_numpy(im)[None]
    probs, cams = [], []
    for s in range(s_count):
        def predict(x: torch.Tensor, starts: list, s: int = s) -> list[torch.Tensor]:
            fwd = lambda t: net(t, masks.rows([s], t.shape[0], starts=starts), with_aux=False).logits  # noqa: E731
            cam, logits = seg_grad_cam_per_class(fwd, layer, x)
            return [torch.softmax(logits, 1), cam]

        p, c = sliding_window(vol, predict, WIN, overlap=0.5, batch=2, align=align, with_starts=True)
        probs.append(p.double())
        cams.append(c.double().numpy())
    cams_a = np.stack(cams)
    want_sv = sum(np.var([_norm(c) for c in cams_a[:, k]], axis=0)
                  for k in range(cams_a.shape[1]))
    for chunk in (1, s_count):
        pred = _predictor(net, cfg, s_count, seed=5, chunk=chunk).predict(im)
        assert np.allclose(pred.probs.numpy(), torch.stack(probs).mean(0).numpy(), atol=1e-6)
        assert np.allclose(pred.maps["saliency_variance"].numpy(), want_sv, atol=1e-6)
        assert float(pred.maps["predictive_variance"].max()) > 0.0


def test_open_refuses_backends_without_autograd(tiny_cfg, tiny_backbone, tmp_path) -> None:
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_backbone, tiny_cfg)
    with open_saliency_predictor(ckpt, "auto", CPU, None, RunOptions(samples=2), target="decoder.0", weight=0.2) as p:
        assert p.layer.module is p.net.decoder[0] and p.describe()["fusion_weight"] == 0.2 and p.flag_map == "fused"
        assert p.settings.samples == 2 and "autograd" in p.describe_runner()
    for backend in ("ort", "trt"):
        with pytest.raises(TuneppError, match="autograd"):
            open_saliency_predictor(ckpt, backend, CPU, None, RunOptions())
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    with pytest.raises(TuneppError, match="checkpoint"):
        open_saliency_predictor(onnx_file, "auto", CPU, None, RunOptions())
    with pytest.raises(TuneppError, match="--blend"):
        open_saliency_predictor(ckpt, "auto", CPU, None, RunOptions(blend="window"))
    with pytest.raises(TuneppError, match="fusion weight"):
        open_saliency_predictor(ckpt, "auto", CPU, None, RunOptions(), weight=1.5)
