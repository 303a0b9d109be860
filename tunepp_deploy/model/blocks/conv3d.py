"""``Conv3d`` that keeps one-window CPU inference on oneDNN.

PyTorch (2.13) picks a convolution backend per call. On a CPU, fp32, a batch of **one** goes to its
native im2col kernel (``slow_conv3d``) instead of oneDNN whenever ``N * C * D * H <= 20480`` and the
kernel is at most 3 wide — a rule tuned for 2-D images that misfires on 3-D volumes: the phantom
network's full-resolution 8 -> 8 3x3x3 convolution on a 48x48x32 window is 1 * 8 * 48 * 48 = 18,432,
and ran 33 ms on one window against 1.6 ms through oneDNN (20x; 2 threads, AMD EPYC Zen 5,
2026-12-04; docs/inference.md, "Batch-one convolutions"). Batch one is common at inference: a
volume's last window batch, a single-window scan, the naive MC loop, a one-row head call.

:class:`Conv3d` is ``nn.Conv3d`` (same parameters, same state dict) whose forward calls oneDNN
directly in exactly that case: eager, CPU, fp32, batch one, gradients off, a kernel wider than one
voxel, zero padding. Everything else — training, autocast, CUDA, tracing for ONNX or
``torch.compile`` — goes the stock way. Pointwise (1x1x1) convolutions stay native: measured faster
there (a matrix product).

torch's FLOP counter has no formula for the direct oneDNN op, so one is registered here (the stock
convolution's): ``FlopCounterMode`` counts a routed call as it counts torch's own (the bench's floors).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula


@register_flop_formula(torch.ops.aten.mkldnn_convolution)
def _onednn_conv_flops(x_shape: list[int], w_shape: list[int], *args: object, out_shape: list[int] | None = None,
                       **kwargs: object) -> int:
    """2 x MACs of the call, as torch counts ``aten.convolution`` (its ``conv_flop_count``)."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def takes_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`conv3d` routes this call to oneDNN (module docstring; zero padding is all it takes)."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False  # traced graphs keep the stock op (ONNX export, inductor)
    return (
        x.dim() == 5 and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
        and type(x.shape[0]) is int and x.shape[0] == 1 and not torch.is_grad_enabled()
        and any(k > 1 for k in weight.shape[2:])
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    )


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: tuple[int, ...] | int = 1,
           padding: tuple[int, ...] | int = 0, dilation: tuple[int, ...] | int = 1, groups: int = 1) -> Tensor:
    """``F.conv3d`` with the batch-one CPU case on oneDNN (module docstring); numeric padding only."""
    if takes_onednn(x, weight):
        return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, _three(padding),
                                                 _three(stride), _three(dilation), groups)
    return nn.functional.conv3d(x, weight, bias, stride, padding, dilation, groups)


def _three(v: tuple[int, ...] | int) -> list[int]:
    return [int(v)] * 3 if isinstance(v, int) else [int(i) for i in v]


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` with :func:`conv3d`'s batch-one CPU routing; a drop-in (same state dict)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)  # padding the functional form does not take
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


__all__ = ["Conv3d", "conv3d", "takes_onednn"]
