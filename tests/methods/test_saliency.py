"""Seg-Grad-CAM by hand, saliency variance / fusion, 2D U-Net masks + ONNX parity, ISIC reader, 3D TUNE++."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from tunepp_deploy.errors import DataError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.methods.saliency import fuse, mc_saliency, saliency_variance, seg_grad_cam, uncertainty_calibration
from tunepp_deploy.methods.saliency.experiment import run_saliency_comparison, tunepp_forward_sample
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
    maps = mc_saliency(tunepp_forward_sample(tiny_backbone, masks), tiny_backbone.encoder[-1], x, 3, w=0.5)
    assert maps.predictive_variance.shape == maps.saliency_variance.shape == maps.fused.shape == (1, 16, 16, 8)
    again = mc_saliency(tunepp_forward_sample(tiny_backbone, masks), tiny_backbone.encoder[-1], x, 3, w=0.5)
    assert torch.equal(maps.fused, again.fused)


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
