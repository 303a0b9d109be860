"""A second compute floor: the network's own 3D convolutions, timed one layer shape at a time.

Why: the matmul floor (:mod:`tunepp_deploy.bench.floor`) divides every FLOP by the rate of a large
``torch.mm``, but a 3x3x3 convolution from 8 to 8 channels cannot run at that rate on any CPU
runtime (it was measured at ~1/6 of it), so "14x above the floor" mixed real overhead with an
unreachable floor. Here every distinct convolution of one window's forward pass (shape, weight,
stride, groups) is timed with ``torch.nn.functional.conv3d`` / ``conv_transpose3d`` on this device
at batch 1 and at the engine's batch, and the faster time per window is kept; the sum of those
times is what one window's convolutions take when each layer runs at the best rate torch gets from
this machine for *that* layer. Both batches matter: on this 2-core Xeon, torch 2.13's 8->8 3x3x3
conv at 48x48x32 took 0.32 s at batch 1 but 0.024 s per window at batch 2 (another algorithm).
It is torch's rate, not a hardware bound: a runtime with better kernels (OpenVINO) can beat it.
``rate = conv FLOPs / summed time`` turns it into a floor for any run (``counted GFLOPs / rate``)
beside the matmul floor.

The layer list comes from forward hooks on a ``meta`` copy of the network (shapes only), and the
FLOPs from the layer shapes (2 per multiply-add), independently of ``torch.utils.flop_counter``
that the matmul floor uses — the tests compare the two counts.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunepp_deploy.model.network import TUNEPP

from .probes import synchronize


@dataclass(frozen=True)
class ConvLayer:
    """One convolution call: input shape (batch 1) and the layer's hyper-parameters."""

    transposed: bool
    in_shape: tuple[int, ...]  # (1, C_in, D, H, W)
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    out_shape: tuple[int, ...]

    @property
    def flops(self) -> float:
        """2 x multiply-adds, from the shapes alone."""
        k = math.prod(self.weight_shape[2:])
        if self.transposed:  # every input voxel scatters into C_out/groups x k outputs
            cin = self.in_shape[1]
            return 2.0 * math.prod(self.in_shape[2:]) * self.in_shape[0] * cin * self.weight_shape[1] * k
        cin_per_group = self.weight_shape[1]
        return 2.0 * math.prod(self.out_shape) * cin_per_group * k


def conv_layers(net: TUNEPP, window: tuple[int, int, int], in_channels: int) -> list[ConvLayer]:
    """Every convolution call of one deterministic forward of one window (in call order)."""
    import copy

    with torch.device("meta"):
        clone = copy.deepcopy(net).to("meta").eval()
    found: list[ConvLayer] = []

    def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        found.append(ConvLayer(
            isinstance(mod, nn.ConvTranspose3d), tuple(args[0].shape), tuple(mod.weight.shape), tuple(mod.stride),
            tuple(mod.padding), tuple(mod.dilation), int(mod.groups), tuple(out.shape)))

    handles = [m.register_forward_hook(hook) for m in clone.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    try:
        with torch.no_grad():
            clone(torch.empty(1, in_channels, *window, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return found


def time_layer(layer: ConvLayer, device: torch.device, repeats: int = 3, batch: int = 1) -> float:
    """Median seconds per window of one call of ``layer`` at ``batch`` windows (after one warm-up call)."""
    x = torch.randn((batch, *layer.in_shape[1:]), device=device)
    w = torch.randn(layer.weight_shape, device=device)
    if layer.transposed:
        def call() -> torch.Tensor:
            return torch.nn.functional.conv_transpose3d(x, w, None, layer.stride, layer.padding, 0, layer.groups,
                                                        layer.dilation)
    else:
        def call() -> torch.Tensor:
            return torch.nn.functional.conv3d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    with torch.no_grad():
        call()
        synchronize(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            synchronize(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


@dataclass(frozen=True)
class ConvFloor:
    """Measured convolution time of one window, and the effective rate it implies."""

    conv_gflops_per_window: float
    conv_seconds_per_window: float
    distinct_shapes: int
    layers: int
    per_shape: list[dict[str, Any]]

    @property
    def rate_gflops_per_s(self) -> float:
        return self.conv_gflops_per_window / self.conv_seconds_per_window

    def to_dict(self) -> dict[str, Any]:
        return {"conv_gflops_per_window": self.conv_gflops_per_window,
                "conv_seconds_per_window": self.conv_seconds_per_window,
                "rate_gflops_per_s": self.rate_gflops_per_s, "distinct_shapes": self.distinct_shapes,
                "layers": self.layers, "per_shape": self.per_shape,
                "how": "each distinct conv of one window timed with torch conv3d at batch 1 and the engine's batch "
                       "(median of 3 after a warm-up), the faster per window kept, summed with its multiplicity"}


def measure_conv_floor(net: TUNEPP, window: tuple[int, int, int], in_channels: int, device: torch.device,
                       repeats: int = 3, batches: tuple[int, ...] = (1, 4)) -> ConvFloor:
    """Time each distinct convolution of ``net`` at ``window`` at each batch, keep the fastest per window, and
    sum (module docstring)."""
    layers = conv_layers(net, window, in_channels)
    counts = Counter(layers)
    per_shape, total_s, total_f = [], 0.0, 0.0
    for layer, n in counts.items():
        per_batch = {b: time_layer(layer, device, repeats, b) for b in batches}
        best = min(per_batch, key=lambda b: per_batch[b])
        t = per_batch[best]
        total_s += n * t
        total_f += n * layer.flops
        per_shape.append({"in": list(layer.in_shape), "weight": list(layer.weight_shape), "stride": list(layer.stride),
                          "groups": layer.groups, "transposed": layer.transposed, "count": n, "seconds": t,
                          "batch": best, "seconds_per_window_by_batch": {str(b): v for b, v in per_batch.items()},
                          "gflops_per_s": layer.flops / t / 1e9})
    per_shape.sort(key=lambda d: -d["seconds"] * d["count"])
    return ConvFloor(total_f / 1e9, total_s, len(counts), len(layers), per_shape)


__all__ = ["ConvFloor", "ConvLayer", "conv_layers", "measure_conv_floor", "time_layer"]
