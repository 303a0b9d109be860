"""OpenVINO backend: the ONNX file the ORT runner runs, on OpenVINO's CPU plugin (``--backend openvino``).

OpenVINO is an optional extra (``pip install 'tunepp-deploy[openvino]'``): it is imported only when
this backend is opened, and its absence is one line naming the extra (:func:`import_openvino`).

**Precision is pinned.** On a CPU with AVX512-BF16/AMX the plugin's default ``INFERENCE_PRECISION_HINT``
is bf16, which flipped 0.56% of the labels of a phantom case in an earlier measurement: a silent
change of the model. The runner therefore always passes the hint, ``f32`` unless bf16 is asked for
explicitly, and checks that the compiled model reports what was asked (:meth:`OpenVinoRunner.precision_hint`).
``int8`` is not a hint OpenVINO's CPU plugin knows: it means a Q/DQ-quantized ONNX graph, which the
plugin runs in int8 by itself; the runner accepts it only for a graph that has quantization nodes and
keeps the remaining float ops in f32.

**Static shapes per call.** The exported graph has a dynamic batch (``x`` and every mask row count).
OpenVINO runs dynamic shapes, but a static shape lets the CPU plugin pick its kernels and memory
layout once, so the runner reshapes a copy of the graph to each call's ``(windows, rows)`` and caches
the compiled model with its infer request. The MC engine's call plan (:func:`~tunepp_deploy.infer.mc.plan_calls`)
uses a handful of shapes per run (the full chunk, the last chunk, the last window batch), so the cache
stays small; it is bounded (:data:`MAX_COMPILED`) for callers that vary shapes freely.

**Trunk / head pair** (``split=True``). A one-graph call of fewer rows than a window's S samples reruns
the trunk, and at 96^3 the memory budget allows one row per call (``plan_calls``), so the one graph would
run S full passes: no trunk reuse at all. With ``split`` the runner cuts the ONNX graph where the masks
enter (:func:`~tunepp_deploy.infer.runners.ort_runner.split_graph`, as ONNX Runtime's pair), compiles
both parts per static shape, and the engine runs the trunk once per window batch and the head in small
calls (:func:`~tunepp_deploy.infer.runners.base.default_rows_per_call`). The maps do not change (tested).

The dropout masks are graph inputs, exactly as for ONNX Runtime (the graph has no ``Dropout`` or
``Random*`` node: the stochasticity is in the masks the engine draws from the seed), and the logit
noise is applied by the engine after the call, on ``log_var``. So every backend sees the same samples.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.export.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMeta
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.contract import check_io_names
from tunepp_deploy.infer.runners.graph import one_line

#: Precisions the runner accepts (the project's spelling, as ``tunepp bench --precision``); ``f32`` is an alias.
PRECISIONS = ("fp32", "bf16", "int8")
#: ``INFERENCE_PRECISION_HINT`` per precision: int8 comes from the graph's Q/DQ nodes, the rest stays f32.
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: Compiled (shape -> infer request) entries kept per runner; the MC plan needs at most three.
MAX_COMPILED = 8
#: Appended when a Q/DQ graph does not compile: OpenVINO 2026.4 fails the trained phantom's int8 graph on an AVX2-only
#: CPU (AMD EPYC without AVX-512/VNNI, 2026-12-04) with a post-ops check, while it compiles on AVX-512 VNNI.
INT8_COMPILE_HINT = (" (an int8 Q/DQ graph this CPU's plugin refuses, seen on AVX2-only CPUs: run it with --backend "
                     "ort or run the fp32 graph; docs/results/int8.md)")
#: The extra that installs OpenVINO, as the one-line error names it.
EXTRA_HINT = "pip install 'tunepp-deploy[openvino]' (openvino==2026.4.*)"


def import_openvino() -> ModuleType:
    """The ``openvino`` module, or a one-line :class:`TuneppError` naming the extra that installs it."""
    try:
        import openvino
    except ImportError as e:
        raise TuneppError(f"--backend openvino needs OpenVINO ({type(e).__name__}): {EXTRA_HINT}") from None
    return openvino


def openvino_version() -> str | None:
    """The installed OpenVINO version (``2026.4.1``), None when it is not installed. Never raises."""
    try:
        import openvino
    except Exception:
        return None
    return str(openvino.__version__).split("-")[0]


def ov_message(e: BaseException) -> str:
    """The human part of an OpenVINO exception, one line of at most 200 characters.

    OpenVINO's messages are stacks of C++ locations (``Exception from src/...cpp:105:``, ``Check '...'
    failed at ...``, ``While validating node ...``) with the sentence that says what is wrong last;
    :func:`~tunepp_deploy.infer.runners.graph.one_line` would keep only the first location.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '", "While validating "))]
    if said:
        return said[-1][:200]
    # no sentence (seen on a fresh CI machine: a stack of locations ending in a failed check): the last
    # check names the failing condition and the plugin source, which is more than the first location
    checks = [ln for ln in lines if ln.startswith("Check '")]
    return (checks[-1] if checks else one_line(e))[:200]


