"""2D training data for the saliency method: axial slices of the 3D phantoms.

Slices through :func:`tunepp_deploy.data.phantom.generate_case` volumes (CT-windowed to [0, 1] like
the 3D pipeline), keeping slices with at least ``min_foreground`` labelled pixels, cropped to a
multiple of ``multiple`` per side. Same classes as the 3D phantoms; slices of one case stay in one
split (no leakage between train and test through neighbouring slices).
"""

from __future__ import annotations

import numpy as np

from tunepp_deploy.config.schema import IntensityConfig
from tunepp_deploy.data.phantom import DEFAULT_SPACING, generate_case
from tunepp_deploy.data.preprocess import normalize_intensity


def phantom_slices(
    cases: int, seed: int = 0, shape: tuple[int, int, int] = (64, 64, 48),
    spacing: tuple[float, float, float] = DEFAULT_SPACING, min_foreground: int = 50, multiple: int = 4,
    step: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images [N, 1, H, W] float32, labels [N, H, W] uint8, case index [N])`` (every ``step``-th slice)."""
    intensity = IntensityConfig()
    imgs, labs, idx = [], [], []
    for i in range(cases):
        c = generate_case(np.random.default_rng([seed, i]), shape=shape, spacing=spacing)
        img = normalize_intensity(c.image, intensity)
        h, w = (shape[0] // multiple) * multiple, (shape[1] // multiple) * multiple
        for z in range(0, shape[2], step):
            lab = c.labels[:h, :w, z]
            if int((lab > 0).sum()) >= min_foreground:
                imgs.append(img[None, :h, :w, z])
                labs.append(lab)
                idx.append(i)
    return np.stack(imgs).astype(np.float32), np.stack(labs).astype(np.uint8), np.asarray(idx)


__all__ = ["phantom_slices"]
