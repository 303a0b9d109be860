"""PyTorch backend: the network itself, trunk once per window batch, head on all sample rows.

On CUDA it runs under autocast (bf16 where supported, else fp16) unless ``amp=False``, and can
replay CUDA graphs (``cuda_graphs=True``): the sliding window calls the network with the same few
shapes over and over, and at small windows the launch overhead of a transformer's many small
kernels dominates; a captured graph per call shape removes it. The trunk and the head are captured
as **separate** graphs (one per window count, one per window count x rows), so the MC engine keeps
its trunk / head split with graphs on: the trunk still runs once per window batch, and its outputs
can be cached across sample chunks as on the CPU.

``compile=True`` runs the trunk and the head through ``torch.compile`` (inductor, ``dynamic=False``):
the engine's calls have a handful of fixed shapes (``B`` windows for the trunk, ``B x S'`` rows for
the head), so each shape compiles once and is then reused; on CUDA it composes with AMP and with
CUDA graphs (the graphs capture the compiled kernels). It works on CPU too (inductor's C++ backend),
which is where its correctness is tested. ``compile_backend="aot_eager"`` traces the same graphs
without inductor's code generation (inductor's cold C++ build of the trunk takes minutes on a 2-core
CPU; the CI test uses it for the whole runner and inductor for the head). CPU otherwise runs fp32
eager.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tunepp_deploy.export.metadata import ModelMeta
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.model.network import TUNEPP, repeat_for_samples

Tensors = tuple[torch.Tensor, ...]


class _CapturedCall:
    """One CUDA graph for one call shape: static input buffers, ``fn`` captured on them.

    ``pool`` is shared by all graphs of one runner, so their intermediates reuse one memory pool
    instead of each graph holding its own (the 4 GB budget counts). That is safe because the
    replays are sequential on one stream and every replay's outputs are cloned before the next one
    (a later graph may place its outputs where an earlier graph keeps intermediates).
    """

    def __init__(self, fn: Callable[..., Tensors], inputs: Sequence[torch.Tensor], pool: tuple[int, int]) -> None:
        self.inputs = [t.clone() for t in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside capture (allocator, cuDNN autotuning, inductor compile)
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = tuple(fn(*self.inputs))

    def __call__(self, inputs: Sequence[torch.Tensor]) -> Tensors:
        for dst, src in zip(self.inputs, inputs, strict=True):
            dst.copy_(src)
        self.graph.replay()
        return tuple(o.clone() for o in self.out)


class TorchRunner(Runner):
    """Runs a :class:`TUNEPP` module. ``amp`` and ``cuda_graphs`` only act on CUDA devices; ``compile``
    acts on any (module docstring)."""

    name = "torch"

    def __init__(
        self, net: TUNEPP, meta: ModelMeta, device: torch.device, amp: bool = True, cuda_graphs: bool = False,
        compile: bool = False, compile_backend: str = "inductor",
    ) -> None:
        super().__init__(meta, device)
        self.net = net.to(device).eval()
        cuda = device.type == "cuda"
        self.amp = amp and cuda
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.cuda_graphs = cuda_graphs and cuda
        self.compiled = bool(compile)
        self._graphs: dict[tuple, _CapturedCall] = {}
        self._pool: tuple[int, int] | None = None
        self._trunk_fn: Callable[..., Tensors] = self._trunk_eager
        self._head_fn: Callable[..., Tensors] = self._head_eager
        if self.compiled:
            self._trunk_fn = torch.compile(self._trunk_eager, dynamic=False, backend=compile_backend)
            self._head_fn = torch.compile(self._head_eager, dynamic=False, backend=compile_backend)

    def describe(self) -> str:
        prec = f"AMP {str(self.amp_dtype).removeprefix('torch.')}" if self.amp else "fp32"
        extras = (", torch.compile" if self.compiled else "") + (", CUDA graphs" if self.cuda_graphs else "")
        return f"torch on {self.device} ({prec}{extras})"

    def _autocast(self) -> torch.autocast:
        # no weight-cast cache across calls: a graph capture must not keep casts made outside it
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp,
                              cache_enabled=False if self.cuda_graphs else None)

    def _trunk_eager(self, x: torch.Tensor) -> Tensors:
        with self._autocast():
            return tuple(self.net.trunk(x))

    def _head_eager(self, *tensors: torch.Tensor) -> Tensors:
        """``head(*feats, *masks)``: the trunk outputs repeated for the masks' rows, then the head
        (inside the compiled region, so inductor can fuse the repeat)."""
        n = len(tensors) - len(self.meta.sites)
        feats, masks = tensors[:n], tensors[n:]
        with self._autocast():
            if masks:
                feats = repeat_for_samples(feats, masks[0].shape[0] // feats[0].shape[0])
            return tuple(self.net.head(*feats, *masks))

    def _run(self, kind: str, fn: Callable[..., Tensors], inputs: Sequence[torch.Tensor]) -> Tensors:
        """``fn(*inputs)``, through a captured graph per input shape when ``cuda_graphs``."""
        if not self.cuda_graphs:
            return fn(*inputs)
        key = (kind, *(tuple(t.shape) for t in inputs))
        if key not in self._graphs:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            self._graphs[key] = _CapturedCall(fn, inputs, self._pool)
        return self._graphs[key](inputs)

    @property
    def splits(self) -> bool:
        """Trunk and head can be called apart (so the MC engine can cache the trunk across sample
        chunks) — with CUDA graphs too, which capture the two separately."""
        return True

    def trunk_bytes(self, windows: int) -> int:
        """From the network's declared trunk output shapes (AMP halves them; counted as fp32)."""
        return sum(math.prod(s) for s in self.net.trunk_output_shapes(tuple(self.meta.window), windows)) * 4

    @torch.inference_mode()
    def trunk(self, x: torch.Tensor) -> Tensors:
        """The deterministic trunk's outputs for windows ``x`` (what :meth:`head` takes)."""
        return self._run("trunk", self._trunk_fn, [x.to(self.device, torch.float32)])

    @torch.inference_mode()
    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stochastic head on cached trunk outputs ``feats`` (B windows) for ``masks`` (S' x B rows)."""
        masks = [m.to(self.device, torch.float32) for m in masks]
        logits, log_var = self._run("head", self._head_fn, [*feats, *masks])
        return logits, log_var

    @torch.inference_mode()
    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole graph: trunk once for the B windows, head on all rows (two graphs / two compiled calls)."""
        return self.head(self.trunk(x), masks)

    def close(self) -> None:
        self._graphs.clear()
        self._pool = None


__all__ = ["TorchRunner"]
