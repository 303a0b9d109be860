"""Sliding-window tiling with Gaussian blending, independent of what runs inside a window.

The network sees fixed-size windows; a scan is covered by windows overlapping by ``overlap``
(0.5 = half a window, nnU-Net/MONAI default) and each window's outputs are weighted by a Gaussian
importance map (sigma = window / 8) before being summed and normalised, which removes the seams
that plain averaging leaves at window borders. The window predictor returns any number of
per-voxel maps (probabilities, variances, ...), all blended the same way; it is called with
batches of up to ``batch`` windows, so the MC engine can put windows x samples on the device at
once while this module stays model-agnostic.

``align`` (per axis) makes every window start a multiple of ``align``: element-mode dropout masks are
a function of the *feature* position in the volume (:mod:`tunepp_deploy.infer.masks`), and a start
``a`` maps to a feature index only when it is a multiple of the site's stride. The volume is padded at
the end so that the last window still ends at the (padded) border, and the outputs are cropped back.
``align=1`` is the plain tiling, bit for bit. With ``with_starts=True`` the predictor is also told
where each window is (``predictor(x, starts)``), which is what position-dependent masks need.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

WindowPredictor = Callable[[torch.Tensor], Sequence[torch.Tensor]]
#: ``predictor(x, starts)``: ``starts[j]`` is window ``j``'s ``(d, h, w)`` start in padded-volume voxels.
PositionalPredictor = Callable[[torch.Tensor, list[tuple[int, ...]]], Sequence[torch.Tensor]]
Align = int | Sequence[int]


def _aligns(align: Align, n: int = 3) -> tuple[int, ...]:
    out = (int(align),) * n if isinstance(align, int) else tuple(int(a) for a in align)
    if len(out) != n or any(a < 1 for a in out):
        raise ValueError(f"align must be a positive int or {n} positive ints, got {align!r}")
    return out


def aligned_size(size: int, window: int, align: int = 1) -> int:
    """The extent the windows tile along one axis: at least ``window``, and ``size - window`` a multiple
    of ``align`` (so an aligned last window ends exactly there). ``align=1``: ``max(size, window)``."""
    if align > window:
        raise ValueError(f"align {align} is larger than the window {window}: aligned windows would leave gaps")
    extra = max(0, size - window)
    return window + -(-extra // align) * align


def window_starts(size: int, window: int, overlap: float, align: int = 1) -> list[int]:
    """Start offsets along one axis so windows of ``window`` cover ``size`` with >= ``overlap``.

    Starts are multiples of ``align`` and the last window ends at :func:`aligned_size` (= ``size``
    when ``size - window`` is already a multiple of ``align``; otherwise the caller pads, as
    :func:`sliding_window` does). The step is rounded down to a multiple of ``align`` (at least
    ``align``), so the requested overlap is met whenever the step ``window * (1 - overlap)`` is at least
    ``align``. ``align=1``: the plain evenly spread starts.
    """
    length = aligned_size(size, window, align) - window
    if length == 0:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    units, unit_step = length // align, max(1, step // align)
    n = int(np.ceil(units / unit_step)) + 1
    # spread the windows evenly on the align-lattice so the last one ends exactly at the border
    return [round(i * units / (n - 1)) * align for i in range(n)]


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


def window_slices(
    shape: Sequence[int], window: Sequence[int], overlap: float, align: Align = 1
) -> list[tuple[slice, ...]]:
    """All window positions (as slices) covering a volume of ``shape`` (padded to :func:`aligned_size`)."""
    aligns = _aligns(align, len(window))
    starts = [window_starts(s, w, overlap, a) for s, w, a in zip(shape, window, aligns, strict=True)]
    return [tuple(slice(a, a + w) for a, w in zip(pos, window, strict=True)) for pos in itertools.product(*starts)]


@dataclass
class StitchedSums:
    """What the blend accumulates before normalising: ``accs[i]`` the Gaussian-weighted sums of output
    ``i`` on the padded grid, ``norm`` the summed weights, ``spatial`` the volume's own grid (the padded
    one cropped at the end of each axis)."""

    accs: list[torch.Tensor]
    norm: torch.Tensor
    spatial: tuple[int, ...]

    def normalised(self) -> list[torch.Tensor]:
        """``acc / norm`` cropped to ``spatial``, per output (new tensors)."""
        crop = tuple(slice(0, s) for s in self.spatial)
        return [(a / self.norm)[(..., *crop)] for a in self.accs]


def sliding_window(
    volume: torch.Tensor,
    predictor: WindowPredictor | PositionalPredictor,
    window: Sequence[int],
    overlap: float = 0.5,
    batch: int = 4,
    pad_value: float | None = None,
    progress: Callable[[int], None] | None = None,
    align: Align = 1,
    with_starts: bool = False,
) -> list[torch.Tensor]:
    """Blend ``predictor``'s outputs over all windows of ``volume`` (C, D, H, W).

    A volume smaller than the window on some axis — or, with ``align``, one whose ``size - window``
    is not a multiple of ``align`` — is padded at the end (with ``pad_value``, default the volume
    minimum = air after CT windowing) and the outputs are cropped back. With ``with_starts`` the
    predictor is called as ``predictor(x, starts)``, ``starts`` the batch's window starts (padded-volume
    voxels = volume voxels, as padding is at the end). Returns one tensor (K_i, D, H, W) per predictor
    output, on the volume's device.
    """
    return stitch_sums(volume, predictor, window, overlap, batch, pad_value, progress, align,
                       with_starts).normalised()


def stitch_sums(
    volume: torch.Tensor,
    predictor: WindowPredictor | PositionalPredictor,
    window: Sequence[int],
    overlap: float = 0.5,
    batch: int = 4,
    pad_value: float | None = None,
    progress: Callable[[int], None] | None = None,
    align: Align = 1,
    with_starts: bool = False,
    sample_major: bool = False,
) -> StitchedSums:
    """:func:`sliding_window` up to, not including, the normalisation (its arguments, same meaning).

    ``sample_major``: the predictor's outputs are ``[m, B, c, *window]`` (``m`` per-sample outputs of each
    of the ``B`` windows, as the MC engine makes them) and the sums ``[m, c, *padded]`` — no transposed
    copy of the outputs. Each window is added with one in-place ``addcmul_`` into its slice of the sums
    (no ``o * weight`` temporary: above glibc's mmap threshold that temporary was a fresh zero-filled
    mmap per window, :mod:`tunepp_deploy.infer.allocator`); float32, bit for bit the product then the sum.
    """
    window = tuple(int(w) for w in window)
    aligns = _aligns(align, len(window))
    spatial = tuple(volume.shape[1:])
    pads = [aligned_size(s, w, a) - s for s, w, a in zip(spatial, window, aligns, strict=True)]
    if any(pads):
        fill = float(volume.min()) if pad_value is None else pad_value
        volume = F.pad(volume, [p for q in reversed(pads) for p in (0, q)], value=fill)
    padded = tuple(volume.shape[1:])
    slices = window_slices(padded, window, overlap, aligns)
    weight = gaussian_importance(window, device=volume.device)
    acc: list[torch.Tensor] | None = None
    norm = torch.zeros(padded, device=volume.device)
    for i in range(0, len(slices), batch):
        chunk = slices[i : i + batch]
        x = torch.stack([volume[(slice(None), *sl)] for sl in chunk])
        starts = [tuple(d.start for d in sl) for sl in chunk]
        outs = predictor(x, starts) if with_starts else predictor(x)  # type: ignore[call-arg]
        if acc is None:
            lead = (lambda o: (o.shape[0], o.shape[2])) if sample_major else (lambda o: (o.shape[1],))
            acc = [torch.zeros((*lead(o), *padded), device=volume.device, dtype=torch.float32) for o in outs]
        for sl, j in zip(chunk, range(len(chunk)), strict=True):
            for a, o in zip(acc, outs, strict=True):
                src = o[:, j] if sample_major else o[j]
                a[(..., *sl)].addcmul_(src.float(), weight)
            norm[sl] += weight
        if progress is not None:
            progress(len(chunk))
    assert acc is not None
    return StitchedSums(acc, norm, spatial)


def count_windows(shape: Sequence[int], window: Sequence[int], overlap: float, align: Align = 1) -> int:
    """Number of windows :func:`sliding_window` will evaluate for a volume of ``shape`` (same ``align``)."""
    return len(window_slices(shape, window, overlap, align))
