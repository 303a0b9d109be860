r"""Aleatoric uncertainty by sampling: the heteroscedastic head's logit noise, drawn from the seed.

TUNE++'s aleatoric head predicts a log-variance ``log sigma^2`` of the logits (one value per voxel,
shared by the classes; Kendall & Gal 2017). The class probabilities a sampled network ``s`` predicts
are then the expectation over that noise,

    p_s = E_eps[ softmax(z_s + sigma_s * eps) ],   eps ~ N(0, I_K),

estimated with ``T`` draws. A first-order (delta-method) map of this variance is ~0 exactly where
the head is informative (large margin *and* large sigma, where draws flip the argmax), so the toolkit
samples instead: it is cheap (the last layer only, after the runner call) and exact in expectation.

**Which draws.** Sample ``s`` uses ``T`` noise vectors ``eps_{s,t}`` in ``R^K`` that are the *same at
every voxel*: row ``s`` of :func:`draw_logit_noise` depends only on ``(seed, s)``. Per voxel the
estimate is unbiased (each voxel sees ``T`` independent standard normal draws); sharing them across
voxels only correlates the estimation error spatially, which no per-voxel map sees. In exchange the
draws are tiny (``S x T x K`` numbers instead of ``S x T x K x V``), identical on every backend
(NumPy's PCG64, as the dropout masks), and identical in every window, so overlapping windows of one
sample see one noise realisation and the per-sample blend stays one coherent sample. Draws come in
antithetic pairs ``(eps, -eps)`` — for ``sigma -> 0`` the pair's mean softmax error is second order,
and the map converges faster in ``T`` (measured in ``docs/uncertainty.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tunepp_deploy.infer.allocator import Workspace
from tunepp_deploy.infer.noise_softmax import can_run, sampled_softmax_cpu

#: Default number of logit-noise draws per dropout sample (convergence: docs/uncertainty.md).
DEFAULT_NOISE_DRAWS = 8
#: Stream key for the noise draws, so they never coincide with a dropout site's stream ``[seed, i]``.
NOISE_STREAM = 0x4E4F495345


def draw_logit_noise(seed: int, sample_ids: Sequence[int], draws: int, classes: int) -> np.ndarray:
    """``[len(sample_ids), draws, classes]`` float32 standard normals in antithetic pairs.

    Row ``j`` depends only on ``(seed, sample_ids[j])``, so the first S' samples of a run with S > S'
    get the same draws, and torch, ONNX Runtime and TensorRT runs of one seed get the same draws.
    ``draws == 0`` gives an empty noise axis (plain softmax, no aleatoric sampling).
    """
    if draws < 0:
        raise ValueError(f"logit-noise draws must be >= 0, got {draws}")
    out = np.zeros((len(sample_ids), draws, classes), np.float32)
    half = (draws + 1) // 2
    for j, s in enumerate(sample_ids):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), NOISE_STREAM, int(s)])))
        base = rng.standard_normal((half, classes))
        out[j] = np.concatenate([base, -base])[:draws].astype(np.float32)
    return out


def sampled_softmax(logits: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor | None,
                    out: torch.Tensor | None = None, work: Workspace | None = None,
                    fused: bool = True) -> torch.Tensor:
    """``mean_t softmax(z + sigma * eps_t)`` per row: ``logits [R, K, ...]``, ``log_var [R, 1, ...]``,
    ``eps [R, T, K]`` (row ``r``'s draws) -> ``[R, K, ...]`` float32.

    ``eps`` None or with ``T == 0`` gives the plain softmax (no logit noise). The draws are summed one
    at a time into ``out`` (a contiguous float32 ``[R, K, ...]`` the caller owns, e.g. its slice of a
    reusable output buffer; allocated when None). ``work``: where the noisy logits, one draw's softmax and
    sigma live between calls — without it they are allocated per call, and above glibc's mmap threshold
    each is a fresh zero-filled mmap every call (:mod:`tunepp_deploy.infer.allocator`). The same ops in
    the same order either way: the result is bit-identical with or without ``out`` / ``work``.

    On a CPU (float32, ``out`` contiguous) one fused kernel computes it
    (:mod:`tunepp_deploy.infer.noise_softmax`, within 1e-6 of the torch path); elsewhere, and with
    ``fused=False``, the torch ops below.
    """
    z = logits.float().contiguous()  # torch._softmax(out=) into a strided buffer misplaces values (tested)
    if out is None:
        out = torch.empty(z.shape, dtype=torch.float32, device=z.device)
    if eps is None or eps.shape[1] == 0:
        return _softmax_into(z, out)
    if eps.shape[0] != z.shape[0] or eps.shape[2] != z.shape[1]:
        raise ValueError(f"noise {tuple(eps.shape)} does not match logits {tuple(z.shape)}")
    lv = log_var.float().contiguous()
    if fused and out.is_contiguous() and can_run(z, lv):
        return sampled_softmax_cpu(z, lv, eps, out)
    if work is None:
        y, s, sigma = torch.empty_like(z), torch.empty_like(z), torch.empty_like(lv)
    else:
        y, s, sigma = work.get("softmax_y", z.shape), work.get("softmax_s", z.shape), work.get("sigma", lv.shape)
    torch.mul(lv, 0.5, out=sigma).exp_()
    trail = (1,) * (z.dim() - 2)
    e = eps.to(z.device, torch.float32)
    out.zero_()
    for t in range(e.shape[1]):
        torch.addcmul(z, sigma, e[:, t].reshape(*e.shape[::2], *trail), out=y)
        out.add_(_softmax_into(y, s))
    return out.div_(e.shape[1])


def _softmax_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(x, 1)`` written into ``out`` (the same kernel: ``aten::_softmax.out``)."""
    try:
        return torch._softmax(x, 1, False, out=out)
    except (AttributeError, TypeError, RuntimeError):  # a torch without the out= overload: one temporary
        return out.copy_(torch.softmax(x, dim=1))


__all__ = ["DEFAULT_NOISE_DRAWS", "NOISE_STREAM", "draw_logit_noise", "sampled_softmax"]
