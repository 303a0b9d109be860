"""ONNX Runtime backend: the exported graph, CPU provider by default, CUDA provider when present.

The session keeps ORT's default graph optimisations: they cannot remove the stochasticity because
the graph has no ``Dropout`` node — masks are inputs (tested). On the CPU provider inputs and
outputs are shared with torch without copies (``Tensor.numpy()`` / ``torch.from_numpy``); on the
CUDA provider an IOBinding points ORT at the torch tensors' device memory (``data_ptr``), so the
MC engine's stitching stays on the GPU.

**Trunk / head pair** (``split=True``, CPU provider): the one exported graph is cut in two where the
tensors that depend on ``x`` alone meet the masks (:func:`split_graph`, ONNX's extractor; no
re-export, so any exported file can be split). Then :attr:`OrtRunner.splits` is true and the MC
engine runs the trunk graph once per window batch and the head graph in calls of any row count —
what large windows want (issue #14: one synapse 96^3 window, 25 head rows in 5 calls 2.25x over 25
full passes, 25 calls of 1 row 2.40x). On small windows the one graph is faster (the trunk's skip
tensors make a round trip between sessions), so the pair is opt-in; bench/results/head_calls.md
has the figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.export.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMeta
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.contract import check_io_names, expected_io
from tunepp_deploy.infer.runners.graph import one_line


def ort_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


def make_session(model: str | bytes, device: torch.device, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on ``device`` (CUDA provider first on a GPU), ``threads`` intra-op threads.

    Shared by every method's ONNX backend so provider choice and load errors (one line) are the same.
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    # ORT's idle pool threads spin after a run, on the cores the MC engine's numba kernels need next: the
    # noise softmax after ORT calls took 0.34 s of a phantom MC-25 with spinning, 0.18 s without (as after
    # OpenVINO's calls), no change in the network's own time (5 alternated rounds, 2 threads, AMD EPYC)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort_providers():
            raise TuneppError("--device cuda with --backend ort needs onnxruntime-gpu (CUDAExecutionProvider)")
        providers: list = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(model, opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception classes
        raise TuneppError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:200]}") from None


def check_session_io(session: ort.InferenceSession, meta: ModelMeta, where: str) -> None:
    """Refuse a graph that carries tunepp metadata but not the contract's inputs and outputs.

    Metadata can be copied onto any graph; without this check such a file opens fine and fails inside
    ONNX Runtime on the first window (``InvalidArgument``), after the case was loaded and planned. Names
    must match exactly, ranks where the graph declares them, element type float32.
    """
    got_in = {i.name: i for i in session.get_inputs()}
    got_out = {o.name: o for o in session.get_outputs()}
    want_in, want_out = check_io_names(where, meta, got_in, got_out)
    for kind, want, got in (("input", want_in, got_in), ("output", want_out, got_out)):
        for name, rank in want.items():
            arg = got[name]
            shape = arg.shape
            if arg.type != "tensor(float)":
                raise ModelMismatchError(f"{where}: graph {kind} {name!r} is {arg.type}, expected tensor(float)")
            if isinstance(shape, list | tuple) and len(shape) != rank:
                raise ModelMismatchError(f"{where}: graph {kind} {name!r} has rank {len(shape)}, expected {rank}")


def split_graph(model: onnx.ModelProto, x_name: str, mask_names: Sequence[str],
                outputs: Sequence[str]) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]]:
    """``model`` cut into a trunk graph (``x`` -> the cut tensors) and a head graph (cut tensors + masks
    -> ``outputs``); returns both and the cut tensors' names.

    The cut is found from the graph, not from names the exporter happened to give: a tensor belongs to
    the trunk if it depends on ``x`` and on no mask; the cut is every such tensor that a mask-dependent
    node reads (the trunk outputs before they are tiled, plus a few shape scalars of ``x``). Constants
    and initializers go wherever they are needed. A graph without masks cannot be split.
    """
    if not mask_names:
        raise TuneppError("a graph without dropout masks has no head to split off")
    deps: dict[str, frozenset[str]] = {i.name: frozenset({i.name}) for i in model.graph.input}
    for init in model.graph.initializer:
        deps[init.name] = frozenset()
    masks = frozenset(mask_names)
    cut: list[str] = []
    for node in model.graph.node:
        d: frozenset[str] = frozenset().union(*(deps.get(n, frozenset()) for n in node.input if n))
        for out in node.output:
            deps[out] = d
        if d & masks:
            cut += [n for n in node.input if n and deps.get(n) == frozenset({x_name}) and n not in cut]
    if not cut:
        raise TuneppError("the graph has no tensor between x and the masks to split at")
    ext = onnx.utils.Extractor(model)
    trunk = ext.extract_model([x_name], cut)
    head = ext.extract_model([*cut, *mask_names], list(outputs))
    for part in (trunk, head):  # the extractor keeps neither the opset imports' order nor the metadata
        part.ir_version = model.ir_version
    return trunk, head, cut


class OrtRunner(Runner):
    """Runs an ONNX model (path or serialized bytes) on ONNX Runtime.

    The graph's inputs and outputs are checked against ``meta`` when the session opens
    (:func:`check_session_io`); an ONNX Runtime error during a call becomes a one-line ``RuntimeError``,
    which the batch loop records as a failed case.
    """

    name = "ort"

    def __init__(self, model: str | bytes, meta: ModelMeta, device: torch.device, threads: int | None = None,
                 split: bool = False) -> None:
        super().__init__(meta, device)
        if split and device.type != "cpu":
            raise TuneppError("the ONNX Runtime trunk / head pair (split) runs on the CPU provider only")
        self.session = make_session(model, device, threads)
        check_session_io(self.session, meta, "the exported graph" if isinstance(model, bytes) else str(model))
        self.mask_names = meta.mask_names
        self._pair: tuple[ort.InferenceSession, ort.InferenceSession] | None = None
        self.cut: list[str] = []
        self._source, self._threads = model, threads
        if split:
            self.enable_split()

    def enable_split(self) -> bool:
        """Build the trunk / head session pair (CPU provider only; on CUDA the one graph stays: False)."""
        if self._pair is None and self.device.type == "cpu":
            model = self._source
            proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
            trunk, head, self.cut = split_graph(proto, INPUT_NAME, self.mask_names, OUTPUT_NAMES)
            self._pair = (make_session(trunk.SerializeToString(), self.device, self._threads),
                          make_session(head.SerializeToString(), self.device, self._threads))
        return self._pair is not None

    def describe(self) -> str:
        pair = ", trunk/head graph pair" if self._pair is not None else ""
        return f"ort on {self.device} ({self.session.get_providers()[0]}, fp32{pair})"

    @property
    def splits(self) -> bool:
        """True with the trunk / head pair (``split=True``): the engine runs the trunk once per window batch."""
        return self._pair is not None

    def _run_pair(self, which: int, names: Sequence[str], tensors: Sequence[torch.Tensor],
                  outputs: Sequence[str] | None) -> list[np.ndarray]:
        if self._pair is None:
            raise NotImplementedError("the ort runner runs its graph whole (open it with split=True)")
        feed = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, tensors, strict=True)}
        try:
            return self._pair[which].run(None if outputs is None else list(outputs), feed)
        except Exception as e:  # as in infer: a one-line case failure
            raise RuntimeError(f"ONNX Runtime: {one_line(e)}") from None

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The trunk graph's cut tensors for windows ``x`` (what :meth:`head` takes), as CPU tensors."""
        outs = self._run_pair(0, [INPUT_NAME], [x.to("cpu", torch.float32)], self.cut)
        return tuple(torch.from_numpy(o) for o in outs)

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The head graph on :meth:`trunk` outputs for ``masks`` (S' x B rows, sample-major)."""
        ms = [m.to("cpu", torch.float32) for m in masks]
        logits, log_var = self._run_pair(1, [*self.cut, *self.mask_names], [*feats, *ms], OUTPUT_NAMES)
        return torch.from_numpy(logits), torch.from_numpy(log_var)

    def close(self) -> None:
        self._pair = None

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":
            return self._infer_cuda(x, masks)
        feed = {INPUT_NAME: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        feed.update({n: m.detach().to("cpu", torch.float32).contiguous().numpy()
                     for n, m in zip(self.mask_names, masks, strict=True)})
        try:
            logits, log_var = self.session.run(list(OUTPUT_NAMES), feed)
        except Exception as e:  # ORT's exception classes derive from Exception only: make it a case failure
            raise RuntimeError(f"ONNX Runtime: {one_line(e)}") from None
        return torch.from_numpy(logits), torch.from_numpy(log_var)

    def _infer_cuda(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        dev_id = self.device.index or 0
        binding = self.session.io_binding()
        inputs = [x.to(self.device, torch.float32).contiguous()]
        inputs += [m.to(self.device, torch.float32).contiguous() for m in masks]
        for name, t in zip([INPUT_NAME, *self.mask_names], inputs, strict=True):
            binding.bind_input(name, "cuda", dev_id, np.float32, tuple(t.shape), t.data_ptr())
        rows, k = int(inputs[-1].shape[0]) if masks else int(x.shape[0]), self.meta.num_classes
        win = tuple(self.meta.window)
        outs = [torch.empty((rows, k, *win), device=self.device), torch.empty((rows, 1, *win), device=self.device)]
        for name, t in zip(OUTPUT_NAMES, outs, strict=True):
            binding.bind_output(name, "cuda", dev_id, np.float32, tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch must be ready
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:
            raise RuntimeError(f"ONNX Runtime: {one_line(e)}") from None
        return outs[0], outs[1]


__all__ = ["OrtRunner", "check_session_io", "expected_io", "make_session", "ort_providers", "split_graph"]
