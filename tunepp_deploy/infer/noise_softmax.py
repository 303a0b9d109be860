r"""The sampled softmax of the logit noise as one CPU kernel: ``mean_t softmax(z + sigma * eps_t)``.

**Why.** With ``T = 8`` draws the torch path of :func:`~tunepp_deploy.infer.logit_noise.sampled_softmax`
makes 3 passes per draw (``addcmul``, ``softmax``, ``add``) over every ``[rows, K, *window]`` call output:
on the phantom MC-25 workload that was 0.72 s of 0.94 s of "stitching" beside 2.7 s of network
(bench/results). This kernel reads the logits once per block of voxels, keeps the block in L1, and writes
the average once.

**Arithmetic.** Per voxel, ``A_k = exp(z_k - max_j z_j)`` once, and per draw ``B_k = exp(sigma (eps_k -
eps_0))`` (a softmax ignores a shift shared by the classes, so ``B_0 = 1`` needs no exponential); then
``softmax(z + sigma eps)_k = A_k B_k / sum_j A_j B_j``. The noise comes in antithetic pairs
(:func:`~tunepp_deploy.infer.logit_noise.draw_logit_noise`: ``eps_{t + T/2} = -eps_t``), so the partner's
softmax is ``(A_k / B_k) / sum_j A_j / B_j``: ``K + (K - 1) T/2`` exponentials per voxel instead of ``K T``. The
kernel detects the pairs from the draws it is given (it never assumes them). Exponentials use a
Cephes-style float32 polynomial (range reduction by ``ln 2``, degree-6 polynomial, exponent bits; relative
error below 1e-7 on ``[-87, 88]``, tested) written as plain arithmetic, so LLVM vectorises the voxel loops
(numba's libm ``exp`` is scalar here: PyPI's llvmlite has no SVML).

**Range.** ``B_k`` is bounded by ``exp(sigma max|eps_k - eps_0|)``; where that exceeds ``exp(20)`` anywhere in a block
(a wide noise), the block takes the max-subtracted softmax per draw instead (the torch path's arithmetic),
so nothing overflows and no tiny ``A_k`` is rounded to 0 that a large draw would have lifted. The results
equal the torch path's within 1e-6 absolute (tested, both branches), not bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

_LOG2E = np.float32(1.4426950408889634)
_C1 = np.float32(0.693359375)  # ln 2 = C1 - C2, split so n * C1 is exact
_C2 = np.float32(-2.12194440e-4)
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
#: The polynomial's input range: ``2^n`` for ``n`` in [-126, 127] is a normal float32.
EXP_LO, EXP_HI = np.float32(-87.0), np.float32(88.0)
#: Largest ``sigma * |eps_k - eps_0|`` a block may have for the factored form ``A_k B_k`` (else: per-draw softmax).
FACTOR_BOUND = np.float32(20.0)
#: Voxels per block: a block's ``A``, ``B`` and sums stay in L1/L2.
BLOCK = 512


@njit(inline="always")
def _exp_block(y: np.ndarray, bits: np.ndarray, n: int) -> None:  # pragma: no cover - compiled
    """``y[:n] = exp(y[:n])`` in place, inputs clamped to [EXP_LO, EXP_HI] (module docstring)."""
    for i in range(n):
        x = min(max(y[i], EXP_LO), EXP_HI)
        fn = np.floor(x * _LOG2E + np.float32(0.5))
        r = x - fn * _C1 - fn * _C2
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        y[i] = p * r * r + r + np.float32(1.0)
        bits[i] = (np.int32(fn) + np.int32(127)) << np.int32(23)
    scale = bits[:n].view(np.float32)
    for i in range(n):
        y[i] = y[i] * scale[i]


@njit(cache=True)
def exp_f32(x: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """The kernel's exponential on a 1-D float32 array (for tests against ``np.exp``)."""
    y = x.copy()
    bits = np.empty(y.size, np.int32)
    _exp_block(y, bits, y.size)
    return y


