"""The fused fold: normalise a chunk's stitched sums and add them to the float64 statistics in one pass.

**Why.** After the last window of a chunk, the engine holds ``acc [n, K, *padded]`` (Gaussian-weighted
sums of each sample's probabilities) and ``norm [*padded]`` (the summed weights). The maps need, per
voxel and sample, ``p = acc / norm`` and then ``sum_s p``, ``sum_s sum_k p^2`` and ``sum_s H[p]`` in
float64 (:class:`~tunepp_deploy.infer.moments.SampleStats`). In torch that is ``acc / norm`` (a full
float32 copy), a crop, and per sample a float64 copy, a square, two reductions, a clamp, a log, a
product and a sum: about 12 passes over ``n x K x V`` and ~100 MB of fresh temporaries on the phantom
workload. This kernel reads ``acc`` once and writes the statistics once: per voxel the ``n x K``
values are divided, widened and folded in registers.

**Exactness.** The arithmetic is the torch path's, in its order: ``p`` is the float32 quotient
``acc / norm`` widened to float64; ``sum_k p^2`` and ``sum_k p log max(p, 1e-12)`` are summed over
``k`` in order and added once per sample; samples are folded in order. The logarithm is the kernel's
own vectorisable float64 ``log`` (:func:`_log_block`, within 3 ulp of libm's, tested), which halved the
fold's time (0.079 -> 0.046 s on the phantom MC-25 workload, 2 threads). The result equals
``SampleStats.add((acc / norm)[crop])`` to float64 round-off (tested, <= 1e-12).

The kernel is CPU-only (numba ``parallel=True``, threads = torch's intra-op threads, so a
``--threads`` setting holds for it too); on CUDA the torch path runs.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

#: The clamp of :func:`tunepp_deploy.infer.uncertainty.entropy` (0 log 0 = 0).
ENTROPY_EPS = 1e-12


_SQRT2 = 1.4142135623730951
_LN2 = 0.6931471805599453
_MANT = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)
#: 1 / (2j + 1) for the series of atanh: log(m) = 2 atanh((m - 1) / (m + 1)), |(m-1)/(m+1)| <= 0.1716
_ATANH = tuple(1.0 / (2 * j + 1) for j in range(12))


@njit(inline="always")
def _log_block(x: np.ndarray, bits: np.ndarray, n: int) -> None:  # pragma: no cover - compiled
    """``x[:n] = log(x[:n])`` in place for positive normal float64 (``x >= ENTROPY_EPS`` here).

    **Why not ``np.log``:** numba calls libm's scalar ``log`` (PyPI's llvmlite has no SVML), which made
    the fold's ``n x K x V`` logarithms most of its time. This is plain arithmetic that LLVM vectorises:
    ``x = m 2^e`` from the bits, ``m`` in [sqrt(1/2), sqrt(2)), ``log m = 2 atanh((m-1)/(m+1))`` by its series to
    the 23rd power (truncation below 1e-17 relative), so the result is within a few ulp of libm's (tested).
    """
    xb = x[:n].view(np.int64)
    for i in range(n):
        bits[i] = ((xb[i] >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1023)
        xb[i] = (xb[i] & _MANT) | _ONE_BITS  # the mantissa, as a float64 in [1, 2)
    for i in range(n):
        m = x[i]
        e = np.float64(bits[i])
        if m > _SQRT2:
            m = m * 0.5
            e = e + 1.0
        f = (m - 1.0) / (m + 1.0)
        f2 = f * f
        q = _ATANH[11]
        q = q * f2 + _ATANH[10]
        q = q * f2 + _ATANH[9]
        q = q * f2 + _ATANH[8]
        q = q * f2 + _ATANH[7]
        q = q * f2 + _ATANH[6]
        q = q * f2 + _ATANH[5]
        q = q * f2 + _ATANH[4]
        q = q * f2 + _ATANH[3]
        q = q * f2 + _ATANH[2]
        q = q * f2 + _ATANH[1]
        q = q * f2 + 1.0
        x[i] = e * _LN2 + 2.0 * f * q


@njit(cache=True)
def log64(x: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """The fold's logarithm on a 1-D float64 array of positive normal values (for tests)."""
    y = x.copy()
    bits = np.empty(y.size, np.int64)
    _log_block(y, bits, y.size)
    return y


