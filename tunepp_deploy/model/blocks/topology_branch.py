"""Topology branch of TUPA: attention biased towards structurally critical tokens.

A :class:`CriticalPointDetector` scores every voxel with ``m in (0, 1)`` — how likely the voxel sits
where topology is decided (boundaries, thin bridges, skeleton/medial lines, junctions). The branch
then attends with

    A = softmax(Q K_p^T / sqrt(d) + lambda_t[h] * 1 m_p^T)

where ``m_p`` is m pooled onto the same cells as the keys ``K_p``. The bias is added **per key**
(a column bias): every query attends more to critical regions, and the output changes with m.

Fixes the audit's central flaw: the public code added ``lambda_t * m 1^T`` — a *row* bias, constant
along each softmax row, which cancels exactly (softmax(z + c) = softmax(z)); its lambda_t could move
from 0.3 to 1000 and change outputs by 4e-7, and the detector received ~1e-8 gradients. It was also
full N x N attention; here keys/values are pooled to at most P tokens (linear in N).
``tests/model/test_topology_prior.py`` checks that lambda_t changes outputs and that gradients reach
the detector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tunepp_deploy.model.blocks.attention_spatial import pool_cells, pooled_attention
from tunepp_deploy.model.blocks.conv import Int3, group_norm


def _laplacian_kernel() -> Tensor:
    """The 7-point discrete 3D Laplacian (-6 centre, +1 on the six face neighbours)."""
    k = torch.zeros(3, 3, 3)
    k[1, 1, 1] = -6.0
    for dz, dy, dx in ((0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)):
        k[dz, dy, dx] = 1.0
    return k


class CriticalPointDetector(nn.Module):
    """Per-voxel critical-point score ``m = sigmoid(MLP([|L * x|, gelu(S * x)]))`` in (0, 1).

    Two depth-wise 3x3x3 convolutions look at every channel separately:

    * ``L`` starts as the discrete Laplacian. Its magnitude is large on both sides of an edge
      (boundary-sensitive) and on thin ridges/tubes, where the second derivative across the
      structure is large (skeleton-sensitive) — exactly where a segmentation breaks, merges or
      punches a hole. It stays learnable.
    * ``S`` is a freely learned depth-wise filter for patterns the Laplacian misses.

    A 1x1x1 MLP mixes channels into one score. Depth-wise convolutions keep the cost at O(27 N C).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.laplace = nn.Conv3d(channels, channels, 3, padding=1, groups=channels, bias=False)
        with torch.no_grad():
            self.laplace.weight.copy_(_laplacian_kernel().expand(channels, 1, 3, 3, 3))
        self.free = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        hidden = max(channels // 2, 4)
        self.mlp = nn.Sequential(
            nn.Conv3d(2 * channels, hidden, 1),
            nn.GELU(),
            nn.Conv3d(hidden, 1, 1),
        )
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, D, H, W] -> m [B, 1, D, H, W]``."""
        xn = self.norm(x)
        feats = torch.cat([self.laplace(xn).abs(), self.act(self.free(xn))], dim=1)
        return torch.sigmoid(self.mlp(feats))


class TopologyAttention(nn.Module):
    """Pooled attention with the per-key critical-point bias ``lambda_t[h] * m_p`` (module docstring).

    ``lambda_t`` is one learnable strength per head, initialised from ``model.topo_lambda``.
    """

    def __init__(self, heads: int, init_lambda: float) -> None:
        super().__init__()
        self.lambda_t = nn.Parameter(torch.full((1, heads, 1, 1), float(init_lambda)))

    def forward(self, q: Tensor, kp: Tensor, vp: Tensor, m: Tensor, grid: Int3) -> Tensor:
        """q ``[B,h,N,d]``, kp/vp ``[B,h,P,d]``, m ``[B,1,D,H,W]`` -> ``[B,h,N,d]``."""
        m_p = pool_cells(m, grid).unsqueeze(2)  # [B, 1, 1, P]: one value per key
        return pooled_attention(q, kp, vp, key_bias=self.lambda_t * m_p)


__all__ = ["CriticalPointDetector", "TopologyAttention"]
