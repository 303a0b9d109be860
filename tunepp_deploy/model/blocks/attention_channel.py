"""Channel branch of TUPA: attention between feature channels (d x d per head), EPA-style.

``A = softmax(tau_h * Qn^T Kn)`` with ``Qn``, ``Kn`` L2-normalised **along the token axis**, one
learnable temperature ``tau_h`` per head, output ``A V^T``. Normalising along tokens makes the d x d
logits cosine similarities between whole channel maps, bounded in [-tau, tau] whatever the window
size; the temperature restores the sharpness that bound would otherwise take away.

Fixes the audit's flaw: the public TUNE++ code used ``softmax(Q^T Q / sqrt(C))`` — no normalisation
(logits grow with N, so the softmax saturates on large windows) and no temperature.
Cost O(N * d^2 * h): linear in the number of voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelAttention(nn.Module):
    """``forward(q, k, v)`` with ``[B, h, N, d]`` tensors -> ``[B, h, N, d]``."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        qn = F.normalize(q, dim=2)  # along tokens
        kn = F.normalize(k, dim=2)
        attn = (torch.matmul(qn.transpose(-1, -2), kn) * self.temperature).softmax(dim=-1)  # [B,h,d,d]
        return torch.matmul(attn, v.transpose(-1, -2)).transpose(-1, -2)


__all__ = ["ChannelAttention"]