@njit(parallel=True, cache=True)
def _fold(sum_: np.ndarray, sq: np.ndarray, ent: np.ndarray, acc: np.ndarray, norm: np.ndarray,
          has_norm: bool, eps: float) -> None:  # pragma: no cover - compiled
    n, k_classes = acc.shape[0], acc.shape[1]
    d, h, w = sq.shape
    for q in prange(d * h):
        a = q // h
        b = q - a * h
        p = np.empty((k_classes, w), np.float64)
        lg = np.empty(w, np.float64)
        bits = np.empty(w, np.int64)
        sv = np.empty(w, np.float64)
        e = np.empty(w, np.float64)
        nv = np.empty(w, np.float32)
        for c in range(w):
            nv[c] = norm[a, b, c] if has_norm else np.float32(1.0)
        for s in range(n):
            for k in range(k_classes):  # p = acc / norm in float32, widened (the torch path's arithmetic)
                for c in range(w):
                    p[k, c] = np.float64(acc[s, k, a, b, c] / nv[c])
            for c in range(w):
                sv[c] = 0.0
                e[c] = 0.0
            for k in range(k_classes):  # classes in order per voxel, as the torch sum over k
                for c in range(w):
                    lg[c] = max(p[k, c], eps)
                _log_block(lg, bits, w)
                for c in range(w):
                    pk = p[k, c]
                    sum_[k, a, b, c] += pk
                    sv[c] += pk * pk
                    e[c] += pk * lg[c]
            for c in range(w):
                sq[a, b, c] += sv[c]
                ent[a, b, c] -= e[c]


@njit(parallel=True, cache=True)
def _entropy(p: np.ndarray, out: np.ndarray, eps: float) -> None:  # pragma: no cover - compiled
    k_classes, v = p.shape
    block = 1024
    for q in prange((v + block - 1) // block):
        b0 = q * block
        m = min(v, b0 + block) - b0
        lg = np.empty(block, np.float64)
        bits = np.empty(block, np.int64)
        e = np.zeros(block, np.float64)
        for k in range(k_classes):
            for i in range(m):
                lg[i] = max(p[k, b0 + i], eps)
            _log_block(lg, bits, m)
            for i in range(m):
                e[i] += p[k, b0 + i] * lg[i]
        for i in range(m):
            out[b0 + i] = -e[i]


def entropy64(p: torch.Tensor) -> torch.Tensor:
    """Entropy over dim 0 of a CPU float64 ``p [K, ...]`` with the fold's own arithmetic (its log, its
    order), so ``H[p_bar] - mean_s H[p_s]`` is exactly 0 when every sample is the same (torch's
    vectorised log differs from libm's in the last bit: 2e-16 of spurious mutual information)."""
    flat = p.detach().reshape(p.shape[0], -1).contiguous()
    out = torch.empty(flat.shape[1], dtype=torch.float64)
    _threads()
    _entropy(flat.numpy(), out.numpy(), ENTROPY_EPS)
    return out.view(p.shape[1:])


def _threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def can_fold(acc: torch.Tensor) -> bool:
    """Whether :func:`fold_chunk` runs the kernel for ``acc`` (CPU float32, 3 spatial dims)."""
    return acc.device.type == "cpu" and acc.dtype == torch.float32 and acc.dim() == 5


def fold_chunk(sum_: torch.Tensor, sq: torch.Tensor, ent: torch.Tensor, acc: torch.Tensor,
               norm: torch.Tensor | None = None) -> None:
    """Add ``n`` samples to the float64 sums in place (module docstring).

    ``sum_ [K, D, H, W]``, ``sq`` and ``ent`` ``[D, H, W]`` float64 contiguous; ``acc [n, K, Dp, Hp, Wp]``
    float32 (``Dp >= D`` ...: the padded grid, cropped at the end of each axis); ``norm [Dp, Hp, Wp]``
    float32 divides ``acc`` (None: ``acc`` already holds probabilities). Requires :func:`can_fold`.
    """
    if not can_fold(acc):
        raise ValueError(f"fold_chunk takes a CPU float32 [n, K, D, H, W] chunk, got {acc.dtype} {tuple(acc.shape)}")
    if any(p < s for p, s in zip(acc.shape[2:], sq.shape, strict=True)):
        raise ValueError(f"chunk grid {tuple(acc.shape[2:])} is smaller than the statistics' {tuple(sq.shape)}")
    _threads()
    nrm = norm.detach().numpy() if norm is not None else np.ones((1, 1, 1), np.float32)
    _fold(sum_.numpy(), sq.numpy(), ent.numpy(), acc.detach().numpy(), nrm, norm is not None, ENTROPY_EPS)


__all__ = ["ENTROPY_EPS", "can_fold", "entropy64", "fold_chunk", "log64"]
