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
``k`` in order and added once per sample; samples are folded in order. The result equals
``SampleStats.add((acc / norm)[crop])`` to float64 round-off (tested, ~1e-16).

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


@njit(parallel=True, cache=True)
def _fold(sum_: np.ndarray, sq: np.ndarray, ent: np.ndarray, acc: np.ndarray, norm: np.ndarray,
          has_norm: bool, eps: float) -> None:  # pragma: no cover - compiled
    n, k_classes = acc.shape[0], acc.shape[1]
    d, h, w = sq.shape
    for q in prange(d * h):
        a = q // h
        b = q - a * h
        for s in range(n):
            for c in range(w):
                nv = norm[a, b, c] if has_norm else np.float32(1.0)
                sv = 0.0
                e = 0.0
                for k in range(k_classes):
                    p = np.float64(acc[s, k, a, b, c] / nv) if has_norm else np.float64(acc[s, k, a, b, c])
                    sum_[k, a, b, c] += p
                    sv += p * p
                    e += p * np.log(max(p, eps))
                sq[a, b, c] += sv
                ent[a, b, c] -= e


@njit(parallel=True, cache=True)
def _entropy(p: np.ndarray, out: np.ndarray, eps: float) -> None:  # pragma: no cover - compiled
    k_classes, v = p.shape
    for i in prange(v):
        e = 0.0
        for k in range(k_classes):
            e += p[k, i] * np.log(max(p[k, i], eps))
        out[i] = -e


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


__all__ = ["ENTROPY_EPS", "can_fold", "entropy64", "fold_chunk"]
