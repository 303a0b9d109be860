r"""lambda2 term: heteroscedastic (aleatoric) classification loss, Kendall & Gal (2017).

The aleatoric head predicts ``s = log sigma^2`` per voxel; the logits are treated as Gaussian,
``z_t = z + sigma * eps_t`` with ``eps_t ~ N(0, I_K)``, and the expected softmax likelihood of the
true class is estimated by Monte Carlo with T samples:

    L_unc = - mean_{b,v} log( (1/T) sum_{t=1..T} softmax(z_t)_{y} )
          = - mean_{b,v} [ logsumexp_t log_softmax(z_t)_y - log T ]

Where the network is confidently wrong, raising sigma flattens the sampled softmax and lowers the
loss (attenuation); where it is right, noise only hurts, so sigma is pushed down. This is the
classification form of the loss (not the regression ``e / 2s^2 + log s`` form the public code
applied to class-mean squared errors). ``T = loss.unc_samples``; memory is T times the logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def heteroscedastic_loss(
    logits: Tensor,
    log_var: Tensor,
    labels: Tensor,
    samples: int = 8,
    noise: Tensor | None = None,
) -> Tensor:
    """``L_unc`` for logits ``[B, K, ...]``, ``log_var [B, 1, ...]``, int labels ``[B, ...]``.

    ``noise`` (``[T, B, K, ...]`` standard normal) may be given for reproducible tests; otherwise it
    is drawn from the torch RNG.
    """
    logits, log_var = logits.float(), log_var.float()
    if noise is None:
        noise = torch.randn((samples, *logits.shape), device=logits.device, dtype=logits.dtype)
    t = noise.shape[0]
    z = logits.unsqueeze(0) + torch.exp(0.5 * log_var).unsqueeze(0) * noise
    idx = labels.long().unsqueeze(0).unsqueeze(2).expand(t, -1, 1, *labels.shape[1:])
    log_py = F.log_softmax(z, dim=2).gather(2, idx).squeeze(2)  # [T, B, ...]
    return -(torch.logsumexp(log_py, dim=0) - math.log(t)).mean()


__all__ = ["heteroscedastic_loss"]
