"""The seed's comparison on 2D phantom slices: predictive variance alone vs fused with saliency variance.

Train :class:`~tunepp_deploy.methods.unet2d.UNet2d` on slices of the training phantoms (Dice + CE,
Adam), then for every test slice run S MC samples (seeded masks) with a Seg-Grad-CAM per sample on
the bottleneck, and score each uncertainty map by foreground-only ECE (of ``1 - norm(U)``, voxels:
union of predicted and true foreground) and voxel-error AUROC (:mod:`.fusion`), pooled over the test
slices. Also :func:`tunepp_forward_sample` for the same maps on 3D TUNE++ (sample s = mask set s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tunepp_deploy.infer.masks import SampleMasks, sample_masks
from tunepp_deploy.losses.dice_ce import dice_ce_loss
from tunepp_deploy.methods.saliency.fusion import DEFAULT_FUSION_WEIGHT, mc_saliency, uncertainty_calibration
from tunepp_deploy.methods.saliency.phantom2d import phantom_slices
from tunepp_deploy.methods.unet2d import UNet2d
from tunepp_deploy.model import TUNEPP


def tunepp_forward_sample(net: TUNEPP, masks: SampleMasks) -> Callable[[Tensor, int], Tensor]:
    """``(x, s) -> logits`` of TUNE++ under sample ``s``'s dropout masks (Grad-CAM-able)."""
    return lambda x, s: net(x, masks.rows([s], x.shape[0]), with_aux=False).logits


def unet2d_forward_sample(net: UNet2d, masks: SampleMasks) -> Callable[[Tensor, int], Tensor]:
    return lambda x, s: net(x, masks.rows([s], x.shape[0]))


def train_unet2d(images: np.ndarray, labels: np.ndarray, num_classes: int, iters: int, seed: int = 0,
                 widths: tuple[int, ...] = (16, 32, 64), batch: int = 8, lr: float = 3e-3) -> UNet2d:
    """Fit a 2D U-Net on random mini-batches of whole slices."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet2d(images.shape[1], num_classes, widths)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(iters):
        idx = rng.integers(0, len(images), size=min(batch, len(images)))
        x, y = torch.from_numpy(images[idx]), torch.from_numpy(labels[idx].astype(np.int64))
        dice, ce = dice_ce_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        (dice + ce).backward()
        opt.step()
    return net.eval()


def run_saliency_comparison(
    cases: int = 6, test_cases: int = 2, iters: int = 150, samples: int = 10, w: float = DEFAULT_FUSION_WEIGHT,
    seed: int = 0, shape: tuple[int, int, int] = (64, 64, 48), widths: tuple[int, ...] = (16, 32, 64),
) -> dict[str, Any]:
    """Train on ``cases - test_cases`` phantoms' slices, compare the maps on the rest (module doc)."""
    imgs, labs, idx = phantom_slices(cases, seed=seed, shape=shape)
    train = idx < cases - test_cases
    net = train_unet2d(imgs[train], labs[train], 5, iters, seed, widths)
    masks = sample_masks(net.dropout_sites(), (1, 1, 1), samples, seed)
    fwd = unet2d_forward_sample(net, masks)
    x, y = torch.from_numpy(imgs[~train]), labs[~train]
    maps = mc_saliency(fwd, net.bottleneck, x, samples, w)
    probs = maps.mean_probs.numpy().transpose(1, 0, 2, 3)  # [K, N, H, W]
    pred = probs.argmax(0)
    out: dict[str, Any] = {"test_slices": int((~train).sum()), "train_slices": int(train.sum()), "samples": samples,
                           "fusion_weight": w, "iters": iters,
                           "pixel_accuracy": float((pred == y).mean()),
                           "ece_voxels": "union of predicted and true foreground"}
    for name, u in (("predictive_variance", maps.predictive_variance), ("saliency_variance", maps.saliency_variance),
                    ("fused", maps.fused)):
        out[name] = uncertainty_calibration(u.numpy(), probs, y)
    return out


__all__ = ["run_saliency_comparison", "train_unet2d", "tunepp_forward_sample", "unet2d_forward_sample"]
