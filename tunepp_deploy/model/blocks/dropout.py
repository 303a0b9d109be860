"""Monte-Carlo dropout with the mask as an explicit input.

Why explicit masks (see ``/work/shared/reference/deployment-facts.md``): exported dropout does not
survive deployment — ONNX Runtime's optimiser deletes training-mode ``Dropout`` nodes (all "samples"
identical), TensorRT rejects training-mode ``Dropout`` and ignores random-op seeds, and
``nn.Dropout3d`` does not even export with the TorchScript exporter. So every dropout site takes its
mask as a tensor: the runtime draws masks from a seed, and torch, ONNX Runtime and TensorRT then give
the same samples element for element.

A mask holds 0 or ``1 / (1 - p)`` (inverted dropout: the expectation of the masked feature equals the
unmasked feature). A mask of all **ones** is the identity (= eval mode); a mask of all
``1 / (1 - p)`` is not.

Mask shapes, for a site with C channels at stride ``s`` and a batch of B windows of shape ``W``:

* ``mode="channel"``: ``[B, C]`` — one draw per channel per sample, like ``Dropout3d``;
* ``mode="element"``: ``[B, C, W_d / s_d, W_h / s_h, W_w / s_w]`` — one draw per feature value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from tunepp_deploy.model.blocks.conv import Int3

DropoutMode = Literal["channel", "element"]


@dataclass(frozen=True)
class DropoutSite:
    """One MC-dropout site of a network, as the inference engine and exporter need it.

    Attributes:
        name: the site's name in the network's vocabulary (``"bottleneck"``, ``"dec{i}"``, ``"head"``).
        channels: C of the feature map the mask multiplies.
        p: drop probability.
        mode: ``"channel"`` or ``"element"`` (module docstring).
        stride: the feature map's stride relative to the input window, per axis.
    """

    name: str
    channels: int
    p: float
    mode: DropoutMode
    stride: Int3

    def mask_shape(self, window: Int3, batch: int) -> tuple[int, ...]:
        """Shape of this site's mask for ``batch`` windows of spatial size ``window``."""
        if self.mode == "channel":
            return (batch, self.channels)
        return (batch, self.channels, *(w // s for w, s in zip(window, self.stride, strict=True)))

    def sample_mask(
        self,
        window: Int3,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """A random mask: each entry ``1 / (1 - p)`` with probability ``1 - p``, else 0."""
        keep = torch.rand(self.mask_shape(window, batch), generator=generator, device=device) >= self.p
        return keep.to(dtype) / (1.0 - self.p)

    def ones_mask(self, window: Int3, batch: int, device: torch.device | str | None = None) -> Tensor:
        """The identity mask (all ones): the deterministic, eval-mode output."""
        return torch.ones(self.mask_shape(window, batch), device=device)


class MaskedDropout(nn.Module):
    """Multiply a ``[B, C, D, H, W]`` feature map by a dropout mask.

    ``forward(x, mask)``: a given mask is always honoured (whatever train/eval mode); with
    ``mask=None`` a mask is drawn from the torch RNG in training mode, and the layer is the identity
    in eval mode. Shape checks use static shapes only (no data-dependent control flow), so a wrapper
    that passes masks exports to ONNX.
    """

    def __init__(self, name: str, channels: int, p: float, mode: DropoutMode) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.name = name
        self.channels = channels
        self.p = p
        self.mode: DropoutMode = mode

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, p={self.p}, mode={self.mode}"

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            if not self.training or self.p == 0.0:
                return x
            shape = (x.shape[0], x.shape[1]) if self.mode == "channel" else tuple(x.shape)
            keep = torch.rand(shape, device=x.device) >= self.p
            mask = keep.to(x.dtype) / (1.0 - self.p)
        if mask.dim() == 2:
            if self.mode != "channel":
                raise ValueError(f"site {self.name!r} is element-wise; got a channel mask {tuple(mask.shape)}")
            mask = mask[:, :, None, None, None]
        elif mask.dim() != 5:
            raise ValueError(f"site {self.name!r}: mask must be 2-D or 5-D, got {tuple(mask.shape)}")
        return x * mask.to(x.dtype)


__all__ = ["DropoutMode", "DropoutSite", "MaskedDropout"]
