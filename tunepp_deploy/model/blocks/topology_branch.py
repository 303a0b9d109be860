"""Topology branch of TUPA: attention biased towards structurally critical tokens.

A :class:`CriticalPointDetector` scores every voxel with ``m in (0, 1)`` — how likely the voxel sits
where topology is decided (boundaries, thin bridges, skeleton/medial lines, junctions). The branch
then attends, per head, with the bias on the **keys**

    A = softmax(Q K^T / sqrt(d) + lambda_t * 1 m^T)

(a column bias: every query attends more to critical tokens), evaluated on pooled cells with
critical-weighted pooling so that it stays linear in N (:class:`TopologyAttention`).

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
    """Per-voxel critical-point score ``m = sigmoid(norm(MLP([|L * x|, gelu(S * x)])))`` in (0, 1).

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
            nn.Conv3d(hidden, 1, 1, bias=False),  # no bias: score_norm subtracts the window mean anyway
        )
        # Standardise the raw score over the window (per sample), then a learnable gain/offset:
        # only *relative* criticality matters to an attention bias, and this keeps m spread over
        # (0, 1) from the first step instead of collapsing near sigmoid(bias).
        self.score_norm = nn.GroupNorm(1, 1)
        with torch.no_grad():
            self.score_norm.weight.fill_(2.0)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, D, H, W] -> m [B, 1, D, H, W]``."""
        xn = self.norm(x)
        feats = torch.cat([self.laplace(xn).abs(), self.act(self.free(xn))], dim=1)
        return torch.sigmoid(self.score_norm(self.mlp(feats)))


#: State-dict keys (relative to a detector) that checkpoints written before 2026-12-03 carry and this
#: network no longer has: the last MLP convolution's bias, which ``score_norm`` cancelled exactly (its
#: gradient was rounding noise, ~1e-11). Loading drops them (:func:`without_retired`); outputs are unchanged.
RETIRED_DETECTOR_KEYS = ("mlp.2.bias",)


def retired_state_keys(model: nn.Module) -> set[str]:
    """The full names of :data:`RETIRED_DETECTOR_KEYS` for every detector inside ``model``."""
    return {f"{name}.{key}" if name else key for name, m in model.named_modules()
            if isinstance(m, CriticalPointDetector) for key in RETIRED_DETECTOR_KEYS}


def without_retired(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` minus the keys :func:`retired_state_keys` names for ``model`` (old checkpoints load strictly)."""
    retired = retired_state_keys(model)
    return {k: v for k, v in state.items() if k not in retired}


class TopologyAttention(nn.Module):
    """Key-biased attention with critical-point-weighted pooling of keys and values.

    Over all N keys the branch would compute ``softmax_n(q.k_n / sqrt(d) + lambda m_n) v_n``. With
    per-voxel weights ``w_n = exp(lambda m_n - |lambda|)`` (<= 1, so no fp16 overflow; the constant
    cancels in the softmax) and the same cells as the spatial branch, each cell p contributes

        K_p = sum_{n in p} w_n k_n / sum_{n in p} w_n,     V_p likewise,
        bias_p = log sum_{n in p} w_n                       (= log-sum-exp pooling of lambda m),

    and the branch returns ``softmax_p(q.K_p / sqrt(d) + bias_p) V_p``. This equals the full-resolution
    key-biased attention exactly when keys are constant within a cell (and always when the map is
    not pooled, N <= P), and is its first-order approximation otherwise. The critical score thus
    shapes both *which cells* are attended (the bias, a soft maximum of m over the cell) and *what*
    a cell contributes (its critical voxels dominate K_p, V_p), at O(N * P * d) cost.

    ``lambda_t`` is one learnable strength per head, initialised from ``model.topo_lambda``.
    """

    def __init__(self, heads: int, init_lambda: float) -> None:
        super().__init__()
        self.heads = heads
        self.lambda_t = nn.Parameter(torch.full((heads,), float(init_lambda)))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, m: Tensor, grid: Int3) -> Tensor:
        """q ``[B,h,N,d]``; k, v ``[B,C,D,H,W]`` (unpooled); m ``[B,1,D,H,W]`` -> ``[B,h,N,d]``."""
        b, c = k.shape[0], k.shape[1]
        h = self.heads
        spatial = k.shape[2:]
        lam = self.lambda_t.view(1, h, 1, 1, 1)
        w = torch.exp(lam * m - lam.abs())  # [B, h, D, H, W]
        wk = (k.reshape(b, h, c // h, *spatial) * w.unsqueeze(2)).reshape(b, c, *spatial)
        wv = (v.reshape(b, h, c // h, *spatial) * w.unsqueeze(2)).reshape(b, c, *spatial)
        w_p = pool_cells(w, grid)  # [B, h, P] (cell means)
        pooled = pool_cells(torch.cat([wk, wv], dim=1), grid)  # [B, 2C, P]
        kp, vp = (t.reshape(b, h, c // h, -1) / w_p.unsqueeze(2) for t in pooled.chunk(2, dim=1))
        bias = torch.log(w_p).unsqueeze(2)  # [B, h, 1, P]; log mean = log sum - log |cell|
        return pooled_attention(q, kp.transpose(-1, -2), vp.transpose(-1, -2), key_bias=bias)


__all__ = ["CriticalPointDetector", "TopologyAttention"]
