"""PyTorch backend: the network itself, trunk once per window batch, head on all sample rows.

On CUDA it runs under autocast (bf16 where supported, else fp16) unless ``amp=False``, and can
replay CUDA graphs (``cuda_graphs=True``): the sliding window calls the network with the same few
shapes over and over, and at small windows the launch overhead of a transformer's many small
kernels dominates; a captured graph per ``(B, R)`` shape removes it. CPU runs fp32 eager.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tunepp_deploy.export.metadata import ModelMeta
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.model.network import TUNEPP, repeat_for_samples


class _CapturedCall:
    """One CUDA graph for one input shape, with static input/output buffers."""

    def __init__(self, fn, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> None:
        self.x = x.clone()
        self.masks = [m.clone() for m in masks]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside capture (allocator, cuDNN autotuning)
                fn(self.x, self.masks)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(self.x, self.masks)

    def __call__(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x)
        for dst, src in zip(self.masks, masks, strict=True):
            dst.copy_(src)
        self.graph.replay()
        return self.out[0].clone(), self.out[1].clone()


class TorchRunner(Runner):
    """Runs a :class:`TUNEPP` module. ``amp`` and ``cuda_graphs`` only act on CUDA devices."""

    name = "torch"

    def __init__(
        self, net: TUNEPP, meta: ModelMeta, device: torch.device, amp: bool = True, cuda_graphs: bool = False
    ) -> None:
        super().__init__(meta, device)
        self.net = net.to(device).eval()
        cuda = device.type == "cuda"
        self.amp = amp and cuda
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.cuda_graphs = cuda_graphs and cuda
        self._graphs: dict[tuple[int, int], _CapturedCall] = {}

    def describe(self) -> str:
        prec = f"AMP {str(self.amp_dtype).removeprefix('torch.')}" if self.amp else "fp32"
        return f"torch on {self.device} ({prec}{', CUDA graphs' if self.cuda_graphs else ''})"

    def _forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            feats = self.net.trunk(x)
            if masks:
                feats = repeat_for_samples(feats, masks[0].shape[0] // x.shape[0])
            return self.net.head(*feats, *masks)

    @property
    def splits(self) -> bool:
        """Trunk and head can be called apart (so the MC engine can cache the trunk across sample
        chunks); not with CUDA graphs, which capture the whole call."""
        return not self.cuda_graphs

    def trunk_bytes(self, windows: int) -> int:
        """From the network's declared trunk output shapes (AMP halves them; counted as fp32)."""
        return sum(math.prod(s) for s in self.net.trunk_output_shapes(tuple(self.meta.window), windows)) * 4

    @torch.inference_mode()
    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The deterministic trunk's outputs for windows ``x`` (what :meth:`head` takes)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return tuple(self.net.trunk(x.to(self.device, torch.float32)))

    @torch.inference_mode()
    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stochastic head on cached trunk outputs ``feats`` (B windows) for ``masks`` (S' x B rows)."""
        masks = [m.to(self.device, torch.float32) for m in masks]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            if masks:
                feats = repeat_for_samples(feats, masks[0].shape[0] // feats[0].shape[0])
            return self.net.head(*feats, *masks)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, torch.float32)
        masks = [m.to(self.device, torch.float32) for m in masks]
        if not self.cuda_graphs:
            return self._forward(x, masks)
        key = (int(x.shape[0]), int(masks[0].shape[0]) if masks else 0)
        if key not in self._graphs:
            self._graphs[key] = _CapturedCall(self._forward, x, masks)
        return self._graphs[key](x, masks)

    def close(self) -> None:
        self._graphs.clear()


__all__ = ["TorchRunner"]
