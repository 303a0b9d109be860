"""Variational V-Net (Milletari et al. 2016), small: residual stages of conv-IN-PReLU, strided
2x2x2 down-convolutions, concatenating skips.

A V-Net stage adds its input to the output of its ``n`` convolutions (residual learning per stage),
stage ``i`` having ``min(i + 1, 3)`` convolutions as in the paper's 1-2-3-3 layout. The paper's
5x5x5 kernels are a parameter (default 3: 5^3 kernels cost 4.6x the FLOPs on a 2-core CPU; the seed's
public code has no V-Net to follow). Up-sampling as in :mod:`.unet` (nearest + Bayesian 1x1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunepp_deploy.methods.blocks.bayes_conv import BayesConv3d, NoiseFeed
from tunepp_deploy.methods.variational.base import BayesianSegNet


class _Stage(nn.Module):
    """``x + PReLU(IN(conv(...PReLU(IN(conv(x))))))`` with ``n`` Bayesian convolutions."""

    def __init__(self, channels: int, n: int, kernel: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(BayesConv3d(channels, channels, kernel) for _ in range(n))
        self.norms = nn.ModuleList(nn.InstanceNorm3d(channels, affine=True) for _ in range(n))
        self.acts = nn.ModuleList(nn.PReLU(channels) for _ in range(n))

    def forward(self, x: Tensor, feed: NoiseFeed) -> Tensor:
        y = x
        for conv, norm, act in zip(self.convs, self.norms, self.acts, strict=True):
            y = act(norm(conv(y, feed.get(conv))))
        return x + y


class VariationalVNet(BayesianSegNet):
    """V-Net with Bayesian convolutions (module docstring)."""

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128), kernel: int = 3
    ) -> None:
        super().__init__()
        w = list(widths)
        self.num_classes = num_classes
        self.total_stride = 2 ** (len(w) - 1)
        self.stem = BayesConv3d(in_channels, w[0], kernel)
        self.enc = nn.ModuleList(_Stage(c, min(i + 1, 3), kernel) for i, c in enumerate(w))
        self.down = nn.ModuleList(BayesConv3d(w[i], w[i + 1], 2, stride=2, padding=0) for i in range(len(w) - 1))
        self.down_act = nn.ModuleList(nn.PReLU(w[i + 1]) for i in range(len(w) - 1))
        self.up = nn.ModuleList(BayesConv3d(w[i + 1], w[i], 1) for i in range(len(w) - 1))
        self.merge = nn.ModuleList(BayesConv3d(2 * w[i], w[i], 1) for i in range(len(w) - 1))
        self.dec = nn.ModuleList(_Stage(w[i], min(i + 1, 3), kernel) for i in range(len(w) - 1))
        self.out = BayesConv3d(w[0], num_classes, 1)

    def _forward(self, x: Tensor, feed: NoiseFeed) -> Tensor:
        e = self.stem(x, feed.get(self.stem))
        skips = []
        for i, stage in enumerate(self.enc):
            e = stage(e, feed)
            skips.append(e)
            if i < len(self.down):
                e = self.down_act[i](self.down[i](e, feed.get(self.down[i])))
        d = skips[-1]
        for i in range(len(self.dec) - 1, -1, -1):
            u = self.up[i](F.interpolate(d, scale_factor=2.0, mode="nearest"), feed.get(self.up[i]))
            d = self.dec[i](self.merge[i](torch.cat([u, skips[i]], 1), feed.get(self.merge[i])), feed)
        return self.out(d, feed.get(self.out))


__all__ = ["VariationalVNet"]
