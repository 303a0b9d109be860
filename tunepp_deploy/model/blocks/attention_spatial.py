"""Spatial branch of TUPA: every voxel attends to a fixed number of pooled key/value tokens.

Why pooled keys
---------------
Full spatial self-attention over a 3D window is quadratic: the public TUNE++ topology branch formed
an N x N matrix (N = 27,648 tokens at a 96^3 window's first stage: 2.85 GiB per matrix, ~304 of its
~328 GMAC). UNETR++'s EPA makes it linear by projecting keys/values from N to P tokens with a learned
``Linear(N, P)`` — which ties the weights to one input size (the user complaint the audit lists; the
public TUNE++ code even applied that projection on the wrong axis and crashed unless N == C).

Here keys and values are **average-pooled onto a grid of at most P cells** chosen from the actual
feature-map size (:func:`pool_grid`). The cost is O(N * P * C), there are no size-tied weights, and
the pooling is a reshape + mean over cells whose sizes come from static shapes, which exports to
ONNX (opset 17+, both exporters) and TensorRT with a dynamic batch axis. (Adaptive pooling with
non-divisible sizes does not export; the grid is always chosen to divide the feature map exactly.)
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tunepp_deploy.model.blocks.conv import Int3


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def pool_grid(shape: Int3, max_tokens: int) -> Int3:
    """The pooling grid ``(gd, gh, gw)`` for a feature map of spatial ``shape``.

    Each ``g`` divides its axis exactly; among such grids with ``gd*gh*gw <= max_tokens`` the one
    with the most cells wins, ties broken towards cubic cells (smallest max/min cell-edge ratio).
    A map with at most ``max_tokens`` voxels is not pooled at all (grid = shape).
    """
    if math.prod(shape) <= max_tokens:
        return tuple(shape)  # type: ignore[return-value]
    best: tuple[int, float] | None = None
    best_grid: Int3 = (1, 1, 1)
    for grid in itertools.product(*(_divisors(s) for s in shape)):
        cells = math.prod(grid)
        if cells > max_tokens:
            continue
        edges = [s // g for s, g in zip(shape, grid, strict=True)]
        key = (cells, -max(edges) / min(edges))
        if best is None or key > best:
            best, best_grid = key, grid  # type: ignore[assignment]
    return best_grid


def pool_cells(x: Tensor, grid: Int3) -> Tensor:
    """Average ``x`` ``[B, C, D, H, W]`` over the cells of ``grid``; returns ``[B, C, P]``.

    An ``avg_pool3d`` with kernel = stride = the cell: exported as one ``AveragePool``, which OpenVINO
    runs as a JIT pooling kernel in its blocked layout, whereas the reshape-to-8-D + ``ReduceMean`` this
    replaced ran as its reference reduction (2 x 10.7 ms per 25-row phantom MC call; docs/openvino.md).
    """
    b, c, d, h, w = x.shape
    gd, gh, gw = grid
    if (gd, gh, gw) == (d, h, w):
        return x.reshape(b, c, d * h * w)
    return F.avg_pool3d(x, kernel_size=(d // gd, h // gh, w // gw)).reshape(b, c, gd * gh * gw)


def split_heads(t: Tensor, heads: int) -> Tensor:
    """``[B, N, C] -> [B, heads, N, C // heads]``."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(t: Tensor) -> Tensor:
    """``[B, heads, N, d] -> [B, N, heads * d]``."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def pooled_attention(q: Tensor, kp: Tensor, vp: Tensor, key_bias: Tensor | None = None) -> Tensor:
    """``softmax(q kp^T / sqrt(d) + key_bias) vp`` with q ``[B,h,N,d]``, kp/vp ``[B,h,P,d]``.

    ``key_bias`` broadcasts to ``[B, h, N, P]`` and must be constant along N (one value per key):
    a bias constant along a softmax *row* would cancel (the public TUNE++ topology prior's flaw).
    """
    logits = torch.matmul(q, kp.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if key_bias is not None:
        logits = logits + key_bias
    return torch.matmul(logits.softmax(dim=-1), vp)


class SpatialAttention(nn.Module):
    """EPA-style spatial attention with size-agnostic pooled keys/values (see module docstring).

    ``forward(q, kp, vp)``: q ``[B, h, N, d]``, pooled keys/values ``[B, h, P, d]`` (pooled once by
    the TUPA block, shared with the topology branch) -> ``[B, h, N, d]``.
    """

    def forward(self, q: Tensor, kp: Tensor, vp: Tensor) -> Tensor:
        return pooled_attention(q, kp, vp)


__all__ = [
    "SpatialAttention",
    "merge_heads",
    "pool_cells",
    "pool_grid",
    "pooled_attention",
    "split_heads",
]
