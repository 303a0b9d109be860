"""Variational FCN (Long et al. 2015, "FCN-8s" fusion), small, 3D.

A plain encoder (per stage: Bayesian 3^3 conv, InstanceNorm, ReLU; stride-2 Bayesian conv between
stages) without decoder blocks: 1x1 Bayesian score layers on the three coarsest stages produce
class scores that are up-sampled (trilinear) and summed coarse-to-fine, then up-sampled to the input
grid. Far fewer parameters than the U-Net; boundaries are coarser — the architecture's known trade.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from tunepp_deploy.methods.blocks.bayes_conv import BayesConv3d, NoiseFeed
from tunepp_deploy.methods.variational.base import BayesianSegNet


class VariationalFCN(BayesianSegNet):
    """FCN-8s-style fusion of three score maps (module docstring). Needs >= 3 stages."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        w = list(widths)
        if len(w) < 3:
            raise ValueError("FCN needs at least 3 stages")
        self.num_classes = num_classes
        self.total_stride = 2 ** (len(w) - 1)
        ins = [in_channels, *w[:-1]]
        self.convs = nn.ModuleList(BayesConv3d(ins[i], w[i], 3, stride=1 if i == 0 else 2,
                                               padding=1) for i in range(len(w)))
        self.norms = nn.ModuleList(nn.InstanceNorm3d(c, affine=True) for c in w)
        self.score = nn.ModuleList(BayesConv3d(c, num_classes, 1) for c in w[-3:])

    def _forward(self, x: Tensor, feed: NoiseFeed) -> Tensor:
        feats = []
        h = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.relu(norm(conv(h, feed.get(conv))))
            feats.append(h)
        s: Tensor | None = None
        for layer, f in zip(self.score, feats[-3:], strict=True):
            sc = layer(f, feed.get(layer))
            s = sc if s is None else sc + F.interpolate(s, size=sc.shape[2:], mode="trilinear", align_corners=False)
        assert s is not None
        return F.interpolate(s, size=x.shape[2:], mode="trilinear", align_corners=False)


__all__ = ["VariationalFCN"]