@njit(parallel=True, cache=True)
def _sampled_softmax(z: np.ndarray, lv: np.ndarray, eps: np.ndarray, partner: np.ndarray,
                     out: np.ndarray) -> None:  # pragma: no cover - compiled
    rows, k_classes, v = z.shape
    draws = eps.shape[1]
    nb = (v + BLOCK - 1) // BLOCK
    inv_t = np.float32(1.0) / np.float32(draws)
    for q in prange(rows * nb):
        r = q // nb
        b0 = (q - r * nb) * BLOCK
        n = min(v, b0 + BLOCK) - b0
        sig = np.empty(BLOCK, np.float32)
        m = np.empty(BLOCK, np.float32)
        s1 = np.empty(BLOCK, np.float32)
        s2 = np.empty(BLOCK, np.float32)
        bits = np.empty(BLOCK, np.int32)
        a = np.empty((k_classes, BLOCK), np.float32)
        b = np.empty((k_classes, BLOCK), np.float32)
        acc = np.zeros((k_classes, BLOCK), np.float32)
        for i in range(n):
            sig[i] = np.float32(0.5) * lv[r, b0 + i]
        _exp_block(sig, bits, n)
        emax = np.float32(0.0)  # the largest noise difference to class 0 (the factored form's exponent)
        for t in range(draws):
            for k in range(k_classes):
                emax = max(emax, abs(eps[r, t, k] - eps[r, t, 0]))
        smax = np.float32(0.0)
        for i in range(n):
            smax = max(smax, sig[i])
        if smax * emax <= FACTOR_BOUND:  # the factored form, pairs share their exponentials
            for i in range(n):
                m[i] = z[r, 0, b0 + i]
            for k in range(1, k_classes):
                for i in range(n):
                    m[i] = max(m[i], z[r, k, b0 + i])
            for k in range(k_classes):
                ak = a[k]
                for i in range(n):
                    ak[i] = z[r, k, b0 + i] - m[i]
                _exp_block(ak, bits, n)
            for t in range(draws):
                pt = partner[t]
                if 0 <= pt < t:
                    continue  # done with its partner
                for i in range(n):  # class 0 is the reference: B_0 = exp(sigma (eps_0 - eps_0)) = 1
                    b[0, i] = np.float32(1.0)
                    s1[i] = a[0, i]
                    s2[i] = a[0, i]
                for k in range(1, k_classes):
                    e = eps[r, t, k] - eps[r, t, 0]
                    bk = b[k]
                    for i in range(n):
                        bk[i] = sig[i] * e
                    _exp_block(bk, bits, n)
                    if pt >= 0:
                        for i in range(n):
                            s1[i] += a[k, i] * bk[i]
                            s2[i] += a[k, i] / bk[i]
                    else:
                        for i in range(n):
                            s1[i] += a[k, i] * bk[i]
                for i in range(n):
                    s1[i] = np.float32(1.0) / s1[i]
                if pt >= 0:
                    for i in range(n):
                        s2[i] = np.float32(1.0) / s2[i]
                    for k in range(k_classes):
                        for i in range(n):
                            acc[k, i] += a[k, i] * (b[k, i] * s1[i] + s2[i] / b[k, i])
                else:
                    for k in range(k_classes):
                        for i in range(n):
                            acc[k, i] += a[k, i] * b[k, i] * s1[i]
        else:  # wide noise somewhere in the block: the max-subtracted softmax of every draw
            for t in range(draws):
                for k in range(k_classes):
                    e = eps[r, t, k]
                    ak = a[k]
                    for i in range(n):
                        ak[i] = z[r, k, b0 + i] + sig[i] * e
                for i in range(n):
                    m[i] = a[0, i]
                for k in range(1, k_classes):
                    for i in range(n):
                        m[i] = max(m[i], a[k, i])
                for i in range(n):
                    s1[i] = np.float32(0.0)
                for k in range(k_classes):
                    ak = a[k]
                    for i in range(n):
                        ak[i] = ak[i] - m[i]
                    _exp_block(ak, bits, n)
                    for i in range(n):
                        s1[i] += ak[i]
                for k in range(k_classes):
                    for i in range(n):
                        acc[k, i] += a[k, i] / s1[i]
        for k in range(k_classes):
            for i in range(n):
                out[r, k, b0 + i] = acc[k, i] * inv_t


def antithetic_partners(eps: np.ndarray) -> np.ndarray:
    """``partner[t]``: the draw equal to ``-eps[:, t]`` in every row (t ± T//2), or -1; ``eps [R, T, K]``."""
    t_draws = eps.shape[1]
    half = (t_draws + 1) // 2
    partner = np.full(t_draws, -1, np.int64)
    for t in range(t_draws // 2 if t_draws % 2 == 0 else half - 1):
        u = t + half
        if u < t_draws and np.array_equal(eps[:, u], -eps[:, t]):
            partner[t], partner[u] = u, t
    return partner


def can_run(logits: torch.Tensor, log_var: torch.Tensor) -> bool:
    """Whether :func:`sampled_softmax_cpu` takes these (CPU float32 ``[R, K, ...]`` and ``[R, 1, ...]``)."""
    return (logits.device.type == "cpu" and log_var.device.type == "cpu" and logits.dtype == torch.float32
            and log_var.dtype == torch.float32 and logits.dim() >= 3 and log_var.shape[1] == 1
            and log_var.shape[0] == logits.shape[0] and log_var.shape[2:] == logits.shape[2:])


def sampled_softmax_cpu(logits: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor,
                        out: torch.Tensor) -> torch.Tensor:
    """``out[r] = mean_t softmax(logits[r] + exp(log_var[r] / 2) * eps[r, t])`` (module docstring).

    ``out`` must be a contiguous float32 tensor of ``logits``' shape; requires :func:`can_run` and
    ``eps [R, T >= 1, K]``. Threads: torch's intra-op count (so ``--threads`` holds here too).
    """
    r, k = logits.shape[0], logits.shape[1]
    if not out.is_contiguous() or out.shape != logits.shape or out.dtype != torch.float32:
        raise ValueError(f"out must be a contiguous float32 {tuple(logits.shape)}, got {out.dtype} {tuple(out.shape)}")
    e = eps.detach().to("cpu", torch.float32).contiguous().numpy()
    z = logits.detach().contiguous().reshape(r, k, -1).numpy()
    lv = log_var.detach().contiguous().reshape(r, -1).numpy()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _sampled_softmax(z, lv, e, antithetic_partners(e), out.view(r, k, -1).numpy())
    return out


__all__ = ["BLOCK", "EXP_HI", "EXP_LO", "FACTOR_BOUND", "antithetic_partners", "can_run", "exp_f32",
           "sampled_softmax_cpu"]
