"""Convolutional building blocks: normalisation, residual conv block, down/up-sampling.

There is deliberately **no BatchNorm** in this package. The public TUNE++ code ran "MC dropout" by
calling ``model.train()``, which only switched BatchNorm to batch statistics (and corrupted its
running statistics): its 25 samples were bit-identical. With GroupNorm everywhere, ``train()`` and
``eval()`` differ only in the explicit :class:`~tunepp_deploy.model.blocks.dropout.MaskedDropout`
sites, and a single window gives the same features whatever else is in the batch.
"""

from __future__ import annotations

from torch import Tensor, nn

from tunepp_deploy.model.blocks.conv3d import Conv3d

Int3 = tuple[int, int, int]


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``.

    Batch-size independent (3D segmentation trains with batch 2), deterministic. Exported as
    per-axis ``ReduceMean`` statistics (:func:`tunepp_deploy.export.onnx_export.group_norm_blocked`),
    not ``InstanceNormalization``, whose fp32 CPU kernel drifts on flat or clipped inputs.
    """
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResConvBlock(nn.Module):
    """``act(x_proj + GN(conv3(act(GN(conv3(x))))))``: two 3x3x3 convolutions with a residual path.

    The local refinement after each attention block (UNETR++ uses the same shape of block, with
    InstanceNorm/BatchNorm); attention mixes globally, this block restores local detail. A 1x1x1
    projection aligns channels on the residual path when ``in_ch != out_ch``.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = Conv3d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = group_norm(out_ch)
        self.conv2 = Conv3d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_ch)
        self.act = nn.GELU()
        self.skip: nn.Module = (
            nn.Identity()
            if in_ch == out_ch
            else nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, bias=False), group_norm(out_ch))
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.skip(x))


class Downsample(nn.Module):
    """Strided convolution (kernel = stride) + GroupNorm: halves (or ``stride``-divides) each axis.

    Kernel = stride means no overlap and no padding, so any input divisible by the stride maps to an
    exact integer grid — the property that lets the network accept any window divisible by its total
    stride.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: Int3 = (2, 2, 2)) -> None:
        super().__init__()
        self.conv = Conv3d(in_ch, out_ch, kernel_size=stride, stride=stride, bias=False)
        self.norm = group_norm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Upsample(nn.Module):
    """Transposed convolution (kernel = stride), the exact inverse grid of :class:`Downsample`.

    ``ConvTranspose`` with kernel = stride has no overlap, exports to ONNX/TensorRT without
    resize-mode ambiguities, and is what UNETR++'s decoder uses.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: Int3 = (2, 2, 2)) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=stride, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def to_tokens(x: Tensor) -> Tensor:
    """``[B, C, D, H, W] -> [B, N, C]`` with N = D*H*W (row-major over D, H, W).

    Channels-last permute, then the reshape: in torch the same view as ``flatten(2).transpose(1, 2)``;
    in the export a 5-D ``Transpose`` that OpenVINO's channel-blocked layout already is, instead of a
    reorder to planar plus a 3-D ``Transpose`` (~31 ms per token map at 48^3 x 64 channels; docs/openvino.md).
    """
    b, c = x.shape[:2]
    return x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)


def from_tokens(t: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`to_tokens` for a known spatial ``shape`` (reshape, then the permute back)."""
    return t.reshape(t.shape[0], *shape, t.shape[2]).permute(0, 4, 1, 2, 3)


__all__ = ["Downsample", "Int3", "ResConvBlock", "Upsample", "from_tokens", "group_norm", "to_tokens"]
