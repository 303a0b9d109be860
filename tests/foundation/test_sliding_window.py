"""Sliding-window tiling: full coverage, exact reconstruction, padding of small volumes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tunepp_deploy.infer.sliding_window import (
    aligned_size,
    count_windows,
    sliding_window,
    window_slices,
    window_starts,
)


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


def _legacy_window_starts(size: int, window: int, overlap: float) -> list[int]:
    """``window_starts`` as it was before ``align`` existed (the reference for ``align=1``)."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    n = int(np.ceil((size - window) / step)) + 1
    if n == 1:
        return [0]
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def test_align_1_is_todays_tiling() -> None:
    for size, window, overlap in itertools.product(range(1, 90, 3), (4, 8, 16, 32), (0.0, 0.25, 0.5, 0.75)):
        assert window_starts(size, window, overlap, 1) == _legacy_window_starts(size, window, overlap)
        assert window_starts(size, window, overlap) == _legacy_window_starts(size, window, overlap)
    shape, win = (45, 37, 21), (16, 16, 8)
    per_axis = [_legacy_window_starts(s, w, 0.5) for s, w in zip(shape, win, strict=True)]
    legacy = [tuple(slice(a, a + w) for a, w in zip(pos, win, strict=True)) for pos in itertools.product(*per_axis)]
    assert window_slices(shape, win, 0.5) == window_slices(shape, win, 0.5, align=(1, 1, 1)) == legacy
    assert count_windows(shape, win, 0.5) == len(legacy)


@pytest.mark.parametrize("align", [2, 4, 8])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_aligned_starts_are_multiples_cover_and_end_at_the_border(align: int, overlap: float) -> None:
    for size, window in itertools.product(range(1, 100, 7), (8, 16, 32)):
        starts = window_starts(size, window, overlap, align)
        end = aligned_size(size, window, align)
        assert end >= max(size, window) and end - max(size, window) < align and (end - window) % align == 0
        assert all(a % align == 0 for a in starts) and starts[0] == 0 and starts[-1] + window == end
        assert all(b > a for a, b in itertools.pairwise(starts))
        step = max(1, int(window * (1 - overlap)))
        assert all(b - a <= max(step, align) for a, b in itertools.pairwise(starts))  # no gaps, overlap kept
        covered = np.zeros(end, bool)
        for a in starts:
            covered[a : a + window] = True
        assert covered.all()


def test_align_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="larger than the window"):
        window_starts(40, 8, 0.5, 16)
    with pytest.raises(ValueError, match="align"):
        window_slices((20, 20, 20), (8, 8, 8), 0.5, align=(2, 2))


def test_aligned_sliding_window_pads_crops_and_reports_starts() -> None:
    vol = torch.randn(2, 23, 18, 13)
    win, align = (8, 8, 8), (4, 2, 1)
    seen: list[tuple[int, ...]] = []
    padded = torch.nn.functional.pad(vol, (0, 0, 0, 0, 0, 1), value=float(vol.min()))  # 23 -> 24 on D only

    def ident(x: torch.Tensor, starts: list[tuple[int, ...]]) -> list[torch.Tensor]:
        assert len(starts) == x.shape[0]
        for xi, st in zip(x, starts, strict=True):
            assert torch.equal(xi, padded[(slice(None), *(slice(a, a + w) for a, w in zip(st, win, strict=True)))])
        seen.extend(starts)
        return [x]

    (out,) = sliding_window(vol, ident, win, overlap=0.5, batch=3, align=align, with_starts=True)
    torch.testing.assert_close(out, vol, rtol=1e-5, atol=1e-5)
    assert seen == [tuple(d.start for d in sl) for sl in window_slices(vol.shape[1:], win, 0.5, align)]
    assert len(seen) == count_windows(vol.shape[1:], win, 0.5, align)
    assert all(st[0] % 4 == 0 and st[1] % 2 == 0 for st in seen)
    assert max(st[0] for st in seen) + 8 == 24  # the last window ends at the padded border


def test_with_starts_default_off_and_align_1_unchanged() -> None:
    vol = torch.randn(1, 21, 18, 13)
    (a,) = sliding_window(vol, lambda x: [x * 2], (8, 8, 8), batch=2)
    (b,) = sliding_window(vol, lambda x, starts: [x * 2], (8, 8, 8), batch=2, align=1, with_starts=True)
    assert torch.equal(a, b)
