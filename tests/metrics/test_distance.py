"""HD95 against brute force (cdist on surface points) with anisotropic spacing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from tunepp_deploy.metrics.distance import hd95, hd95_per_class, surface


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Surface = voxels with a 6-neighbour outside (array border counts as outside); all pairs."""
    def surf(m: np.ndarray) -> np.ndarray:
        pad = np.pad(m, 1)
        inner = pad[1:-1, 1:-1, 1:-1].copy()
        for ax in range(3):
            for sh in (-1, 1):
                inner &= np.roll(pad, sh, axis=ax)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner) * np.asarray(spacing)

    d = cdist(surf(a), surf(b))
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


@pytest.mark.parametrize("seed", range(3))
def test_hd95_matches_brute_force_anisotropic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (14, 16, 12)
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    spacing = (0.8, 1.3, 2.5)
    c1 = rng.uniform(4, 9, 3)
    c2 = c1 + rng.uniform(-2, 2, 3)
    a = (((g - c1) / [4.0, 5.0, 3.0]) ** 2).sum(-1) <= 1
    b = (((g - c2) / [3.5, 4.5, 3.5]) ** 2).sum(-1) <= 1
    b[0, :3, :3] = True  # a stray blob touching the border
    assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing), rel=1e-6)


def test_hd95_conventions() -> None:
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[2, 2, 2] = True
    assert np.isnan(hd95(z, z))
    assert hd95(one, z) == np.inf
    assert hd95(one, one) == 0.0
    shifted = z.copy()
    shifted[2, 2, 4] = True
    assert hd95(one, shifted, spacing=(1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert surface(np.ones((3, 3, 3), bool)).sum() == 26  # border counts as outside: only the centre is inner
    lab_p = np.zeros((5, 5, 5), np.uint8)
    lab_p[2, 2, 2] = 1
    out = hd95_per_class(lab_p, lab_p, 3)
    assert out[0] == 0.0 and np.isnan(out[1])
