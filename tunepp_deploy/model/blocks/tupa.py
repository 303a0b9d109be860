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
so the topology branch always got at least half the weight; the shifted, scaled gate reaches above
and below one half, though since ``sigma >= 0`` it has the floor ``w_t > sigmoid(-a b)`` (1/3 at init).

**Two gates** (``gate=``, ``model.gate`` in the config):

* ``"learned"`` (default; the gate above, the weights of every checkpoint written before the option
  existed): no loss reaches ``sigma`` except through the task, so it is a free learned gate, not a
  *predicted uncertainty* as the seed describes.
* ``"supervised"`` (:class:`SupervisedGate`): ``z = MLP(LN(x))`` is the logit of the probability
  ``u = sigmoid(z)`` that the network's **final** prediction is wrong at this token, trained by
  :func:`tunepp_deploy.losses.gate.gate_loss` (target: ``1 - p_true`` of the detached final softmax,
  averaged over the token's cell); ``w_t = sigmoid(a (z - shift))`` with ``z`` detached, ``a = 1,
  shift = 0`` at init (so ``w_t = u``), spanning (0, 1) with no floor. The two detaches are the
  point: the task loss may choose *how much* to trust topology at a given uncertainty (``a``,
  ``shift``), not *what* the uncertainty is; and the error loss trains the error heads only (their
  input tokens are detached too), so it cannot reshape the segmentation features to make errors
  easy to predict. Why this design and not the log-variance head: docs/results/tupa_gate.md.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

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
    sigma: Tensor  # predicted uncertainty: learned gate softplus >= 0, supervised gate P(wrong) in (0, 1)
    w_topology: Tensor  # fusion weight of the topology branch in (0, 1)


#: ``model.gate``: which gate every TUPA block fuses with (module docstring).
GateMode = Literal["learned", "supervised"]
GATE_MODES: tuple[str, ...] = ("learned", "supervised")


class UncertaintyGate(nn.Module):
    """``sigma = softplus(MLP(t))`` and ``w_t = sigmoid(a (sigma - b))`` per token (see module doc).

    Range: ``w_t`` lies in ``(sigmoid(-a b), 1)`` because ``sigma >= 0``; at init ``a = 1`` and
    ``b = ln 2`` so the floor is ``sigmoid(-ln 2) = 1/3`` (:meth:`floor`).
    """

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

    def floor(self) -> float:
        """The infimum of ``w_t`` over all inputs, ``sigmoid(-a b)`` (at ``sigma = 0``)."""
        with torch.no_grad():
            return float(torch.sigmoid(-F.softplus(self.a_raw) * self.b))


class SupervisedGate(nn.Module):
    """A gate fed by a *supervised* predicted uncertainty (module docstring, ``gate="supervised"``).

    ``z = error_head(t.detach())`` (an MLP) is the logit of ``u``, the predicted probability that the
    final prediction is wrong at the token; ``w_t = sigmoid(a (z.detach() - shift))``,
    ``a = softplus(slope_raw) > 0``. Because ``w_t`` is strictly increasing in ``u`` it ranks tokens
    exactly as the uncertainty does, and it spans (0, 1) (``z`` is unbounded). ``a = 1, shift = 0`` at
    init: ``w_t = u``; the head's last bias starts at 0, ``u = 1/2``. The parameter names differ from
    :class:`UncertaintyGate`'s on purpose: a supervised block's weights cannot load silently into a
    learned block (same shapes, another meaning) or back.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 4)
        self.error_head = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.error_head[-1].bias)
        self.slope_raw = nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) = 1.000
        self.shift = nn.Parameter(torch.tensor(0.0))

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[B, N, C] -> (u, w_t, z)``, each ``[B, N, 1]``; ``z`` is what ``gate_loss`` trains."""
        z = self.error_head(tokens.detach())
        w_t = torch.sigmoid(F.softplus(self.slope_raw) * (z.detach() - self.shift))
        return torch.sigmoid(z), w_t, z


class TUPABlock(nn.Module):
    """One TUPA block on a ``[B, C, D, H, W]`` feature map; output has the same shape.

    Args:
        channels: C; must be divisible by ``heads``.
        heads: attention heads h (d = C / h per head).
        proj_tokens: P, the most key/value cells of the spatial and topology branches.
        topo_lambda: initial per-head strength of the critical-point key bias.
        layer_scale: initial layer-scale gamma on the attention residual.
        gate: ``"learned"`` (:class:`UncertaintyGate`) or ``"supervised"`` (:class:`SupervisedGate`).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        proj_tokens: int,
        topo_lambda: float = 1.0,
        layer_scale: float = 0.1,
        gate: GateMode = "learned",
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        if gate not in GATE_MODES:
            raise ValueError(f"gate must be one of {GATE_MODES}, got {gate!r}")
        self.gate_mode = gate
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
        # Same attribute name for both, so a learned block's state-dict keys are those of old checkpoints.
        self.gate: UncertaintyGate | SupervisedGate = (
            SupervisedGate(channels) if gate == "supervised" else UncertaintyGate(channels)
        )
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1, 1), float(layer_scale)))
        self.refine = ResConvBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)[0]

    def forward_with_internals(self, x: Tensor) -> tuple[Tensor, TupaInternals]:
        """The output and this block's per-voxel maps (:class:`TupaInternals`)."""
        out, internals, _ = self._run(x)
        return out, internals

    def forward_with_error_logit(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The output and the supervised gate's error logit ``z`` as ``[B, 1, d, h, w]`` (None for the
        learned gate, which has nothing to supervise)."""
        out, _, z = self._run(x)
        return out, z

    def _run(self, x: Tensor) -> tuple[Tensor, TupaInternals, Tensor | None]:
        shape = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
        grid = pool_grid(shape, self.proj_tokens)
        h = self.heads
        tn = self.norm(to_tokens(x))
        qkv = self.qkv(tn)
        c = qkv.shape[-1] // 5
        # Slices, not chunk(): OpenVINO runs an ONNX Split of the last axis as its reference kernel (9.7 ms
        # per 25-row phantom MC call, docs/openvino.md); K and V_s are adjacent, so they pool in one call
        # ([B, 2C, P] -> two [B, P, C]) without a concatenation.
        q, k, v_c, v_t = (qkv[..., i * c:(i + 1) * c] for i in (0, 1, 3, 4))  # [..., 2c:3c] is V_s
        pooled = pool_cells(from_tokens(qkv[..., c:3 * c], shape), grid).transpose(1, 2)
        kp, vsp = pooled.chunk(2, dim=-1)
        qh = split_heads(q, h)
        m = self.detector(x)

        spatial = merge_heads(self.spatial(qh, split_heads(kp, h), split_heads(vsp, h)))
        channel = merge_heads(self.channel(qh, split_heads(k, h), split_heads(v_c, h)))
        topo = merge_heads(self.topology(qh, from_tokens(k, shape), from_tokens(v_t, shape), m, grid))

        data = torch.cat([self.proj_spatial(spatial), self.proj_channel(channel)], dim=-1)
        z: Tensor | None = None
        if isinstance(self.gate, SupervisedGate):
            sigma, w_t, z = self.gate(tn)
        else:
            sigma, w_t = self.gate(tn)
        fused = (1.0 - w_t) * data + w_t * self.proj_topology(topo)
        y = x + self.gamma * from_tokens(fused, shape)
        internals = TupaInternals(critical=m, sigma=from_tokens(sigma, shape), w_topology=from_tokens(w_t, shape))
        return self.refine(y), internals, None if z is None else from_tokens(z, shape)


__all__ = ["GATE_MODES", "GateMode", "SupervisedGate", "TUPABlock", "TupaInternals", "UncertaintyGate"]