def normalise_precision(precision: str) -> str:
    """``fp32`` / ``f32`` -> ``fp32``, ``bf16``, ``int8``; anything else is a one-line error."""
    p = {"f32": "fp32"}.get(precision.lower(), precision.lower())
    if p not in PRECISIONS:
        raise TuneppError(f"unknown OpenVINO precision '{precision}' (use {', '.join(PRECISIONS)})")
    return p


def element_type_name(t: Any) -> str:
    """OpenVINO element type -> its short name (``f32``, ``bf16``); works on ``Type`` objects and strings."""
    name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


def check_model_io(model: Any, meta: ModelMeta, where: str) -> None:
    """Refuse an OpenVINO model (read from ONNX) that is not the tunepp graph contract.

    Same rules as ONNX Runtime's :func:`~tunepp_deploy.infer.runners.ort_runner.check_session_io`:
    exactly the inputs ``x`` + one mask per dropout site (a graph whose masks were folded away would
    run deterministically and give zero epistemic maps, silently), the outputs present, ranks and
    element type float32. One line, before the first window.
    """
    got_in = {p.get_any_name(): p for p in model.inputs}
    got_out = {name: p for p in model.outputs for name in p.get_names()}
    want_in, want_out = check_io_names(where, meta, got_in, got_out)
    for kind, want, got in (("input", want_in, got_in), ("output", want_out, got_out)):
        for name, rank in want.items():
            port = got[name]
            etype = element_type_name(port.get_element_type())
            if etype != "f32":
                raise ModelMismatchError(f"{where}: graph {kind} {name!r} is {etype}, expected f32")
            shape = port.get_partial_shape()
            if shape.rank.is_static and shape.rank.get_length() != rank:
                raise ModelMismatchError(f"{where}: graph {kind} {name!r} has rank {shape.rank.get_length()}, "
                                         f"expected {rank}")


def has_quantization(model: Any) -> bool:
    """Whether the read graph carries quantization (ONNX Q/DQ become ``FakeQuantize`` or low-precision
    ``Convert`` ops in OpenVINO): the only way OpenVINO's CPU plugin runs int8."""
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant" and element_type_name(op.get_output_element_type(0)) in ("i8", "u8"):
            return True
    return False


