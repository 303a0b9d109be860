"""The preprocessing shared by training and inference: resampling and intensity normalisation.

Training and inference must see identical inputs, so both call these functions with the values
stored in the config (and, for ONNX/engines, in the model's metadata).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tunepp_deploy.config.schema import IntensityConfig


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Grid size after resampling from ``spacing`` to ``target`` (same physical extent, rounded)."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def resample(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample a 3D array to ``shape``: ``order=1`` trilinear (images), ``order=0`` nearest (labels).

    Uses torch's interpolation (align_corners=False, i.e. voxel centres map to voxel centres of the
    same physical extent) so the inverse resampling of outputs puts them back on the input grid.
    """
    if tuple(array.shape) == tuple(shape):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    if order == 0:
        out = F.interpolate(t.float(), size=tuple(shape), mode="nearest-exact")
        return out[0, 0].numpy().astype(array.dtype)
    out = F.interpolate(t.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def resample_tensor(t: torch.Tensor, shape: Sequence[int], nearest: bool = False) -> torch.Tensor:
    """Resample a (C, D, H, W) or (N, C, D, H, W) tensor on its device (for model outputs)."""
    squeeze = t.ndim == 4
    x = t[None] if squeeze else t
    if tuple(x.shape[2:]) != tuple(shape):
        mode = "nearest-exact" if nearest else "trilinear"
        kw = {} if nearest else {"align_corners": False}
        x = F.interpolate(x, size=tuple(shape), mode=mode, **kw)
    return x[0] if squeeze else x


def normalize_intensity(array: np.ndarray, cfg: IntensityConfig) -> np.ndarray:
    """Map raw intensities to network input.

    ``ct_window``: clip to [low, high] HU and scale to [0, 1]. ``zscore``: subtract the mean and
    divide by the standard deviation of the non-zero (body) voxels, the usual MRI normalisation.
    """
    a = array.astype(np.float32, copy=False)
    if cfg.mode == "ct_window":
        lo, hi = cfg.window
        return ((np.clip(a, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    body = a[a != 0]
    ref = body if body.size > 10 else a.ravel()
    mean, std = float(ref.mean()), float(ref.std())
    return ((a - mean) / max(std, 1e-6)).astype(np.float32)


def preprocess_image(
    array: np.ndarray, spacing: Sequence[float], target: Sequence[float], intensity: IntensityConfig
) -> np.ndarray:
    """Resample a raw image to the model's spacing and normalise it (float32)."""
    shape = resampled_shape(array.shape, spacing, target)
    return normalize_intensity(resample(array.astype(np.float32, copy=False), shape, order=1), intensity)
