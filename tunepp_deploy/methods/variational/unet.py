"""Variational U-Net: channels 16-32-64-128, pre-activation residual blocks with InstanceNorm.

Every convolution (stem, blocks, strided down-sampling, 1x1 up-projections, output) is a
:class:`~tunepp_deploy.methods.blocks.BayesConv3d`. Up-sampling is nearest-neighbour x2 followed by
a Bayesian 1x1 conv (no transposed conv: the Gaussian posterior is defined for ``conv3d`` kernels),
then concatenation with the encoder skip and a residual block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunepp_deploy.methods.blocks.bayes_conv import BayesConv3d, NoiseFeed
from tunepp_deploy.methods.blocks.preact import PreActResBlock
from tunepp_deploy.methods.variational.base import BayesianSegNet


class VariationalUNet(BayesianSegNet):
    """U-Net of Bayesian pre-activation residual blocks (module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        w = list(widths)
        self.num_classes = num_classes
        self.total_stride = 2 ** (len(w) - 1)
        self.stem = BayesConv3d(in_channels, w[0], 3)
        self.enc = nn.ModuleList(PreActResBlock(c, c) for c in w)
        self.down = nn.ModuleList(BayesConv3d(w[i], w[i + 1], 2, stride=2, padding=0) for i in range(len(w) - 1))
        self.up = nn.ModuleList(BayesConv3d(w[i + 1], w[i], 1) for i in range(len(w) - 1))
        self.dec = nn.ModuleList(PreActResBlock(2 * w[i], w[i]) for i in range(len(w) - 1))
        self.out_norm = nn.InstanceNorm3d(w[0], affine=True)
        self.out = BayesConv3d(w[0], num_classes, 1)

    def _forward(self, x: Tensor, feed: NoiseFeed) -> Tensor:
        e = self.stem(x, feed.get(self.stem))
        skips = []
        for i, block in enumerate(self.enc):
            e = block(e, feed)
            skips.append(e)
            if i < len(self.down):
                e = self.down[i](e, feed.get(self.down[i]))
        d = skips[-1]
        for i in range(len(self.dec) - 1, -1, -1):
            u = self.up[i](F.interpolate(d, scale_factor=2.0, mode="nearest"), feed.get(self.up[i]))
            d = self.dec[i](torch.cat([u, skips[i]], 1), feed)
        return self.out(F.relu(self.out_norm(d)), feed.get(self.out))


__all__ = ["VariationalUNet"]