class OpenVinoRunner(Runner):
    """Runs the exported ONNX graph (a path or serialized bytes) on OpenVINO's CPU plugin.

    ``threads`` sets ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all cores); ``precision``
    is ``fp32`` (default, the hint pinned to f32), ``bf16`` or ``int8`` (module docstring). The graph's
    inputs and outputs are checked when it is read (:func:`check_model_io`); an OpenVINO error during
    a call becomes a one-line ``RuntimeError``, which the batch loop records as a failed case.
    """

    name = "openvino"

    def __init__(self, model: str | bytes, meta: ModelMeta, device: torch.device, threads: int | None = None,
                 precision: str = "fp32", split: bool = False) -> None:
        if device.type != "cpu":
            raise TuneppError(f"--backend openvino runs on the CPU, not {device} (use --device cpu)")
        if threads is not None and threads < 1:
            raise TuneppError(f"OpenVINO threads must be >= 1, got {threads}")
        super().__init__(meta, device)
        ov = import_openvino()
        self.precision = normalise_precision(precision)
        self.threads = threads
        self.where = "the exported graph" if isinstance(model, bytes) else str(model)
        self.core = ov.Core()
        if self.precision == "bf16":
            caps = list(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            if "BF16" not in caps:
                raise TuneppError(f"--precision bf16: this CPU has no bf16 support (OpenVINO capabilities {caps})")
        try:
            self.model = self.core.read_model(model)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line C++ messages
            raise TuneppError(f"OpenVINO cannot read {self.where}: {ov_message(e)}") from None
        check_model_io(self.model, meta, self.where)
        if self.precision == "int8" and not has_quantization(self.model):
            raise TuneppError(f"{self.where}: int8 needs a Q/DQ-quantized ONNX graph; this one has no quantization "
                              "nodes (run it as fp32, or bf16 explicitly)")
        if self.precision == "fp32" and has_quantization(self.model):
            # the plugin runs Q/DQ nodes in int8 whatever the hint: label the run int8, never "fp32"
            self.precision = "int8"
        self.mask_names = meta.mask_names
        self.version = openvino_version() or "?"
        self._compiled: OrderedDict[tuple[int, int], tuple[Any, Any]] = OrderedDict()
        self.cut: list[str] = []
        self._parts: tuple[Any, Any] | None = None  # (trunk, head) OpenVINO models when split
        self._part_compiled: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self._source = model
        if split:
            self._parts = self._split(model)

    def _split(self, model: str | bytes) -> tuple[Any, Any]:
        """The trunk and head OpenVINO models of the graph cut where the masks enter (module docstring)."""
        import onnx

        from tunepp_deploy.infer.runners.ort_runner import split_graph

        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
        trunk, head, self.cut = split_graph(proto, INPUT_NAME, self.mask_names, OUTPUT_NAMES)
        try:
            return (self.core.read_model(trunk.SerializeToString()), self.core.read_model(head.SerializeToString()))
        except Exception as e:
            raise TuneppError(f"OpenVINO cannot read the trunk / head parts of {self.where}: {ov_message(e)}") from None

    @property
    def splits(self) -> bool:
        """True with the trunk / head pair (``split=True``): the engine runs the trunk once per window batch."""
        return self._parts is not None

    def enable_split(self) -> bool:
        """Build the trunk / head pair now (module docstring); the one graph stays for :meth:`infer`."""
        if self._parts is None:
            self._parts = self._split(self._source)
        return True

    def config(self) -> dict[str, Any]:
        """The properties every compile passes: the precision hint always, the thread count when given."""
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        return cfg

    def compiled(self, windows: int, rows: int) -> Any:
        """The compiled model for ``windows`` windows x ``rows`` mask rows (compiled on first use, cached)."""
        return self._entry(windows, rows)[0]

    def _entry(self, windows: int, rows: int) -> tuple[Any, Any]:
        key = (windows, rows)
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        shapes = {INPUT_NAME: [windows, self.meta.in_channels, *self.meta.window], **self._mask_shapes(rows)}
        entry = self._compile(self.model, shapes, f"{windows} windows x {rows} rows")
        self._compiled[key] = entry
        while len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return entry

    def _mask_shapes(self, rows: int) -> dict[str, list[int]]:
        return {n: list(s.mask_shape(self.meta.window, rows)) for n, s in zip(self.mask_names, self.meta.sites,
                                                                             strict=True)}

    def _compile(self, model: Any, shapes: dict[str, list[int]], what: str) -> tuple[Any, Any]:
        """``model`` reshaped to ``shapes``, compiled with :meth:`config`, its precision checked; + a request."""
        graph = model.clone()
        try:
            graph.reshape(shapes)
            compiled = self.core.compile_model(graph, "CPU", self.config())
        except Exception as e:
            hint = INT8_COMPILE_HINT if self.precision == "int8" else ""  # first: a batch keeps 200 characters
            raise RuntimeError(f"OpenVINO: cannot compile the graph{hint} for {what}: {ov_message(e)}") from None
        got = element_type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if got != _HINTS[self.precision]:
            raise TuneppError(f"OpenVINO compiled {self.where} at {got}, not the requested {_HINTS[self.precision]}")
        return compiled, compiled.create_infer_request()

    def _part(self, which: int, shapes: dict[str, list[int]]) -> tuple[Any, Any]:
        """The compiled trunk (0) or head (1) for these input shapes (cached, bounded like the one graph)."""
        assert self._parts is not None
        key = (which, *sorted((n, tuple(v)) for n, v in shapes.items()))
        hit = self._part_compiled.get(key)
        if hit is not None:
            self._part_compiled.move_to_end(key)
            return hit
        entry = self._compile(self._parts[which], shapes, ("the trunk" if which == 0 else "the head") + f" {shapes}")
        self._part_compiled[key] = entry
        while len(self._part_compiled) > 2 * MAX_COMPILED:
            self._part_compiled.popitem(last=False)
        return entry

    def _run(self, compiled: Any, request: Any, feed: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        try:
            # share_inputs: no copy of the feeds; outputs are copied out of the request's buffers, which the
            # next call on the same shape overwrites while the engine may still hold this call's tensors
            result = request.infer(feed, share_inputs=True, share_outputs=False)
        except Exception as e:
            raise RuntimeError(f"OpenVINO: {ov_message(e)}") from None
        return [np.asarray(result[compiled.output(n)]) for n in names]

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The trunk part's cut tensors for windows ``x`` (what :meth:`head` takes), as CPU tensors."""
        if self._parts is None:
            raise NotImplementedError("the openvino runner runs its graph whole (open it with split=True)")
        xs = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        compiled, request = self._part(0, {INPUT_NAME: list(xs.shape)})
        return tuple(torch.from_numpy(o) for o in self._run(compiled, request, {INPUT_NAME: xs}, self.cut))

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The head part on :meth:`trunk` outputs for ``masks`` (S' x B rows, sample-major)."""
        if self._parts is None:
            raise NotImplementedError("the openvino runner runs its graph whole (open it with split=True)")
        feed = {n: np.ascontiguousarray(f.detach().cpu().numpy()) for n, f in zip(self.cut, feats, strict=True)}
        feed.update({n: np.ascontiguousarray(m.detach().to("cpu", torch.float32).numpy())
                     for n, m in zip(self.mask_names, masks, strict=True)})
        compiled, request = self._part(1, {n: list(a.shape) for n, a in feed.items()})
        logits, log_var = self._run(compiled, request, feed, OUTPUT_NAMES)
        return torch.from_numpy(logits), torch.from_numpy(log_var)

    def precision_hint(self, windows: int = 1, rows: int = 1) -> str:
        """``INFERENCE_PRECISION_HINT`` of the compiled model for that shape, as OpenVINO reports it (``f32``)."""
        return element_type_name(self.compiled(windows, rows).get_property("INFERENCE_PRECISION_HINT"))

    def num_threads(self, windows: int = 1, rows: int = 1) -> int:
        """``INFERENCE_NUM_THREADS`` of the compiled model for that shape, as OpenVINO reports it."""
        return int(self.compiled(windows, rows).get_property("INFERENCE_NUM_THREADS"))

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        pair = ", trunk/head graph pair" if self._parts is not None else ""
        return f"openvino on cpu (OpenVINO {self.version}, {self.precision}{threads}{pair})"

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = int(masks[0].shape[0]) if masks else int(x.shape[0])
        compiled, request = self._entry(int(x.shape[0]), rows)
        feed = {INPUT_NAME: np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())}
        feed.update({n: np.ascontiguousarray(m.detach().to("cpu", torch.float32).numpy())
                     for n, m in zip(self.mask_names, masks, strict=True)})
        logits, log_var = self._run(compiled, request, feed, OUTPUT_NAMES)
        return torch.from_numpy(logits), torch.from_numpy(log_var)

    def close(self) -> None:
        """Drop the compiled models (their memory is OpenVINO's, freed with the last reference)."""
        self._compiled.clear()
        self._part_compiled.clear()


__all__ = ["EXTRA_HINT", "MAX_COMPILED", "PRECISIONS", "OpenVinoRunner", "check_model_io", "element_type_name",
           "has_quantization", "import_openvino", "normalise_precision", "openvino_version", "ov_message"]
