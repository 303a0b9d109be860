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

**GroupNorm (and InstanceNorm) is exported with blocked statistics, not as ``InstanceNormalization``.** The stock
translation reshapes to ``[B, G, -1]`` and calls ``InstanceNormalization``, whose ONNX Runtime CPU
kernel takes the mean and the squared norm of each group with one fp32 Eigen reduction over all
``C/G * D*H*W`` values (73,728 for the phantom network's full-resolution blocks). On inputs with
long runs of equal values — an MR scan clipped by a CT window (81 % of a T1 window at exactly 1.0),
flat background, zero padding — the round-off of those long sums no longer cancels: the group
std came out up to 6.5e-5 (relative) off on the real T1, the first GroupNorm's output 1.9e-4 off
(torch's ``group_norm`` 5e-7), and the final softmax 2.5e-4 off. :func:`group_norm_blocked`
emits the same mathematics as ``ReduceMean`` over one axis at a time (innermost first, so no
single sum is longer than one window side), two-pass variance ``mean((x - mean)^2)`` and
``(x - mean) * rstd * gamma + beta`` (:func:`instance_norm_blocked` likewise, one channel per group);
every op is in TensorRT's list, and the ONNX Runtime CPU session is ~5 % slower (1 window x 8 samples).
OpenVINO merges consecutive ``ReduceMean`` nodes back into one reduction over the whole group (its
runtime graph showed one ``Reduce`` per statistic), which made its GroupNorm 1.6e-3 off on flat runs
(2026-12-03; ORT 4e-6) and its logits 2.6e-4 off torch's on a phantom scan's air background; the
reductions therefore alternate ``ReduceMean`` and ``ReduceSum``, which it leaves apart (:func:`_mean_per_axis`).
The statistics are taken on the 5-D tensor itself (per channel, then averaged over the group's channels
on the tiny ``[B, C, 1, 1, 1]`` result), not on a ``[B, G, C/G, *spatial]`` reshape of it: the same sums
in the same order, but OpenVINO keeps its channel-blocked layout instead of reordering every full-size
tensor to planar and back around each reshape (2 x 28 reorders, ~0.05 s of a 0.31 s 25-row phantom MC
call; the call 1.06x faster, docs/openvino.md). The spatial axes stay innermost first: outermost first
was 10 ms faster per call on OpenVINO but 1.3e-5 off float64 on the flat-runs test (innermost 5.7e-6).
:data:`ACCURATE_NORMS` is the translation table; other dynamo exporters of such networks can pass it.
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
from onnxscript import opset18 as op
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


def _mean_per_axis(t, axes: list[int], sizes: dict[int, int]):
    """The mean over ``axes``, one axis at a time (keepdims), in the order given.

    Consecutive reductions alternate ``ReduceMean`` and ``ReduceSum`` (the sums' sizes divided out once at
    the end): OpenVINO merges consecutive reductions *of one type* into one long fp32 sum, which undid
    the blocking (flat runs: 1.6e-3 off vs 4e-6 unmerged; module docstring). An axis whose size is not in
    ``sizes`` (dynamic) always takes ``ReduceMean``.
    """
    divide, last_sum = 1, True
    for a in axes:
        if last_sum or a not in sizes:
            t, last_sum = op.ReduceMean(t, op.Constant(value_ints=[a]), keepdims=1), False
        else:
            t, last_sum = op.ReduceSum(t, op.Constant(value_ints=[a]), keepdims=1), True
            divide *= sizes[a]
    return t if divide == 1 else op.Mul(t, op.CastLike(op.Constant(value_float=1.0 / divide), t))


def group_norm_blocked(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5, cudnn_enabled: bool = True):
    """ONNX translation of ``aten::group_norm`` with blocked (per-axis) mean and variance.

    Same result as torch's ``group_norm`` in exact arithmetic; in fp32 every partial sum covers at
    most one axis (module docstring: why not ``InstanceNormalization``, why the input is not reshaped).
    Needs static channel and spatial sizes except at most one (the export's spatial window is static;
    only batch is dynamic).
    """
    dims = list(input.shape)
    if len(dims) < 3:
        raise TuneppError(f"group_norm export needs a [B, C, ...] input, got rank {len(dims)}")
    rest = [d if isinstance(d, int) else -1 for d in dims[2:]]
    c = dims[1]
    if not isinstance(c, int) or rest.count(-1) > 1:
        raise TuneppError(f"group_norm export needs static channel/spatial sizes, got {dims}")
    g = int(num_groups)
    rank = len(dims)
    spatial = list(range(rank - 1, 1, -1))  # innermost first
    sizes = {i: d for i, d in enumerate(rest, start=2) if d > 0}
    group = op.Constant(value_ints=[0, g, c // g])  # a [B, C, 1, ...] statistic as [B, G, C/G]
    per_c = op.Constant(value_ints=[0, c, *([1] * (rank - 2))])  # and back, for every channel of the group
    expand = op.Constant(value_ints=[1, g, c // g])

    def group_mean(t):
        # per-channel means (one axis at a time), averaged over the group's channels and broadcast back to
        # [B, C, 1, ...]: the sums of a [B, G, C/G, *spatial] reduction, without reshaping t (module docstring)
        per_channel = op.Reshape(_mean_per_axis(t, spatial, sizes), group)  # [B, G, C/G]
        return op.Reshape(op.Expand(op.ReduceMean(per_channel, op.Constant(value_ints=[2]), keepdims=1), expand),
                          per_c)

    dev = op.Sub(input, group_mean(input))
    var = group_mean(op.Mul(dev, dev))  # [B, C, 1, ...], equal within a group
    scale = op.Reciprocal(op.Sqrt(op.Add(var, op.CastLike(op.Constant(value_float=float(eps)), var))))
    per_channel = op.Constant(value_ints=[1, c, *([1] * (rank - 2))])
    if weight is not None:
        scale = op.Mul(scale, op.Reshape(op.CastLike(weight, input), per_channel))
    y = op.Mul(dev, scale)
    if bias is not None:
        y = op.Add(y, op.Reshape(op.CastLike(bias, input), per_channel))
    return y


def instance_norm_blocked(
    input, weight=None, bias=None, running_mean=None, running_var=None, use_input_stats: bool = True,
    momentum: float = 0.1, eps: float = 1e-5, cudnn_enabled: bool = True,
):
    """ONNX translation of ``aten::instance_norm``: GroupNorm with one channel per group, blocked stats.

    (Stock: the same ``InstanceNormalization`` kernel.) With ``use_input_stats=False`` (tracked running
    statistics) there is no reduction and the stored statistics are applied directly.
    """
    if use_input_stats or running_mean is None or running_var is None:
        return group_norm_blocked(input, int(input.shape[1]), weight, bias, eps)
    per_channel = op.Constant(value_ints=[1, -1, *([1] * (len(input.shape) - 2))])
    rstd = op.Reciprocal(op.Sqrt(op.Add(running_var, op.CastLike(op.Constant(value_float=float(eps)), running_var))))
    scale = rstd if weight is None else op.Mul(rstd, weight)
    y = op.Mul(op.Sub(input, op.Reshape(running_mean, per_channel)), op.Reshape(scale, per_channel))
    return y if bias is None else op.Add(y, op.Reshape(bias, per_channel))


#: ``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: GroupNorm and InstanceNorm with
#: blocked statistics instead of ``InstanceNormalization`` (module docstring). Other dynamo exporters of
#: networks with these norms should pass it too.
ACCURATE_NORMS = {
    torch.ops.aten.group_norm.default: group_norm_blocked,
    torch.ops.aten.instance_norm.default: instance_norm_blocked,
}


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
                custom_translation_table=ACCURATE_NORMS,
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
    "ACCURATE_NORMS",
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
    "group_norm_blocked",
    "instance_norm_blocked",
    "load_checkpoint_network",
    "trt_supported_ops",
]
