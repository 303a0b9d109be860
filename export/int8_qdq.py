r"""``tunepp export int8``: a static Q/DQ INT8 ONNX graph calibrated on ``tunepp calibrate int8`` windows.

The output is the same graph contract as ``tunepp export onnx`` (inputs ``x`` + one float mask per
dropout site, outputs ``logits`` / ``log_var``) with ``QuantizeLinear`` / ``DequantizeLinear`` pairs
around the quantized ops: the explicit-quantization format TensorRT 11 (strongly typed networks) and
OpenVINO's CPU plugin consume directly. It is written with ONNX Runtime's
``quantize_static(quant_format=QDQ)``; int8 weights per output channel, int8 activations whose ranges
come from running the float graph on the calibration windows.

Choices (measured on a trained phantom model in ``docs/results/int8.md``):

* **Calibration masks are drawn MC masks, not all-ones.** Every inference row carries a drawn mask
  whose kept channels are scaled by ``1 / (1 - p)``; ranges measured with all-ones masks would be
  ``1 - p`` too narrow downstream of a dropout site and clip exactly the activations MC inference
  produces. The rows are the ones the calibration folder stores, ``sample_masks(sites, window, N,
  seed=0)`` row j for window j — the draw the TensorRT 10 / 11 builders use
  (:func:`tunepp_deploy.export.trt_build.calibration_feeds`), so every int8 path sees the same
  calibration inputs. ``masks="ones"`` exists to measure the difference.
* **Only the arithmetic-heavy ops are quantized** (``Conv``, ``ConvTranspose``, ``MatMul``,
  ``Gemm``: :data:`HEAVY_OPS`). The mask multiplications, the norms, GELU, the attention softmax and
  the output heads' float tail stay float32, so the mask inputs remain float graph inputs (dropout
  stays stochastic: the masks are still multiplied in at full precision) and the probabilities are
  computed from float logits. ``op_types=None`` quantizes every op ONNX Runtime's QDQ quantizer knows,
  for comparison.
* **Symmetric int8 activations (zero point 0) by default**: what TensorRT's int8 requires, and the
  only kind OpenVINO 2026.4's CPU plugin compiled on the phantom network — with asymmetric
  activations it fails at compile time (``Check 'any_of(scale.size(), OC, 1U)' failed at
  dnnl_postops_composer.cpp``). ``symmetric=False`` (asymmetric, ONNX Runtime only) is kept to measure
  what the zero points would buy.

The file carries the exporter's metadata plus :data:`~tunepp_deploy.export.metadata.QUANT_KEY` (a JSON
record: format, weight/activation types, calibration folder, windows, mask draw, method, quantized op
types), so runners and ``doctor`` can say the graph is int8. It is never produced unless asked for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import identity_masks

from .metadata import INPUT_NAME, QUANT_KEY, ModelMeta, quantization_record
from .onnx_export import file_sha256, graph_op_types
from .trt_build import calibration_feeds, load_calibration_windows

#: Op types quantized by default: where the FLOPs are (module docstring).
HEAVY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: Calibration methods by their CLI names.
METHODS = ("minmax", "percentile", "entropy")
MaskDraw = Literal["drawn", "ones"]


@dataclass(frozen=True)
class Int8ExportResult:
    """What :func:`quantize_qdq` wrote."""

    path: Path
    seconds: float
    windows: int
    quantized_nodes: int
    op_types: list[str]
    sha256: str

    @property
    def summary(self) -> str:
        return (f"wrote {self.path} in {self.seconds:.0f} s: int8 Q/DQ, {self.quantized_nodes} QuantizeLinear nodes, "
                f"calibrated on {self.windows} windows")


def calibration_inputs(calib_dir: str | Path, meta: ModelMeta, masks: MaskDraw = "drawn") -> dict[str, np.ndarray]:
    """The calibration feeds: ``x`` ``[N, C, *window]`` from ``calib_dir`` and one mask row per window.

    ``calib_dir`` is a ``tunepp calibrate int8`` folder (``batch_*.npy``) or any folder of ``.npy``
    windows ``[C, *window]`` / ``[N, C, *window]``; shapes are checked against the model (one line).
    ``masks="drawn"``: the folder's stored draw (regenerated identically from seed 0); ``"ones"``: keep all.
    """
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise TuneppError(f"{folder}: calibration folder not found (write one with `tunepp calibrate int8`)")
    try:
        x = load_calibration_windows(folder, meta)
    except (ValueError, OSError) as e:  # a truncated or non-numpy .npy file
        raise TuneppError(f"{folder}: unreadable calibration window ({type(e).__name__}: {str(e)[:120]})") from None
    if not np.isfinite(x).all():
        raise TuneppError(f"{folder}: calibration windows contain NaN or infinite values")
    if masks == "drawn":
        feeds = calibration_feeds(x, meta)
        _check_stored_masks(folder, meta, feeds)
        return feeds
    if masks == "ones":
        ones = identity_masks(meta.sites, meta.window, len(x))
        return {INPUT_NAME: x, **dict(zip(meta.mask_names, ones.per_site, strict=True))}
    raise TuneppError(f"unknown calibration masks '{masks}' (use drawn or ones)")


def _check_stored_masks(folder: Path, meta: ModelMeta, feeds: dict[str, np.ndarray]) -> None:
    """A folder written by ``tunepp calibrate int8`` stores its mask rows; they must be the draw used here."""
    npz = folder / "calibration_data.npz"
    if not npz.is_file():
        return
    with np.load(npz) as stored:
        for name in meta.mask_names:
            if name in stored.files and not np.array_equal(stored[name], feeds[name]):
                raise TuneppError(f"{npz}: stored masks {name!r} differ from the seed-0 draw for "
                                  f"{len(feeds[INPUT_NAME])} windows; rewrite the folder with `tunepp calibrate int8`")


class _Reader:
    """An ONNX Runtime ``CalibrationDataReader``: batches of ``batch`` windows, each with its own mask row."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int) -> None:
        self.feeds = feeds
        self.batch = batch
        self.it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        n = len(self.feeds[INPUT_NAME])
        for start in range(0, n, self.batch):
            yield {k: np.ascontiguousarray(v[start:start + self.batch]) for k, v in self.feeds.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = self._batches()


def _reader(feeds: dict[str, np.ndarray], batch: int):
    """:class:`_Reader` as a subclass of ORT's abstract reader (imported lazily: the quantizer is heavy)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    return Reader(feeds, batch)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs "consider pre-processing" on the root logger at WARNING; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_qdq(
    onnx_in: str | Path,
    calib_dir: str | Path,
    onnx_out: str | Path,
    *,
    method: str = "minmax",
    masks: MaskDraw = "drawn",
    op_types: Sequence[str] | None = HEAVY_OPS,
    symmetric: bool = True,
    batch: int = 4,
) -> Int8ExportResult:
    """Write ``onnx_out``: ``onnx_in`` (a ``tunepp export onnx`` file) quantized to int8 Q/DQ (module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from tunepp_deploy.infer.runners.load import read_onnx_meta

    t0 = time.perf_counter()
    src, out = Path(onnx_in), Path(onnx_out)
    if not out.name.endswith(".onnx"):
        raise TuneppError(f"{out}: output name must end in .onnx")
    if method not in METHODS:
        raise TuneppError(f"unknown calibration method '{method}' (use {', '.join(METHODS)})")
    if batch < 1:
        raise TuneppError("--batch must be at least 1")
    model, meta = read_onnx_meta(src)
    if {"QuantizeLinear", "DequantizeLinear"} & graph_op_types(model):
        raise TuneppError(f"{src}: already quantized; quantize the float graph of `tunepp export onnx`")
    props = {p.key: p.value for p in model.metadata_props}
    feeds = calibration_inputs(calib_dir, meta, masks)
    n = len(feeds[INPUT_NAME])
    cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}[method]
    # no CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMaxCalibrater.collect_data drops the batches it
    # holds when that count is reached instead of folding them into the ranges (and then finds "no data");
    # min-max needs no bound anyway, the augmented graph returns ReduceMin/ReduceMax scalars per tensor
    extra = {"ActivationSymmetric": bool(symmetric), "WeightSymmetric": True}
    with tempfile.TemporaryDirectory(prefix="tunepp_int8_") as tmp:
        q_path = Path(tmp) / "model_int8_qdq.onnx"
        # quantize a private copy: onnxruntime 1.32 writes <input>-inferred.onnx next to its input (and deletes
        # it), which would touch the user's folder and collide between two quantizations of one file
        src_copy = Path(tmp) / "model_fp32.onnx"
        shutil.copyfile(src, src_copy)
        try:
            with _quiet_quantizer():
                quantize_static(str(src_copy), str(q_path), _reader(feeds, batch), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=None if op_types is None else list(op_types), per_channel=True,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=cal,
                                extra_options=extra, calibration_providers=["CPUExecutionProvider"])
            q = onnx.load(str(q_path))
        except TuneppError:
            raise
        except Exception as e:  # the quantizer raises many types; the first line says what failed
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TuneppError(f"int8 quantization of {src} failed: {first[:200]}") from None
    ops = graph_op_types(q)
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise TuneppError(f"int8 quantization of {src} produced no Q/DQ nodes (op types {sorted(op_types or [])})")
    record = quantization_record(
        calibration=str(calib_dir), windows=n, masks=masks, method=method, symmetric=symmetric,
        op_types=None if op_types is None else list(op_types), source_sha256=file_sha256(src),
    )
    del q.metadata_props[:]
    onnx.helper.set_model_props(q, {**props, QUANT_KEY: json.dumps(record, sort_keys=True)})
    onnx.checker.check_model(q, full_check=False)
    write_atomic(out, lambda t: onnx.save_model(q, str(t), save_as_external_data=False), suffix=".onnx")
    nq = sum(1 for node in q.graph.node if node.op_type == "QuantizeLinear")
    return Int8ExportResult(out, time.perf_counter() - t0, n, nq, sorted(ops), file_sha256(out))


__all__ = ["HEAVY_OPS", "METHODS", "Int8ExportResult", "calibration_inputs", "quantize_qdq"]
