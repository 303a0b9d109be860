"""LR schedule: warm-up ramps, decay ends low, both kinds monotone after warm-up."""

from __future__ import annotations

import numpy as np
import pytest

from tunepp_deploy.train.schedule import lr_factor


@pytest.mark.parametrize("kind", ["cosine", "poly"])
def test_shape(kind: str) -> None:
    f = np.array([lr_factor(s, 100, 10, kind) for s in range(100)])
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert (np.diff(f[:10]) > 0).all() and (np.diff(f[10:]) <= 1e-12).all()
    assert f[-1] < 0.05
