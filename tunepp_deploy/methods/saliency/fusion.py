r"""Saliency variance and its fusion with the predictive variance (saliency-variance-fusion seed).

Per image and MC sample ``s`` (a dropout mask set, drawn from a seed): the softmax ``p_s`` and the
Seg-Grad-CAM maps ``G_{s,c}``, one per foreground class ``c`` (:mod:`.gradcam`, on the activation
after the last dropout site by default). Then, per voxel,

* predictive variance ``V_pred = sum_k Var_s p_{s,k}`` (the toolkit's epistemic variance);
* saliency variance ``V_sal = sum_c Var_s norm(G_{s,c})`` with ``norm`` the per-image min-max
  normalisation of each class map (Grad-CAM maps have arbitrary scale per sample; normalising first
  makes the variance about *where* the network looks, not how strongly). Summing over classes
  mirrors ``V_pred``'s sum over classes; the fusion min-max normalises it anyway, so sum or mean is
  the same map there. ``per_class=False`` gives the single summed-score map ``G_s`` instead (the
  toolkit's first version, kept for the before/after comparison);
* fused ``U = w norm(V_pred) + (1 - w) norm(V_sal)``, ``w`` configurable (0.5 default).

**Calibration of an uncertainty map** (the seed's "foreground-only ECE"): the map, min-max
normalised to [0, 1], is read as a confidence ``1 - U`` for the correctness of the argmax, and the
ECE (15 equal-width bins, :func:`tunepp_deploy.metrics.calibration.confidence_bins`) is taken over
the **union of predicted and true foreground** voxels (:func:`tunepp_deploy.metrics.foreground_region`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from tunepp_deploy.infer.uncertainty import epistemic_variance
from tunepp_deploy.methods.saliency.gradcam import CamTarget, seg_grad_cam, seg_grad_cam_per_class
from tunepp_deploy.metrics.calibration import confidence_bins, foreground_region
from tunepp_deploy.metrics.ranking import auroc

DEFAULT_FUSION_WEIGHT = 0.5
_EPS = 1e-12


def minmax(t: Tensor) -> Tensor:
    """Min-max normalise each item of ``[B, ...]`` to [0, 1] (a constant item becomes 0)."""
    flat = t.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1, *([1] * (t.dim() - 1)))
    return (t - lo.view(shape)) / (hi - lo).clamp_min(_EPS).view(shape)


def saliency_variance(cams: Tensor) -> Tensor:
    """``[S, B, ...]`` Grad-CAM maps -> ``[B, ...]`` variance across samples of the normalised maps."""
    normed = torch.stack([minmax(c) for c in cams])
    return normed.var(dim=0, unbiased=False)


def class_saliency_variance(cams: Tensor) -> Tensor:
    """``[S, B, C, ...]`` per-class Grad-CAM maps -> ``[B, ...]``: ``sum_c`` of each class's
    :func:`saliency_variance` (every class map min-max normalised on its own, per image and sample)."""
    if cams.dim() < 4:
        raise ValueError(f"per-class CAMs must be [S, B, C, ...], got {tuple(cams.shape)}")
    return sum(saliency_variance(cams[:, :, c]) for c in range(cams.shape[2]))  # type: ignore[return-value]


def fuse(pred_var: Tensor, sal_var: Tensor, w: float = DEFAULT_FUSION_WEIGHT) -> Tensor:
    """``w norm(V_pred) + (1 - w) norm(V_sal)`` per item."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {w}")
    return w * minmax(pred_var) + (1.0 - w) * minmax(sal_var)


@dataclass
class SaliencyMaps:
    """``mean_probs [B, K, ...]`` and the three uncertainty maps ``[B, ...]``."""

    mean_probs: Tensor
    predictive_variance: Tensor
    saliency_variance: Tensor
    fused: Tensor


def mc_saliency(
    forward_sample: Callable[[Tensor, int], Tensor], target: nn.Module | CamTarget, x: Tensor, samples: int,
    w: float = DEFAULT_FUSION_WEIGHT, classes: Sequence[int] | None = None, per_class: bool = True,
) -> SaliencyMaps:
    """Run ``samples`` MC samples (``forward_sample(x, s) -> logits`` with sample s's masks), each
    with a Grad-CAM on ``target`` (one per class, or the summed score with ``per_class=False``);
    return the predictive/saliency/fused maps (module docstring)."""
    probs, cams = [], []
    cam_fn = seg_grad_cam_per_class if per_class else seg_grad_cam
    for s in range(samples):
        cam, logits = cam_fn(lambda t, s=s: forward_sample(t, s), target, x, classes)
        cams.append(cam)
        probs.append(torch.softmax(logits.float(), 1))
    p = torch.stack(probs)  # [S, B, K, ...]
    pv = torch.stack([epistemic_variance(p[:, b]) for b in range(p.shape[1])])
    stacked = torch.stack(cams)
    sv = class_saliency_variance(stacked) if per_class else saliency_variance(stacked)
    return SaliencyMaps(p.mean(0), pv, sv, fuse(pv, sv, w))


def uncertainty_calibration(u: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Foreground-only ECE of ``1 - norm(u)`` and voxel-error AUROC of ``u`` (module docstring).

    ``u`` ``[...]``, ``probs`` ``[K, ...]``, ``labels`` ``[...]`` for one image (or stacked images).
    """
    pred = probs.argmax(0)
    correct = pred == labels
    region = foreground_region(pred, labels)
    un = (u - u.min()) / max(float(u.max() - u.min()), _EPS)
    ece = confidence_bins(1.0 - un[region], correct[region]).ece if region.any() else float("nan")
    return {"fg_ece": float(ece), "auroc": auroc(u, ~correct), "fg_auroc": auroc(u[region], ~correct[region])}


__all__ = [
    "DEFAULT_FUSION_WEIGHT",
    "SaliencyMaps",
    "class_saliency_variance",
    "fuse",
    "mc_saliency",
    "minmax",
    "saliency_variance",
    "uncertainty_calibration",
]
