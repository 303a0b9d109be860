"""Sliding-window tiling with Gaussian blending, independent of what runs inside a window.

The network sees fixed-size windows; a scan is covered by windows overlapping by ``overlap``
(0.5 = half a window, nnU-Net/MONAI default) and each window's outputs are weighted by a Gaussian
importance map (sigma = window / 8) before being summed and normalised, which removes the seams
that plain averaging leaves at window borders. The window predictor returns any number of
per-voxel maps (probabilities, variances, ...), all blended the same way; it is called with
batches of up to ``batch`` windows, so the MC engine can put windows x samples on the device at
once while this module stays model-agnostic.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

WindowPredictor = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis so windows of ``window`` cover ``size`` with >= ``overlap``."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    n = int(np.ceil((size - window) / step)) + 1
    if n == 1:
        return [0]
    # spread the windows evenly so the last one ends exactly at the border
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


@lru_cache(maxsize=8)
def _gaussian_np(window: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    axes = []
    for w in window:
        c = (w - 1) / 2.0
        s = max(w * sigma_scale, 1e-3)
        axes.append(np.exp(-((np.arange(w) - c) ** 2) / (2 * s * s)))
    g = np.einsum("i,j,k->ijk", *axes)
    g /= g.max()
    return np.maximum(g, 1e-3).astype(np.float32)  # never zero: border voxels still get a weight


def gaussian_importance(
    window: Sequence[int], sigma_scale: float = 0.125, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Gaussian importance map of ``window`` shape, peak 1, floor 1e-3."""
    return torch.from_numpy(_gaussian_np(tuple(window), sigma_scale)).to(device)


def window_slices(shape: Sequence[int], window: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """All window positions (as slices) covering a volume of ``shape``."""
    starts = [window_starts(s, w, overlap) for s, w in zip(shape, window, strict=True)]
    return [tuple(slice(a, a + w) for a, w in zip(pos, window, strict=True)) for pos in itertools.product(*starts)]


def sliding_window(
    volume: torch.Tensor,
    predictor: WindowPredictor,
    window: Sequence[int],
    overlap: float = 0.5,
    batch: int = 4,
    pad_value: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Blend ``predictor``'s outputs over all windows of ``volume`` (C, D, H, W).

    A volume smaller than the window on some axis is padded (with ``pad_value``, default the
    volume minimum = air after CT windowing) and the outputs are cropped back. Returns one tensor
    (K_i, D, H, W) per predictor output, on the volume's device.
    """
    window = tuple(int(w) for w in window)
    spatial = tuple(volume.shape[1:])
    pads = [max(0, w - s) for s, w in zip(spatial, window, strict=True)]
    if any(pads):
        fill = float(volume.min()) if pad_value is None else pad_value
        volume = F.pad(volume, [p for q in reversed(pads) for p in (0, q)], value=fill)
    padded = tuple(volume.shape[1:])
    slices = window_slices(padded, window, overlap)
    weight = gaussian_importance(window, device=volume.device)
    acc: list[torch.Tensor] | None = None
    norm = torch.zeros(padded, device=volume.device)
    for i in range(0, len(slices), batch):
        chunk = slices[i : i + batch]
        x = torch.stack([volume[(slice(None), *sl)] for sl in chunk])
        outs = predictor(x)
        if acc is None:
            acc = [torch.zeros((o.shape[1], *padded), device=volume.device, dtype=torch.float32) for o in outs]
        for sl, j in zip(chunk, range(len(chunk)), strict=True):
            for a, o in zip(acc, outs, strict=True):
                a[(slice(None), *sl)] += o[j].float() * weight
            norm[sl] += weight
        if progress is not None:
            progress(len(chunk))
    assert acc is not None
    crop = (slice(None), *(slice(0, s) for s in spatial))
    return [(a / norm)[crop] for a in acc]


def count_windows(shape: Sequence[int], window: Sequence[int], overlap: float) -> int:
    """Number of windows :func:`sliding_window` will evaluate for a volume of ``shape``."""
    padded = [max(s, w) for s, w in zip(shape, window, strict=True)]
    return len(window_slices(padded, window, overlap))
