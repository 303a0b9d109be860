"""Seg-Grad-CAM by hand, saliency variance / fusion, 2D U-Net masks + ONNX parity, ISIC reader, 3D TUNE++."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from tunepp_deploy.errors import DataError, TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.methods.saliency import (
    BOTTLENECK,
    LAST_CONV,
    CamTarget,
    class_saliency_variance,
    fuse,
    mc_saliency,
    resolve_target,
    saliency_variance,
    seg_grad_cam,
    seg_grad_cam_per_class,
    uncertainty_calibration,
)
from tunepp_deploy.methods.saliency.experiment import (
    run_saliency_comparison,
    t_ci95,
    tunepp_forward_sample,
    unet2d_forward_sample,
)
from tunepp_deploy.methods.saliency.isic import read_isic
from tunepp_deploy.methods.unet2d import UNet2d


def test_grad_cam_by_hand() -> None:
    """1x1 conv (target, A = U x) then 1x1 conv to 2 classes (z = W A + b): for class 1 over the
    predicted mask M, dS/dA_k(v) = W_1k [v in M], so alpha_k = W_1k |M| / N and
    cam = ReLU(sum_k alpha_k A_k)."""
    torch.manual_seed(0)
    feat, head = nn.Conv2d(1, 3, 1), nn.Conv2d(3, 2, 1)
    net = nn.Sequential(feat, head)
    x = torch.randn(1, 1, 4, 4)
    cam, logits = seg_grad_cam(net, feat, x, classes=[1])
    with torch.no_grad():
        a = feat(x)[0].numpy()  # [3, 4, 4]
    m = (logits.argmax(1)[0] == 1).numpy()
    w1 = head.weight[1, :, 0, 0].detach().numpy()
    alpha = w1 * m.sum() / m.size
    want = np.maximum((alpha[:, None, None] * a).sum(0), 0.0)
    assert m.any() and np.allclose(cam[0].numpy(), want, atol=1e-6)


def test_grad_cam_frozen_weights_and_3d_upsampling() -> None:
    feat = nn.Conv3d(1, 2, 2, stride=2)
    net = nn.Sequential(feat, nn.Upsample(scale_factor=2.0), nn.Conv3d(2, 2, 1))
    for p in net.parameters():
        p.requires_grad_(False)
    cam, _ = seg_grad_cam(net, feat, torch.randn(2, 1, 4, 4, 2))
    assert cam.shape == (2, 4, 4, 2) and float(cam.min()) >= 0.0


def test_saliency_variance_and_fusion() -> None:
    same = torch.rand(1, 4, 4).expand(3, 1, 4, 4) * torch.tensor([1.0, 5.0, 9.0])[:, None, None, None]
    assert float(saliency_variance(same).abs().max()) < 1e-10  # scale-only differences vanish
    pv, sv = torch.rand(2, 4, 4), torch.rand(2, 4, 4)
    f = fuse(pv, sv, 1.0)
    assert torch.allclose(f[0], (pv[0] - pv[0].min()) / (pv[0].max() - pv[0].min()))
    assert float(fuse(pv, sv, 0.3).max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError):
        fuse(pv, sv, 1.5)


def test_uncertainty_calibration_perfect_map() -> None:
    labels = np.array([[0, 1, 1, 2]])
    probs = np.zeros((3, 1, 4))
    probs[[0, 1, 1, 1], 0, [0, 1, 2, 3]] = 1.0  # last voxel wrong (pred 1, true 2)
    u = np.array([[0.0, 0.0, 0.0, 1.0]])
    r = uncertainty_calibration(u, probs, labels)
    assert r["auroc"] == 1.0 and r["fg_ece"] < 1e-9


def test_unet2d_masks_parity_and_determinism(tmp_path) -> None:
    torch.manual_seed(0)
    net = UNet2d(3, 2, (4, 8)).eval()
    x = torch.randn(2, 3, 8, 8)
    masks = sample_masks(net.dropout_sites(), (1, 1, 1), 3, seed=4)
    again = sample_masks(net.dropout_sites(), (1, 1, 1), 3, seed=4)
    assert torch.equal(net(x, masks.rows([1], 2)), net(x, again.rows([1], 2)))
    assert not torch.equal(net(x, masks.rows([0], 2)), net(x, masks.rows([1], 2)))
    m = masks.rows([2], 2)
    torch.onnx.export(net, (x, m), tmp_path / "u.onnx", input_names=["x", "mask_bottleneck", "mask_dec0"],
                      output_names=["logits"], dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(tmp_path / "u.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy(), "mask_bottleneck": m[0].numpy(), "mask_dec0": m[1].numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - net(x, m).numpy()).max() <= 1e-4


def test_mc_saliency_on_tunepp_3d(tiny_backbone) -> None:
    masks = sample_masks(tiny_backbone.dropout_sites(), (16, 16, 8), 3, seed=0)
    x = torch.randn(1, 1, 16, 16, 8)
    layer = resolve_target(tiny_backbone)
    maps = mc_saliency(tunepp_forward_sample(tiny_backbone, masks), layer, x, 3, w=0.5)
    assert maps.predictive_variance.shape == maps.saliency_variance.shape == maps.fused.shape == (1, 16, 16, 8)
    assert float(maps.saliency_variance.max()) > 0.0
    again = mc_saliency(tunepp_forward_sample(tiny_backbone, masks), layer, x, 3, w=0.5)
    assert torch.equal(maps.fused, again.fused)


# ----------------------------------------------------------------- per-class Grad-CAM after the dropout sites


def _brute_force_cams(f1: nn.Module, f2: nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Grad-CAM written out without hooks: A = f1(x) as a leaf, z = f2(A), for each class c the
    autograd gradient of sum_{argmax z = c} z_c w.r.t. A, alpha = its spatial mean, ReLU(sum alpha A),
    bilinear up-sampling to x's grid. Returns [B, C, H, W]."""
    a = f1(x).detach().requires_grad_(True)
    z = f2(a)
    pred = z.argmax(1)
    out = []
    for c in classes:
        score = (z[:, c] * (pred == c).float()).sum()
        (g,) = torch.autograd.grad(score, a, retain_graph=True)
        m = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        out.append(nn.functional.interpolate(m, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0])
    return torch.stack(out, 1).detach().numpy()


