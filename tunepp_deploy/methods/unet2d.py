"""A small 2D U-Net with explicit MC-dropout masks (for the saliency method on 2D images).

Same mask contract as TUNE++ (:mod:`tunepp_deploy.model.blocks.dropout`): channel masks ``[B, C]``
of 0 or ``1 / (1 - p)`` given as inputs, one per site in :meth:`UNet2d.dropout_sites` order, so
masks come from the seeded NumPy sampler (:func:`tunepp_deploy.infer.masks.sample_masks`) and
torch / ONNX Runtime see the same samples. Sites: ``"bottleneck"`` and ``"dec0"`` (the last
decoder block). Layout: [conv3-IN-ReLU] x 2 per level, max-pool down, transposed-conv up, concat.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tunepp_deploy.model.blocks.dropout import DropoutSite

SITES = ("bottleneck", "dec0")


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.InstanceNorm2d(out_ch, affine=True), nn.ReLU(),
        nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.InstanceNorm2d(out_ch, affine=True), nn.ReLU(),
    )


class UNet2d(nn.Module):
    """``forward(x [B, in, H, W], masks) -> logits [B, K, H, W]``; H, W divisible by ``total_stride``."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64), p: float = 0.2):
        super().__init__()
        w = list(widths)
        self.p = p
        self.num_classes = num_classes
        self.total_stride = 2 ** (len(w) - 1)
        self.enc = nn.ModuleList(_double_conv(a, b) for a, b in zip([in_channels, *w[:-1]], w, strict=True))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in range(len(w) - 1))
        self.dec = nn.ModuleList(_double_conv(2 * w[i], w[i]) for i in range(len(w) - 1))
        self.out = nn.Conv2d(w[0], num_classes, 1)
        self._sites = [DropoutSite("bottleneck", w[-1], p, "channel", (1, 1, 1)),
                       DropoutSite("dec0", w[0], p, "channel", (1, 1, 1))]

    @property
    def bottleneck(self) -> nn.Module:
        """The default Grad-CAM target (its output is the bottleneck feature, before dropout)."""
        return self.enc[-1]

    def dropout_sites(self) -> list[DropoutSite]:
        return list(self._sites)

    def _drop(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            if not self.training or self.p == 0.0:
                return x
            mask = (torch.rand(x.shape[:2], device=x.device) >= self.p).to(x.dtype) / (1.0 - self.p)
        return x * mask[:, :, None, None].to(x.dtype)

    def forward(self, x: Tensor, masks: Sequence[Tensor] | None = None) -> Tensor:
        m = list(masks) if masks is not None else [None, None]
        if len(m) != 2:
            raise ValueError(f"UNet2d takes 2 masks ({SITES}), got {len(m)}")
        skips = []
        h = x
        for i, block in enumerate(self.enc):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        h = self._drop(skips[-1], m[0])
        for i in range(len(self.dec) - 1, -1, -1):
            h = self.dec[i](torch.cat([self.up[i](h), skips[i]], 1))
        return self.out(self._drop(h, m[1]))


__all__ = ["SITES", "UNet2d"]
