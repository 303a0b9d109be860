"""Triton ``config.pbtxt``: written from a small description, parsed with Triton's own schema, checked
against the ONNX graph it serves.

**Why Triton's proto and not a home-made parser.** ``tritonclient`` ships the generated protobuf
module of Triton's ``model_config.proto`` (``tritonclient/grpc/model_config_pb2.py``, the schema the
server itself parses ``config.pbtxt`` with). ``google.protobuf.text_format.Parse`` against it
rejects misspelled fields, unknown enums (``TYPE_FLOAT32`` instead of ``TYPE_FP32``) and wrong value
kinds exactly as the server would, so the static check and the server cannot disagree on syntax. The
module is loaded from its file, not through ``tritonclient.grpc`` (whose ``__init__`` imports
``grpcio``), so only the ``tritonclient`` wheel is needed.

On top of the schema, :func:`check_against_onnx` applies the rules Triton applies when it loads an
ONNX Runtime / TensorRT model (``docs/user_guide/model_configuration.md``): every graph input and
output named once, data types mapped (``FLOAT`` -> ``TYPE_FP32``), and ``dims`` equal to the graph's
shape — without the leading batch axis when ``max_batch_size > 0``, with it (``-1`` for a dynamic
axis) when ``max_batch_size == 0``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import onnx

from tunepp_deploy.errors import TuneppError

#: ONNX TensorProto element type -> Triton ``DataType`` name (model_config.proto).
ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
#: Platforms/backends whose configs :func:`check_against_onnx` can compare with an ONNX graph.
GRAPH_PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")


@dataclass(frozen=True)
class TensorSpec:
    """One ``input``/``output`` entry: name, Triton data type name, dims (batch axis per the rules above)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """The fields of ``config.pbtxt`` this toolkit writes (a subset of Triton's ``ModelConfig``)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    platform: str = ""
    backend: str = ""
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    default_model_filename: str = ""
    comment: str = ""


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor(kind: str, t: TensorSpec) -> str:
    dims = ", ".join(str(int(d)) for d in t.dims)
    opt = "\n    optional: true" if t.optional else ""
    return f"  {{\n    name: {_q(t.name)}\n    data_type: {t.data_type}\n    dims: [ {dims} ]{opt}\n  }}"


def render(cfg: ModelConfig) -> str:
    """``config.pbtxt`` text for ``cfg`` (protobuf text format; :func:`parse` reads it back)."""
    lines = [f"# {c}" for c in cfg.comment.splitlines()]
    lines.append(f"name: {_q(cfg.name)}")
    if cfg.platform:
        lines.append(f"platform: {_q(cfg.platform)}")
    if cfg.backend:
        lines.append(f"backend: {_q(cfg.backend)}")
    if cfg.default_model_filename:
        lines.append(f"default_model_filename: {_q(cfg.default_model_filename)}")
    lines.append(f"max_batch_size: {int(cfg.max_batch_size)}")
    lines.append("input [\n" + ",\n".join(_tensor("input", t) for t in cfg.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor("output", t) for t in cfg.outputs) + "\n]")
    group = f"  {{\n    count: {int(cfg.instance_count)}\n    kind: {cfg.instance_kind}\n  }}"
    lines.append(f"instance_group [\n{group}\n]")
    if cfg.dynamic_batching:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(cfg.max_queue_delay_us)}\n}}")
    for k, v in cfg.parameters.items():
        lines.append(f"parameters {{\n  key: {_q(k)}\n  value: {{ string_value: {_q(str(v))} }}\n}}")
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=1)
def _model_config_pb2() -> ModuleType:
    """Triton's generated ``model_config_pb2`` from the ``tritonclient`` wheel (module docstring)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise TuneppError("validating a Triton config needs the tritonclient package "
                          "(pip install 'tunepp-deploy[triton]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise TuneppError(f"{path}: this tritonclient has no model_config_pb2 (need tritonclient >= 2.0)")
    mod_spec = importlib.util.spec_from_file_location("tunepp_triton_model_config_pb2", path)
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def parse(text: str, where: str = "config.pbtxt"):
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` message; a schema error is one line."""
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise TuneppError(f"{where}: not a valid Triton model config ({str(e).splitlines()[0][:200]})") from None


def data_type_name(value: int) -> str:
    """``TYPE_FP32`` for the enum value ``value`` of Triton's ``DataType``."""
    return _model_config_pb2().DataType.Name(value)


def _graph_shape(vi: onnx.ValueInfoProto) -> tuple[list[int], int]:
    """Shape of a graph input/output (``-1`` for a symbolic/unknown axis) and its element type."""
    tt = vi.type.tensor_type
    dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    return dims, int(tt.elem_type)


def check_against_onnx(cfg_msg, graph: onnx.ModelProto, where: str) -> None:
    """Check a parsed ORT/TRT config against ``graph``'s inputs and outputs (module docstring)."""
    platform = cfg_msg.platform or cfg_msg.backend
    if platform not in (*GRAPH_PLATFORMS, "onnxruntime", "tensorrt"):
        raise TuneppError(f"{where}: platform {platform!r} is not one of {GRAPH_PLATFORMS}")
    if cfg_msg.max_batch_size < 0:
        raise TuneppError(f"{where}: max_batch_size {cfg_msg.max_batch_size} < 0")
    batched = cfg_msg.max_batch_size > 0
    init = {i.name for i in graph.graph.initializer}
    for kind, declared, values in (("input", cfg_msg.input, [v for v in graph.graph.input if v.name not in init]),
                                   ("output", cfg_msg.output, list(graph.graph.output))):
        want = {v.name: _graph_shape(v) for v in values}
        names = [t.name for t in declared]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TuneppError(f"{where}: {kind} {dup} declared twice")
        if set(names) != set(want):
            missing, extra = sorted(set(want) - set(names)), sorted(set(names) - set(want))
            raise TuneppError(f"{where}: {kind}s do not match the ONNX graph (missing {missing}, not in graph {extra})")
        for t in declared:
            shape, elem = want[t.name]
            expect_type = ONNX_TO_TRITON.get(elem)
            got_type = data_type_name(t.data_type)
            if got_type != expect_type:
                raise TuneppError(f"{where}: {kind} {t.name!r} data_type {got_type}, the graph has {expect_type}")
            if batched and (not shape or shape[0] != -1):
                raise TuneppError(f"{where}: max_batch_size > 0 but the graph's {kind} {t.name!r} has no dynamic "
                                  f"first axis ({shape})")
            expect = shape[1:] if batched else shape
            dims = [int(d) for d in t.dims]
            if len(dims) != len(expect) or any(e != -1 and d != e for d, e in zip(dims, expect, strict=False)):
                rule = "without the batch axis" if batched else "with the batch axis (max_batch_size 0)"
                raise TuneppError(f"{where}: {kind} {t.name!r} dims {dims}, the graph needs {expect} ({rule})")
            if any(e == -1 and d != -1 for d, e in zip(dims, expect, strict=False)):
                raise TuneppError(f"{where}: {kind} {t.name!r} dims {dims} fix an axis the graph keeps dynamic "
                                  f"({expect}); use -1")
            if any(d == 0 or d < -1 for d in dims):
                raise TuneppError(f"{where}: {kind} {t.name!r} dims {dims}: each dim must be > 0 or -1")


def validate_file(config_path: Path, graph: onnx.ModelProto | None = None) -> object:
    """Parse ``config_path`` with Triton's schema and, for ORT/TRT configs with ``graph``, check it."""
    try:
        text = Path(config_path).read_text()
    except OSError as e:
        raise TuneppError(f"{config_path}: cannot read ({e.strerror or e})") from None
    msg = parse(text, str(config_path))
    if not msg.name:
        raise TuneppError(f"{config_path}: no model name")
    if msg.name != Path(config_path).parent.name:
        folder = Path(config_path).parent.name
        raise TuneppError(f"{config_path}: name {msg.name!r} is not its folder's name {folder!r}")
    if graph is not None:
        check_against_onnx(msg, graph, str(config_path))
    return msg


__all__ = ["GRAPH_PLATFORMS", "ONNX_TO_TRITON", "ModelConfig", "TensorSpec", "check_against_onnx", "parse",
           "render", "validate_file"]