def test_per_class_grad_cam_equals_brute_force_autograd() -> None:
    torch.manual_seed(3)
    f1 = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # target: f1's output, stride 2
    f2 = nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2.0),
                       nn.Conv2d(5, 4, 1))  # nonlinear between A and z: the gradient is not a closed form
    net = nn.Sequential(f1, f2)
    x = torch.randn(2, 2, 8, 8)
    want = _brute_force_cams(f1, f2, x, [1, 2, 3])
    got, logits = seg_grad_cam_per_class(net, f1, x)
    assert got.shape == (2, 3, 8, 8) and np.allclose(got.numpy(), want, atol=1e-6)
    # the same activation read as f2's *input* (pre-hook) gives the same maps
    got_in, _ = seg_grad_cam_per_class(net, CamTarget(f2, "input"), x, classes=[1, 2, 3])
    assert np.allclose(got_in.numpy(), want, atol=1e-6)
    assert float(np.abs(want).max()) > 0.0 and torch.equal(logits, net(x).detach())
    # per-class maps differ between classes
    assert not np.allclose(want[:, 0], want[:, 1]) and not np.allclose(want[:, 1], want[:, 2])
    with pytest.raises(TuneppError, match="outside"):
        seg_grad_cam_per_class(net, f1, x, classes=[4])


def _unet(seed: int = 0) -> UNet2d:
    torch.manual_seed(seed)
    net = UNet2d(1, 4, (4, 8), p=0.5).eval()
    with torch.no_grad():  # non-zero biases so the closed form's ``- b_c`` is actually exercised
        net.out.bias.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    return net


def test_last_conv_grad_cam_is_the_rectified_bias_free_logit_scaled_by_area() -> None:
    """After the last site only the 1x1 classifier is left, so G_c = ReLU(|M_c|/N (z_c - b_c)) exactly
    (gradcam docstring): checked against logits computed by the plain forward."""
    net = _unet()
    x = torch.randn(2, 1, 8, 8)
    masks = sample_masks(net.dropout_sites(), (1, 1, 1), 2, seed=1).rows([1], 2)
    cams, logits = seg_grad_cam_per_class(lambda t: net(t, masks), resolve_target(net, LAST_CONV), x)
    with torch.no_grad():
        z = net(x, masks)
    pred = z.argmax(1)
    for j, c in enumerate((1, 2, 3)):
        area = (pred == c).float().mean((1, 2))[:, None, None]
        want = torch.relu(area * (z[:, c] - net.out.bias[c]))
        assert torch.allclose(cams[:, j], want, atol=1e-5)
    assert torch.equal(logits, z)


def test_last_conv_activation_and_maps_follow_the_masks_bottleneck_activation_does_not(tiny_backbone) -> None:
    """Two different mask sets -> different activations and maps at the target after the sites;
    the same masks -> identical maps. The old target (TUNE++ encoder[-1], before every site) sees the
    same activation under both mask sets: the degenerate case the new target fixes."""
    x = torch.randn(1, 1, 16, 16, 8)
    ms = sample_masks(tiny_backbone.dropout_sites(), (16, 16, 8), 2, seed=7)
    fwd = tunepp_forward_sample(tiny_backbone, ms)

    def activation(target: CamTarget, s: int) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        if target.at == "input":
            h = target.module.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
        else:
            h = target.module.register_forward_hook(lambda _m, _i, o: seen.append(o.detach().clone()))
        with torch.no_grad():
            fwd(x, s)
        h.remove()
        return seen[0]

    new, old = resolve_target(tiny_backbone, LAST_CONV), resolve_target(tiny_backbone, BOTTLENECK)
    assert new.module is tiny_backbone.out and old.module is tiny_backbone.encoder[-1]
    assert not torch.allclose(activation(new, 0), activation(new, 1))
    assert torch.equal(activation(old, 0), activation(old, 1))
    c0, _ = seg_grad_cam_per_class(lambda t: fwd(t, 0), new, x)
    c1, _ = seg_grad_cam_per_class(lambda t: fwd(t, 1), new, x)
    again = sample_masks(tiny_backbone.dropout_sites(), (16, 16, 8), 2, seed=7)
    c0_again, _ = seg_grad_cam_per_class(lambda t: tunepp_forward_sample(tiny_backbone, again)(t, 0), new, x)
    assert c0.shape == (1, 4, 16, 16, 8) and not torch.allclose(c0, c1) and torch.equal(c0, c0_again)


