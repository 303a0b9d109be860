r"""The SegWithU uncertainty head (formulas from the public code, see uncertainty-methods.md).

From the backbone's logits ``z`` (C classes) and three tapped features:

1. **Fusion**: each tap -> 1x1 conv to ``width`` (32) channels -> trilinear up-sampling to full
   size; concatenate (3 * width) -> two [3^3 conv, InstanceNorm, GELU] -> ``F`` (width channels).
2. **Rank-1 probes**: ``v = P F`` (1x1 conv width -> R, no bias), ``sigma_r = softplus(alpha_r) + 1e-6``;
   a code ``z_k in {-1, +1}^R`` perturbs the logits by ``delta(z_k) = W(sigma * z_k * v)`` (1x1 conv
   R -> C, no bias). Codes: K = R, ``P_kr = sign(cos(pi k (r + 1/2) / R))`` (row 0 is all ones).
3. **Epistemic** ``U_epi = sum_c Var_k softmax(z + delta(z_k))_c`` (population variance over the K
   codes); **residual energy** ``R = mean_c delta_c(1)^2``; backbone entropy ``H`` and margin
   ``m = p_(1) - p_(2)``; ambiguity weight ``w = exp(-4 m)`` (m detached); **aleatoric**
   ``U_ale = softplus(1x1 conv F -> 1)``.
4. **Calibration map** ``U_cal = softplus(1x1 conv [log1p(U_epi + R), log1p(U_ale), m])`` and the
   per-voxel temperature ``T = max(1, sqrt(1 + U_cal)) >= 1``: tempered logits ``z / T`` have the
   same argmax as ``z`` (a positive per-voxel scale cannot reorder classes), so Dice never changes.
5. **Ranking map** ``U_rnk = (1 + 0.1 tanh a) A + b + softplus(c) w`` with the anchor
   ``A = log1p(U_epi) + 0.5 log1p(R) + 0.25 log1p(U_cal) + 0.25 H / max(1, log C) + w`` and scalars
   ``a = 1, b = 0, c = 0`` at start.

Everything is deterministic (the K codes are fixed), so head + backbone is one single-pass graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunepp_deploy.model.blocks.conv3d import Conv3d

DEFAULT_WIDTH = 32
DEFAULT_RANK = 8
SIGMA_FLOOR = 1e-6


def probe_codes(rank: int) -> Tensor:
    """``[K=R, R]`` fixed +-1 codes ``P_kr = sign(cos(pi k (r + 1/2) / R))`` (0 counts as +1)."""
    k = torch.arange(rank, dtype=torch.float64)[:, None]
    r = torch.arange(rank, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * k * (r + 0.5) / rank)
    return torch.where(c >= 0, 1.0, -1.0).float()


class SegWithUOutput(NamedTuple):
    """Per-voxel head outputs (``[B, 1, ...]`` unless noted)."""

    tempered_logits: Tensor  # [B, C, ...] = logits / temperature
    temperature: Tensor  # >= 1
    u_cal: Tensor  # calibration map
    u_rnk: Tensor  # ranking map
    u_epi: Tensor
    residual: Tensor
    anchor: Tensor
    ambiguity: Tensor  # w = exp(-4 m)


def _fuse_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(Conv3d(in_ch, out_ch, 3, padding=1), nn.InstanceNorm3d(out_ch, affine=True), nn.GELU())


class SegWithUHead(nn.Module):
    """The head (module docstring). ``forward(logits, taps) -> SegWithUOutput``."""

    def __init__(
        self, tap_channels: Sequence[int], num_classes: int, width: int = DEFAULT_WIDTH, rank: int = DEFAULT_RANK
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.rank = rank
        self.proj = nn.ModuleList(nn.Conv3d(c, width, 1) for c in tap_channels)
        self.fuse = nn.Sequential(_fuse_block(width * len(tap_channels), width), _fuse_block(width, width))
        self.probe = nn.Conv3d(width, rank, 1, bias=False)  # P
        self.alpha = nn.Parameter(torch.zeros(rank))
        self.lift = nn.Conv3d(rank, num_classes, 1, bias=False)  # W
        self.aleatoric = nn.Conv3d(width, 1, 1)
        self.cal = nn.Conv3d(3, 1, 1)
        self.rank_a = nn.Parameter(torch.tensor(1.0))
        self.rank_b = nn.Parameter(torch.tensor(0.0))
        self.rank_c = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("codes", probe_codes(rank), persistent=False)

    def features(self, taps: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        ups = [F.interpolate(p(t), size=tuple(size), mode="trilinear", align_corners=False)
               for p, t in zip(self.proj, taps, strict=True)]
        return self.fuse(torch.cat(ups, 1))

    def forward(self, logits: Tensor, taps: Sequence[Tensor]) -> SegWithUOutput:
        logits = logits.float()
        feat = self.features(taps, logits.shape[2:])
        sigma = F.softplus(self.alpha) + SIGMA_FLOOR
        u = self.probe(feat) * sigma[None, :, None, None, None]  # sigma * v, [B, R, ...]
        # delta(z_k) = W(z_k * u) for all K codes at once: [K, B, C, ...]
        deltas = torch.stack([self.lift(u * z[None, :, None, None, None]) for z in self.codes])
        probs_k = torch.softmax(logits[None] + deltas, dim=2)
        u_epi = probs_k.var(dim=0, unbiased=False).sum(1, keepdim=True)
        residual = deltas[0].square().mean(1, keepdim=True)  # code 0 is all ones: delta(1)
        p = torch.softmax(logits, 1)
        top2 = p.topk(2, dim=1).values
        margin = top2[:, :1] - top2[:, 1:2]
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1, keepdim=True)
        w = torch.exp(-4.0 * margin.detach())
        u_ale = F.softplus(self.aleatoric(feat))
        u_cal = F.softplus(self.cal(torch.cat([torch.log1p(u_epi + residual), torch.log1p(u_ale), margin], 1)))
        temperature = torch.sqrt(1.0 + u_cal).clamp_min(1.0)
        anchor = (torch.log1p(u_epi) + 0.5 * torch.log1p(residual) + 0.25 * torch.log1p(u_cal)
                  + 0.25 * ent / max(1.0, math.log(self.num_classes)) + w)
        u_rnk = (1.0 + 0.1 * torch.tanh(self.rank_a)) * anchor + self.rank_b + F.softplus(self.rank_c) * w
        return SegWithUOutput(logits / temperature, temperature, u_cal, u_rnk, u_epi, residual, anchor, w)


__all__ = ["DEFAULT_RANK", "DEFAULT_WIDTH", "SegWithUHead", "SegWithUOutput", "probe_codes"]
