"""TUPA: Topology-Uncertainty aware Paired Attention, the transformer block of TUNE++.

Three parallel branches read the same LayerNorm'ed tokens through one bias-free projection
``Linear(C, 5C) -> Q, K, V_s, V_c, V_t`` (Q and K shared between branches, as EPA shares them):

1. spatial: ``softmax(Q K_p^T / sqrt(d)) V_s,p`` with K, V pooled to at most P cells
   (:mod:`.attention_spatial`; linear in N, size-agnostic);
2. channel: ``softmax(tau_h Qn^T Kn) V_c^T`` with Q, K L2-normalised along tokens
   (:mod:`.attention_channel`);
3. topology: ``softmax(Q K~_p^T / sqrt(d) + lambda_t 1 m~_p^T) V~_t,p``: m from a critical-point
   detector biases the *keys*; K~, V~ are pooled with weights exp(lambda_t m) and m~_p is the
   log-sum-exp of lambda_t m over the cell (:mod:`.topology_branch`).

Uncertainty-guided fusion, per voxel:

    sigma = softplus(MLP(LN(x)))                         >= 0
    w_t   = sigmoid(a * (sigma - b)),   a = softplus(a') > 0,  b learnable
    F     = (1 - w_t) * [P_s(spatial) ; P_c(channel)] + w_t * P_t(topology)
    y     = x + gamma * F                                (layer scale gamma, per channel)
    out   = ResConvBlock(y)                              (local 3x3x3 refinement, residual)

High predicted uncertainty leans on the structural prior, low uncertainty on the data branches.
Fixes the audit's fusion flaw: the public code used ``w_t = sigmoid(sigma)`` with ``sigma >= 0``,
so the topology branch always got at least half the weight; the shifted, scaled gate spans (0, 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunepp_deploy.model.blocks.attention_channel import ChannelAttention
from tunepp_deploy.model.blocks.attention_spatial import (
    SpatialAttention,
    merge_heads,
    pool_cells,
    pool_grid,
    split_heads,
)
from tunepp_deploy.model.blocks.conv import ResConvBlock, from_tokens, to_tokens
from tunepp_deploy.model.blocks.topology_branch import CriticalPointDetector, TopologyAttention


class TupaInternals(NamedTuple):
    """Per-voxel intermediate maps of one block, for tests and analysis (``[B, 1, D, H, W]`` each)."""

    critical: Tensor  # m, the detector's critical-point score in (0, 1)
    sigma: Tensor  # predicted uncertainty >= 0
    w_topology: Tensor  # fusion weight of the topology branch in (0, 1)


class UncertaintyGate(nn.Module):
    """``sigma = softplus(MLP(t))`` and ``w_t = sigmoid(a (sigma - b))`` per token (see module doc)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 4)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, 1))
        # a = softplus(a_raw) starts at 1; b starts at softplus(0) = ln 2, the gate's midpoint at init.
        self.a_raw = nn.Parameter(torch.tensor(0.5413))
        self.b = nn.Parameter(torch.tensor(0.6931))

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, N, C] -> (sigma, w_t)``, both ``[B, N, 1]``."""
        sigma = F.softplus(self.mlp(tokens))
        w_t = torch.sigmoid(F.softplus(self.a_raw) * (sigma - self.b))
        return sigma, w_t


class TUPABlock(nn.Module):
    """One TUPA block on a ``[B, C, D, H, W]`` feature map; output has the same shape.

    Args:
        channels: C; must be divisible by ``heads``.
        heads: attention heads h (d = C / h per head).
        proj_tokens: P, the most key/value cells of the spatial and topology branches.
        topo_lambda: initial per-head strength of the critical-point key bias.
        layer_scale: initial layer-scale gamma on the attention residual.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        proj_tokens: int,
        topo_lambda: float = 1.0,
        layer_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.proj_tokens = proj_tokens
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 5 * channels, bias=False)
        self.spatial = SpatialAttention()
        self.channel = ChannelAttention(heads)
        self.detector = CriticalPointDetector(channels)
        self.topology = TopologyAttention(heads, topo_lambda)
        half = channels // 2
        self.proj_spatial = nn.Linear(channels, half)
        self.proj_channel = nn.Linear(channels, channels - half)
        self.proj_topology = nn.Linear(channels, channels)
        self.gate = UncertaintyGate(channels)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1, 1), float(layer_scale)))
        self.refine = ResConvBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_internals(x)[0]

    def forward_with_internals(self, x: Tensor) -> tuple[Tensor, TupaInternals]:
        shape = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
        grid = pool_grid(shape, self.proj_tokens)
        h = self.heads
        tn = self.norm(to_tokens(x))
        q, k, v_s, v_c, v_t = self.qkv(tn).chunk(5, dim=-1)
        # Pool K and V_s in one call: [B, 2C, P] -> two [B, P, C].
        pooled = pool_cells(from_tokens(torch.cat([k, v_s], dim=-1), shape), grid).transpose(1, 2)
        kp, vsp = pooled.chunk(2, dim=-1)
        qh = split_heads(q, h)
        m = self.detector(x)

        spatial = merge_heads(self.spatial(qh, split_heads(kp, h), split_heads(vsp, h)))
        channel = merge_heads(self.channel(qh, split_heads(k, h), split_heads(v_c, h)))
        topo = merge_heads(self.topology(qh, from_tokens(k, shape), from_tokens(v_t, shape), m, grid))

        data = torch.cat([self.proj_spatial(spatial), self.proj_channel(channel)], dim=-1)
        sigma, w_t = self.gate(tn)
        fused = (1.0 - w_t) * data + w_t * self.proj_topology(topo)
        y = x + self.gamma * from_tokens(fused, shape)
        internals = TupaInternals(critical=m, sigma=from_tokens(sigma, shape), w_topology=from_tokens(w_t, shape))
        return self.refine(y), internals


__all__ = ["TUPABlock", "TupaInternals", "UncertaintyGate"]
