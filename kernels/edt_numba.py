"""Exact Euclidean distance transform on the CPU with numba (separable, parallel over lines).

Algorithm (Felzenszwalb & Huttenlocher 2012, "Distance transforms of sampled functions"): the
squared EDT is separable, ``D(z, y, x) = min_k [ f_k(x) + (s * (x - k))^2 ]`` applied one axis after
another. The first pass (along the contiguous last axis) only needs the distance to the nearest
zero on the same row, which two linear scans give exactly. Every later pass is a 1D min-convolution
with a parabola, solved in O(n) by building the lower envelope of the parabolas rooted at the
finite samples of the line.

Why this layout: the volume is C-ordered ``(Z, Y, X)``. The first pass walks rows, contiguous in
memory. The Y and Z passes walk columns; instead of transposing the whole volume (a full extra copy
per pass) we hand each worker a tile of ``_TILE`` neighbouring columns, gather it into a small
per-worker buffer (its cache lines are shared by the neighbouring columns, so each line of memory is
read once), run the envelope on each column of the buffer and scatter back. Work buffers are
allocated once per worker chunk, never inside the per-line loop. Spacing is folded in by working in
index units and scaling by ``s^2`` so anisotropic voxels cost nothing extra.

Squared distances are stored as float32 between passes (exact for integer squared distances below
2^24, relative error ~6e-8 otherwise); the envelope arithmetic itself runs in float64.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import njit, prange

_TILE = 16


@njit(cache=True, nogil=True, inline="always")
def _envelope_line(g: np.ndarray, n: int, v: np.ndarray, zb: np.ndarray, out: np.ndarray) -> None:
    """Lower envelope of parabolas ``g[q] + (p - q)^2``, all in index units.

    ``g`` holds squared distances already divided by ``s^2`` (inf where no site); the caller scales
    ``out`` back by ``s^2``. All-inf lines stay inf.
    """
    k = -1
    for q in range(n):
        gq = g[q]
        if gq == np.inf:
            continue
        if k < 0:
            k = 0
            v[0] = q
            zb[0] = -np.inf
            zb[1] = np.inf
            continue
        fq = gq + q * q
        while True:
            vk = v[k]
            sx = (fq - (g[vk] + vk * vk)) / (2.0 * (q - vk))
            if sx <= zb[k]:
                k -= 1
                continue
            break
        k += 1
        v[k] = q
        zb[k] = sx
        zb[k + 1] = np.inf
    if k < 0:
        for p in range(n):
            out[p] = np.inf
        return
    k = 0
    for p in range(n):
        while zb[k + 1] < p:
            k += 1
        vk = v[k]
        d = p - vk
        out[p] = d * d + g[vk]


@njit(cache=True, parallel=True, nogil=True)
def _pass_rows(mask: np.ndarray, out: np.ndarray, sx: float) -> None:
    """First pass along the contiguous axis: squared distance to the nearest zero on the row."""
    Z, Y, X = mask.shape
    nrows = Z * Y
    for r in prange(nrows):
        z = r // Y
        y = r - z * Y
        m = mask[z, y]
        o = out[z, y]
        prev = -1
        for x in range(X):
            if m[x] == 0:
                prev = x
                o[x] = 0.0
            elif prev >= 0:
                d = (x - prev) * sx
                o[x] = d * d
            else:
                o[x] = np.inf
        nxt = -1
        for x in range(X - 1, -1, -1):
            if m[x] == 0:
                nxt = x
            elif nxt >= 0:
                d = (nxt - x) * sx
                d2 = d * d
                if d2 < o[x]:
                    o[x] = d2


@njit(cache=True, parallel=True, nogil=True)
def _pass_cols(vol: np.ndarray, axis: int, s: float, final: bool, nchunks: int) -> None:
    """Envelope pass along axis 0 or 1 of a C-ordered 3D float32 volume, in place.

    Work items are (outer index, tile of ``_TILE`` columns of the last axis); ``final`` takes the
    square root so the last pass writes distances rather than squared distances.
    """
    Z, Y, X = vol.shape
    n = Z if axis == 0 else Y
    nouter = Y if axis == 0 else Z
    ntiles = (X + _TILE - 1) // _TILE
    nitems = nouter * ntiles
    s2 = s * s
    inv = 1.0 / s2
    per = (nitems + nchunks - 1) // nchunks
    for c in prange(nchunks):
        buf = np.empty((_TILE, n), np.float64)
        res = np.empty(n, np.float64)
        v = np.empty(n, np.int64)
        zb = np.empty(n + 1, np.float64)
        for item in range(c * per, min(nitems, (c + 1) * per)):
            o = item // ntiles
            x0 = (item - o * ntiles) * _TILE
            w = min(_TILE, X - x0)
            # gather: rows of the tile are contiguous runs of w floats
            for i in range(n):
                src = vol[i, o] if axis == 0 else vol[o, i]
                for t in range(w):
                    buf[t, i] = src[x0 + t] * inv
            for t in range(w):
                line = buf[t]
                allzero = True
                for i in range(n):
                    if line[i] != 0.0:
                        allzero = False
                        break
                if allzero:
                    continue
                _envelope_line(line, n, v, zb, res)
                for i in range(n):
                    line[i] = res[i]
            for i in range(n):
                dst = vol[i, o] if axis == 0 else vol[o, i]
                if final:
                    for t in range(w):
                        dst[x0 + t] = np.sqrt(buf[t, i] * s2) if buf[t, i] != 0.0 else 0.0
                else:
                    for t in range(w):
                        dst[x0 + t] = buf[t, i] * s2


@njit(cache=True, parallel=True, nogil=True)
def _sqrt_inplace(vol: np.ndarray) -> None:
    flat = vol.reshape(-1)
    for i in prange(flat.size):
        flat[i] = np.sqrt(flat[i])


def edt3(mask3: np.ndarray, spacing3: tuple[float, float, float]) -> np.ndarray:
    """EDT of a C-contiguous uint8 3D mask (2D masks come in as ``(1, H, W)``); float32 result."""
    out = np.empty(mask3.shape, np.float32)
    if mask3.size == 0:
        return out
    _pass_rows(mask3, out, float(spacing3[2]))
    Z, Y, _ = mask3.shape
    nchunks = max(1, nb.get_num_threads() * 8)
    if Y > 1:
        _pass_cols(out, 1, float(spacing3[1]), Z == 1, nchunks)
    if Z > 1:
        _pass_cols(out, 0, float(spacing3[0]), True, nchunks)
    if Z == 1 and Y == 1:
        _sqrt_inplace(out)
    return out