def test_unet2d_maps_differ_across_samples_and_between_classes() -> None:
    net = _unet(1)
    x = torch.randn(3, 1, 8, 8)
    ms = sample_masks(net.dropout_sites(), (1, 1, 1), 3, seed=2)
    fwd = unet2d_forward_sample(net, ms)
    layer = resolve_target(net)  # the default is the target after the last site
    assert layer == CamTarget(net.out, "input")
    cams = torch.stack([seg_grad_cam_per_class(lambda t, s=s: fwd(t, s), layer, x)[0] for s in range(3)])
    assert not torch.allclose(cams[0], cams[1]) and not torch.allclose(cams[:, :, 0], cams[:, :, 1])
    same = torch.stack([seg_grad_cam_per_class(lambda t: fwd(t, 0), layer, x)[0] for _ in range(2)])
    assert torch.equal(same[0], same[1])
    # mc_saliency's V_sal is the per-class variance of the normalised maps, summed over classes (numpy)
    maps = mc_saliency(fwd, layer, x, 3)
    c = cams.double().numpy()  # [S, B, C, H, W]
    lo, hi = c.min((3, 4), keepdims=True), c.max((3, 4), keepdims=True)
    normed = (c - lo) / np.maximum(hi - lo, 1e-12)
    assert np.allclose(maps.saliency_variance.numpy(), normed.var(0).sum(1), atol=1e-6)
    assert float(maps.saliency_variance.max()) > 0.0


def test_class_saliency_variance_by_hand_and_shape_error() -> None:
    rng = np.random.default_rng(0)
    c = rng.random((4, 2, 3, 5, 5))
    got = class_saliency_variance(torch.from_numpy(c)).numpy()
    want = sum(saliency_variance(torch.from_numpy(c[:, :, k])).numpy() for k in range(3))
    assert np.allclose(got, want)
    with pytest.raises(ValueError, match="per-class"):
        class_saliency_variance(torch.zeros(2, 3, 4))


def test_resolve_target_names_2d_and_errors() -> None:
    net = _unet()
    assert resolve_target(net, BOTTLENECK) == CamTarget(net.enc[-1], "output")
    assert resolve_target(net, "dec.0") == CamTarget(net.dec[0], "output")
    with pytest.raises(TuneppError, match="not a module"):
        resolve_target(net, "nope")
    with pytest.raises(TuneppError, match="classifier"):
        resolve_target(nn.Sequential(nn.Conv2d(1, 2, 1)), LAST_CONV)


def test_t_ci95_against_scipy_interval() -> None:
    from scipy import stats

    v = [0.12, 0.15, 0.11, 0.19]
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert t_ci95(v) == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert t_ci95([0.3]) is None and t_ci95([0.1, float("nan")]) is None


def _jpg(path, rgb: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())


def test_read_isic_folder(tmp_path) -> None:
    imgs, gts = tmp_path / "ISIC2018_Task1-2_Training_Input", tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    imgs.mkdir()
    gts.mkdir()
    rng = np.random.default_rng(0)
    for i in (0, 1, 2):
        _jpg(imgs / f"ISIC_000000{i}.jpg", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
        if i < 2:
            m = np.zeros((20, 30), np.uint8)
            m[5:15, 10:20] = 255
            Image.fromarray(m).save(gts / f"ISIC_000000{i}_segmentation.png")
    (imgs / "notes.txt").write_text("ignored")
    ds = read_isic(imgs, gts, size=(16, 24))
    assert ds.ids == ["ISIC_0000000", "ISIC_0000001"] and ds.missing_masks == ["ISIC_0000002"]
    assert ds.images.shape == (2, 3, 16, 24) and ds.images.dtype == np.float32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert ds.masks.shape == (2, 16, 24) and set(np.unique(ds.masks)) == {0, 1}
    with pytest.raises(DataError):
        read_isic(gts)


def test_saliency_comparison_tiny() -> None:
    r = run_saliency_comparison(cases=3, test_cases=1, iters=3, samples=3, shape=(32, 32, 16), widths=(4, 8))
    for k in ("predictive_variance", "saliency_variance", "fused"):
        assert set(r[k]) == {"fg_ece", "auroc", "fg_auroc"}
    assert r["target"] == LAST_CONV and r["per_class"] is True
