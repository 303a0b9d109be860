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


def sampled_softmax(logits: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """``mean_t softmax(z + sigma * eps_t)`` per row: ``logits [R, K, ...]``, ``log_var [R, 1, ...]``,
    ``eps [R, T, K]`` (row ``r``'s draws) -> ``[R, K, ...]`` float32.

    ``eps`` None or with ``T == 0`` gives the plain softmax (no logit noise). The draws are summed one
    at a time, so memory is two ``[R, K, ...]`` buffers whatever ``T``.
    """
    z = logits.float()
    if eps is None or eps.shape[1] == 0:
        return torch.softmax(z, dim=1)
    if eps.shape[0] != z.shape[0] or eps.shape[2] != z.shape[1]:
        raise ValueError(f"noise {tuple(eps.shape)} does not match logits {tuple(z.shape)}")
    sigma = torch.exp(0.5 * log_var.float())
    trail = (1,) * (z.dim() - 2)
    e = eps.to(z.device, torch.float32)
    acc = torch.zeros_like(z)
    for t in range(e.shape[1]):
        acc += torch.softmax(torch.addcmul(z, sigma, e[:, t].reshape(*e.shape[::2], *trail)), dim=1)
    return acc.div_(e.shape[1])


__all__ = ["DEFAULT_NOISE_DRAWS", "NOISE_STREAM", "draw_logit_noise", "sampled_softmax"]
