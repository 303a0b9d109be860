"""Pre-activation residual block of Bayesian convolutions (the seed's U-Net block).

``y = x_proj + conv2(ReLU(IN(conv1(ReLU(IN(x))))))`` — normalisation and activation *before* each
convolution (He et al. 2016, "identity mappings"), so the residual path is a clean identity.
InstanceNorm (affine) because 3D segmentation trains with batch 1-2, where batch statistics are
noise. A 1x1x1 Bayesian projection aligns channels on the residual path when they differ.
"""

from __future__ import annotations

from torch import Tensor, nn

from tunepp_deploy.methods.blocks.bayes_conv import BayesConv3d, NoiseFeed


class PreActResBlock(nn.Module):
    """Two pre-activated 3x3x3 Bayesian convolutions with a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm1 = nn.InstanceNorm3d(in_ch, affine=True)
        self.conv1 = BayesConv3d(in_ch, out_ch, kernel_size)
        self.norm2 = nn.InstanceNorm3d(out_ch, affine=True)
        self.conv2 = BayesConv3d(out_ch, out_ch, kernel_size)
        self.proj = BayesConv3d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None
        self.act = nn.ReLU()

    def forward(self, x: Tensor, noise: NoiseFeed) -> Tensor:
        y = self.conv1(self.act(self.norm1(x)), noise.get(self.conv1))
        y = self.conv2(self.act(self.norm2(y)), noise.get(self.conv2))
        skip = x if self.proj is None else self.proj(x, noise.get(self.proj))
        return skip + y


__all__ = ["PreActResBlock"]
