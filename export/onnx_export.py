"""Export TUNE++ to one ONNX graph with masks as inputs and the trunk run once per window.

Graph contract (``EXPORT_FORMAT`` 1)::

    inputs   x            [B, in, *window]            B windows (dynamic)
             mask_<site>  [R, C_site] (channel mode)   R = S' * B rows, sample-major (dynamic)
    outputs  logits       [R, K, *window]
             log_var      [R, 1, *window]

Inside, the deterministic trunk runs on the B windows once, its outputs are tiled ``R // B`` times
along the batch axis, and the head runs on all R rows with the given masks. So one call computes
S' MC samples of B windows at the cost ``trunk(B) + head(S' * B)``; feeding ``x`` already repeated
(R = B) turns the reuse off, which is how the benchmark measures what it saves.

**One graph, not two.** A trunk graph plus a head graph was measured on this 2-core CPU (ONNX
Runtime 1.23, phantom network, 48x48x32 window, S = 25, ``python -m tunepp_deploy.bench.mc
--two-graphs``): one graph 1.16 s per window, two graphs 1.72 s (the trunk's skip tensors make a
round trip through host memory between sessions), and one file / one TensorRT engine is simpler to
ship. The cost of one graph: when a window's S samples do not fit the memory budget, the samples are
run in chunks and the trunk is recomputed per chunk.

**Exporter.** ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). The TorchScript
exporter (``dynamo=False``) fails on this network with torch 2.13: TUPA's token reshapes use the
traced spatial sizes, which the tracer turns into non-constant ``prim::ListConstruct``. Spatial dims
are static (the config window), the batch/rows axes dynamic. No ``Dropout`` or ``Random*`` node is
produced (masks are inputs), so ONNX Runtime's optimiser cannot remove the stochasticity.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.model.network import TUNEPP, build_network, repeat_for_samples
from tunepp_deploy.train.checkpoint import checkpoint_config, load_weights, read_checkpoint

from .metadata import OUTPUT_NAMES, ModelMeta, meta_for

DEFAULT_OPSET = 18
#: Ops whose presence would make MC dropout backend-dependent or get it optimised away.
FORBIDDEN_OPS = frozenset(
    {"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli", "Multinomial"}
)


class MCGraph(nn.Module):
    """``forward(x, masks) -> (logits, log_var)``: trunk once, tiled, head on all rows (module doc)."""

    def __init__(self, net: TUNEPP) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, masks: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        feats = self.net.trunk(x)
        if masks:
            feats = repeat_for_samples(feats, masks[0].shape[0] // x.shape[0])
        return self.net.head(*feats, *masks)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    seconds: float
    opset: int
    op_types: list[str]
    sha256: str
    meta: ModelMeta


def graph_op_types(model: onnx.ModelProto) -> set[str]:
    """Op types of the main graph (the exporter inlines functions, so no local functions remain)."""
    ops = {n.op_type for n in model.graph.node}
    for f in model.functions:
        ops |= {n.op_type for n in f.node}
    return ops


def trt_supported_ops() -> tuple[set[str], dict[str, str]]:
    """The op list in ``trt_supported_ops.txt`` and its ``# key: value`` header fields."""
    text = (resources.files("tunepp_deploy.export") / "trt_supported_ops.txt").read_text()
    ops, header = set(), {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() in {"source", "tensorrt", "opset_max"}:
                header[key.strip()] = value.strip()
        elif line:
            ops.add(line)
    return ops, header


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (engines record the ONNX they were built from)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress lines and torchvision warnings; keep the CLI output clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def build_onnx(net: TUNEPP, meta: ModelMeta, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``net`` (on CPU, fp32, eval) into an ONNX model with metadata; not yet written."""
    net = net.to("cpu").float().eval()
    window = meta.window
    x = torch.zeros(2, meta.in_channels, *window)
    masks = tuple(s.ones_mask(window, 4) for s in meta.sites)  # 2 samples x 2 windows
    batch = torch.export.Dim("batch", min=1, max=4096)
    rows = torch.export.Dim("rows", min=1, max=65536)
    dynamic = ({0: batch}, tuple({0: rows} for _ in masks))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                MCGraph(net), (x, masks), None, input_names=meta.input_names, output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic, opset_version=opset, dynamo=True, optimize=True, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; the first line says what failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuneppError(f"ONNX export failed (opset {opset}): {first[:200]}") from None
    model = program.model_proto
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_props())
    model.producer_name = "tunepp-deploy"
    model.producer_version = meta.version
    return model


def check_graph(model: onnx.ModelProto) -> None:
    """onnx.checker (full) plus the MC invariant: no Dropout/Random* op in the graph."""
    onnx.checker.check_model(model, full_check=True)
    bad = graph_op_types(model) & FORBIDDEN_OPS
    if bad:
        raise TuneppError(f"exported graph contains {sorted(bad)}: MC dropout would not survive deployment")


def export_onnx(
    net: TUNEPP,
    cfg: TuneppConfig,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    window: tuple[int, int, int] | None = None,
) -> ExportResult:
    """Export ``net`` (built from ``cfg``) to ``out`` atomically; returns the graph's op set and hash."""
    t0 = time.perf_counter()
    meta = meta_for(net, cfg, window)
    model = build_onnx(net, meta, opset)
    check_graph(model)
    path = Path(out)
    if not path.name.endswith(".onnx"):
        raise TuneppError(f"{path}: output name must end in .onnx")
    write_atomic(path, lambda tmp: onnx.save_model(model, str(tmp), save_as_external_data=False), suffix=".onnx")
    return ExportResult(path, time.perf_counter() - t0, opset, sorted(graph_op_types(model)), file_sha256(path), meta)


def load_checkpoint_network(checkpoint: str | Path) -> tuple[TUNEPP, TuneppConfig]:
    """The network and config stored in a checkpoint (weights loaded, CPU, eval)."""
    ckpt = read_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt, str(checkpoint))
    net = build_network(cfg)
    load_weights(net, ckpt, str(checkpoint))
    return net.eval(), cfg


def export_checkpoint(checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET) -> ExportResult:
    """``tunepp export onnx``: checkpoint in, self-describing ONNX file out."""
    net, cfg = load_checkpoint_network(checkpoint)
    return export_onnx(net, cfg, out, opset)


__all__ = [
    "DEFAULT_OPSET",
    "FORBIDDEN_OPS",
    "ExportResult",
    "MCGraph",
    "build_onnx",
    "check_graph",
    "export_checkpoint",
    "export_onnx",
    "file_sha256",
    "graph_op_types",
    "load_checkpoint_network",
    "trt_supported_ops",
]
