"""The compute floor: the least time the network's arithmetic can take on this device.

FLOPs per window come from :func:`tunepp_deploy.model.summary.summarize_network` (convolutions and
matrix products, counted by ``torch.utils.flop_counter``), split at the first dropout site into the
trunk (run once per window) and the head (run once per sample). A run of ``S`` samples over ``N``
windows needs at least ``N * (trunk + S * head)`` FLOPs with trunk reuse and
``N * S * (trunk + head)`` without; divided by the device's peak rate that is the floor, and
``measured / floor`` says how far the whole pipeline is from pure arithmetic.

The peak is **measured in the same run**, not read from a data sheet: a large matrix product
(``torch.mm``) timed after a warm-up. On a CPU that is the BLAS rate with the threads this process
has — a measured CPU peak, not the vendor's — and on a loaded machine it moves with the load just
as the model timings do, which keeps the ratio meaningful. On CUDA the rate is measured in the
precision's compute type (fp32 with TF32 off, fp16 for fp16; int8 engines are compared against the
fp16 rate, which overstates their floor by up to the int8/fp16 throughput ratio).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from tunepp_deploy.model.network import TUNEPP
from tunepp_deploy.model.summary import summarize_network

from .probes import synchronize


@dataclass(frozen=True)
class WindowFlops:
    """GFLOPs of one window: trunk (before the first dropout site) and head (per sample)."""

    trunk_gflops: float
    head_gflops: float

    @property
    def single_gflops(self) -> float:
        return self.trunk_gflops + self.head_gflops

    @property
    def trunk_share(self) -> float:
        return self.trunk_gflops / self.single_gflops if self.single_gflops else 0.0

    def run_gflops(self, windows: int, samples: int, trunk_reuse: bool = True) -> float:
        """GFLOPs of ``samples`` MC samples over ``windows`` windows."""
        if trunk_reuse:
            return windows * (self.trunk_gflops + samples * self.head_gflops)
        return windows * samples * self.single_gflops

    def counted_gflops(self, trunk_windows: int, head_rows: int) -> float:
        """GFLOPs of what a run did: the trunk on ``trunk_windows`` windows, the head on ``head_rows`` rows."""
        return trunk_windows * self.trunk_gflops + head_rows * self.head_gflops

    def ideal_speedup(self, samples: int) -> float:
        """What trunk reuse can save at most: FLOPs without reuse over FLOPs with it."""
        return self.run_gflops(1, samples, False) / self.run_gflops(1, samples, True)


def window_flops(net: TUNEPP, window: tuple[int, int, int], in_channels: int) -> WindowFlops:
    """Trunk/head GFLOPs of ``net`` for one window (shape-only count on the meta device)."""
    s = summarize_network(net, window, in_channels)
    return WindowFlops(s.trunk_gflops, s.head_gflops)


def measure_matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                          repeats: int = 5) -> float:
    """Measured GFLOP/s of an ``n x n`` matrix product (median of ``repeats`` after a warm-up)."""
    n = n or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.mm(a, b)
        synchronize(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            times.append(time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2.0 * n**3 / statistics.median(times) / 1e9


def peak_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The matmul type whose rate bounds ``precision`` on ``device`` (module docstring)."""
    if device.type == "cuda" and precision in ("fp16", "int8"):
        return torch.float16
    return torch.float32


__all__ = ["WindowFlops", "measure_matmul_gflops", "peak_dtype", "window_flops"]
