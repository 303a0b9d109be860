"""Sliding-window tiling: full coverage, exact reconstruction, padding of small volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunepp_deploy.infer.sliding_window import count_windows, sliding_window, window_starts


@pytest.mark.parametrize(("size", "window", "overlap"), [(10, 4, 0.5), (37, 16, 0.5), (16, 16, 0.5), (50, 8, 0.25)])
def test_window_starts_cover(size: int, window: int, overlap: float) -> None:
    starts = window_starts(size, window, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + window] = True
        assert 0 <= s <= size - window
    assert covered.all()
    steps = np.diff(starts)
    assert (steps <= window * (1 - overlap) + 1).all()


def test_identity_predictor_reconstructs_volume() -> None:
    vol = torch.randn(2, 21, 18, 13)
    calls: list[int] = []

    def ident(x: torch.Tensor) -> list[torch.Tensor]:
        calls.append(x.shape[0])
        return [x, x[:, :1] * 0 + 1]

    out, ones = sliding_window(vol, ident, (8, 8, 8), overlap=0.5, batch=3)
    torch.testing.assert_close(out, vol, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ones, torch.ones(1, 21, 18, 13))
    assert sum(calls) == count_windows(vol.shape[1:], (8, 8, 8), 0.5) and max(calls) <= 3


def test_volume_smaller_than_window_is_padded_and_cropped() -> None:
    vol = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 5, 6, 7)
    (out,) = sliding_window(vol, lambda x: [x], (8, 8, 8))
    assert out.shape == vol.shape
    torch.testing.assert_close(out, vol)
