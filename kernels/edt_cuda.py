"""Exact EDT as numba.cuda kernels: the CPU algorithm of ``edt_numba`` with one thread per line.

Pass 1 gives every row (contiguous axis) to a thread doing the two distance scans; passes 2 and 3
give every column to a thread running the parabola lower envelope. Thread ``t`` owns column
``x = t % X``, so neighbouring threads touch neighbouring addresses (coalesced loads and stores),
and its scratch rows live at ``[i, t]`` in ``(n, lines)`` buffers for the same reason.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

THREADS = 128


@cuda.jit
def rows_kernel(mask, out, sx):
    r = cuda.grid(1)
    Z, Y, X = mask.shape
    if r >= Z * Y:
        return
    z = r // Y
    y = r - z * Y
    prev = -1
    for x in range(X):
        if mask[z, y, x] == 0:
            prev = x
            out[z, y, x] = 0.0
        elif prev >= 0:
            d = (x - prev) * sx
            out[z, y, x] = d * d
        else:
            out[z, y, x] = math.inf
    nxt = -1
    for x in range(X - 1, -1, -1):
        if mask[z, y, x] == 0:
            nxt = x
        elif nxt >= 0:
            d = (nxt - x) * sx
            if d * d < out[z, y, x]:
                out[z, y, x] = d * d


@cuda.jit
def cols_kernel(vol, axis, s2, final, g, v, zb):
    t = cuda.grid(1)
    Z, Y, X = vol.shape
    n = Z if axis == 0 else Y
    nlines = (Y if axis == 0 else Z) * X
    if t >= nlines:
        return
    o = t // X
    x = t - o * X
    inv = 1.0 / s2
    for i in range(n):
        val = vol[i, o, x] if axis == 0 else vol[o, i, x]
        g[i, t] = val * inv
    k = -1
    for q in range(n):
        gq = g[q, t]
        if gq == math.inf:
            continue
        if k < 0:
            k = 0
            v[0, t] = q
            zb[0, t] = -math.inf
            zb[1, t] = math.inf
            continue
        fq = gq + q * q
        sq = 0.0
        while True:
            vk = v[k, t]
            sq = (fq - (g[vk, t] + vk * vk)) / (2.0 * (q - vk))
            if sq <= zb[k, t]:
                k -= 1
            else:
                break
        k += 1
        v[k, t] = q
        zb[k, t] = sq
        zb[k + 1, t] = math.inf
    kk = 0
    for p in range(n):
        res = math.inf
        if k >= 0:
            while zb[kk + 1, t] < p:
                kk += 1
            vk = v[kk, t]
            d = p - vk
            res = (d * d + g[vk, t]) * s2
        if final:
            res = math.sqrt(res)
        if axis == 0:
            vol[p, o, x] = res
        else:
            vol[o, p, x] = res


@cuda.jit
def sqrt_kernel(flat):
    i = cuda.grid(1)
    if i < flat.size:
        flat[i] = math.sqrt(flat[i])


def _blocks(n: int) -> int:
    return max(1, (n + THREADS - 1) // THREADS)


def edt3_device(mask3, spacing3: tuple[float, float, float]):
    """EDT of a C-contiguous uint8 device volume; returns a float32 device volume."""
    Z, Y, X = mask3.shape
    out = cuda.device_array((Z, Y, X), np.float32)
    if out.size == 0:
        return out
    rows_kernel[_blocks(Z * Y), THREADS](mask3, out, float(spacing3[2]))
    for axis, n, other in ((1, Y, Z), (0, Z, Y)):
        if n == 1:
            continue
        lines = other * X
        g = cuda.device_array((n, lines), np.float64)
        v = cuda.device_array((n, lines), np.int32)
        zb = cuda.device_array((n + 1, lines), np.float64)
        final = axis == 0 or Z == 1
        cols_kernel[_blocks(lines), THREADS](out, axis, float(spacing3[axis]) ** 2, final, g, v, zb)
    if Z == 1 and Y == 1:
        sqrt_kernel[_blocks(out.size), THREADS](out.reshape(out.size))
    return out
