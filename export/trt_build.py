"""Build a TensorRT engine from the exported ONNX graph (``tunepp export trt``).

UNVERIFIED: TensorRT cannot be installed on the machines this was written on (no wheel on PyPI for
these platforms, no TensorRT on the lent GPUs). The code follows NVIDIA's documented Python API and
imports ``tensorrt`` / ``modelopt`` lazily; its tests skip with the reason printed.

* **Profile.** Spatial dims are static (the window); the profile spans the batch axis: ``x`` from 1
  to ``max_batch`` windows, each mask from 1 to ``max_batch * samples`` rows, optimised for
  ``max_batch`` windows x ``samples`` samples (what the MC engine sends when memory allows).
* **Timing cache** next to the engine (``<out>.timing.cache``) is loaded and saved, so rebuilding
  on the same GPU/TensorRT is fast; caches are version- and device-specific like engines.
* **Precision, TensorRT 10**: ``fp16`` sets ``BuilderFlag.FP16``; ``int8`` sets ``INT8`` (+ FP16
  fallback) with an ``IInt8EntropyCalibrator2`` reading ``.npy`` windows. **TensorRT 11** removed
  those flags and calibrators: ``fp16`` converts the graph with ModelOpt AutoCast and builds a
  strongly typed network; ``int8`` inserts Q/DQ nodes with ``modelopt.onnx.quantization.quantize``
  from the same ``.npy`` windows (the later ``calibrate/`` module writes such a folder).
* Calibration windows are fed with MC dropout masks drawn from seed 0 (one sample per window), so
  activation ranges include the ``1 / (1 - p)`` scaling that inference will see.
* Buffers are torch CUDA tensors (``data_ptr``); no pycuda.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.runners.load import read_onnx_meta
from tunepp_deploy.infer.runners.trt_runner import gpu_capability, import_tensorrt

from .engine_sidecar import EngineInfo, write_sidecar
from .metadata import INPUT_NAME, ModelMeta
from .onnx_export import file_sha256

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineResult:
    engine: Path
    sidecar: Path
    info: EngineInfo
    seconds: float


def load_calibration_windows(folder: Path, meta: ModelMeta) -> np.ndarray:
    """Stack every ``.npy`` window in ``folder`` into ``[N, C, *window]`` float32 (checked shapes)."""
    files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if not files:
        raise TuneppError(f"{folder}: no .npy calibration windows found")
    want = (meta.in_channels, *meta.window)
    arrays = []
    for f in files:
        a = np.load(f).astype(np.float32)
        if a.shape == want:
            a = a[None]
        if a.ndim != 5 or tuple(a.shape[1:]) != want:
            raise TuneppError(f"{f}: calibration window shape {a.shape}, expected {want} or [N, *{want}]")
        arrays.append(a)
    return np.concatenate(arrays)


def calibration_feeds(windows: np.ndarray, meta: ModelMeta) -> dict[str, np.ndarray]:
    """Inputs for calibration: the windows and one MC mask row per window (module docstring)."""
    masks = sample_masks(meta.sites, meta.window, len(windows), seed=0)
    rows = [t.numpy() for t in masks.rows(range(len(windows)), 1, starts=[(0, 0, 0)])]  # sample j, window j
    return {INPUT_NAME: windows, **dict(zip(meta.mask_names, rows, strict=True))}


def _entropy_calibrator(trt, feeds: dict[str, np.ndarray], batch: int, cache: Path):
    """An ``IInt8EntropyCalibrator2`` over ``feeds`` (TensorRT 10; defined lazily, trt is optional)."""

    class NpyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.index = 0
            self.n = len(feeds[INPUT_NAME])
            self.buffers: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + batch > self.n:
                return None
            sl = slice(self.index, self.index + batch)
            self.index += batch
            self.buffers = {k: torch.from_numpy(np.ascontiguousarray(v[sl])).cuda() for k, v in feeds.items()}
            return [int(self.buffers[name].data_ptr()) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return NpyCalibrator()


def _modelopt_fp16(onnx_path: Path, tmp: Path) -> Path:
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise TuneppError("fp16 on TensorRT 11 needs nvidia-modelopt (pip install nvidia-modelopt[onnx])") from None
    model = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True)
    out = tmp / "model_fp16.onnx"
    onnx.save_model(model, str(out))
    return out


def _modelopt_int8(onnx_path: Path, feeds: dict[str, np.ndarray], tmp: Path) -> Path:
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise TuneppError("int8 on TensorRT 11 needs nvidia-modelopt (pip install nvidia-modelopt[onnx])") from None
    out = tmp / "model_int8_qdq.onnx"
    quantize(str(onnx_path), quantize_mode="int8", calibration_data=feeds, calibration_method="entropy",
             output_path=str(out))
    return out


def build_engine(
    onnx_path: str | Path,
    out: str | Path,
    precision: str = "fp16",
    calib_dir: str | Path | None = None,
    max_batch: int = 4,
    samples: int = 25,
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
) -> EngineResult:
    """Build ``out`` (+ ``out.json`` sidecar) from ``onnx_path``; see the module docstring."""
    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise TuneppError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    src = Path(onnx_path)
    _, meta = read_onnx_meta(src)
    from tunepp_deploy.data.nifti import check_output_file

    check_output_file(out, (), "engine")  # before the build (minutes): one line now, not after it
    if precision == "int8" and calib_dir is None:
        raise TuneppError("--precision int8 needs --calib FOLDER of .npy windows")
    if not torch.cuda.is_available():
        raise TuneppError("building a TensorRT engine needs a CUDA GPU (torch sees none)")
    trt = import_tensorrt()
    major = int(trt.__version__.split(".")[0])
    feeds = calibration_feeds(load_calibration_windows(Path(calib_dir), meta), meta) if calib_dir else None
    engine_path = Path(out)
    cache_path = Path(timing_cache) if timing_cache else engine_path.with_name(engine_path.name + ".timing.cache")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        graph_path = src
        strongly_typed = major >= 11 and precision != "fp32"
        if strongly_typed:
            graph_path = _modelopt_fp16(src, tmp) if precision == "fp16" else _modelopt_int8(src, feeds, tmp)  # type: ignore[arg-type]
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(graph_path)):
            errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TuneppError(f"{src}: TensorRT's ONNX parser failed: {errs[0] if errs else 'unknown error'}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

        win, c = tuple(meta.window), meta.in_channels
        rows_opt, rows_max = max_batch * samples, max_batch * samples
        profile = builder.create_optimization_profile()
        shapes = {INPUT_NAME: [(1, c, *win), (max_batch, c, *win), (max_batch, c, *win)]}
        for site, name in zip(meta.sites, meta.mask_names, strict=True):
            tail = site.mask_shape(win, 1)[1:]
            shapes[name] = [(1, *tail), (rows_opt, *tail), (rows_max, *tail)]
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)

        if major < 11 and precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if major < 11 and precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _entropy_calibrator(
                trt, feeds, min(max_batch, len(feeds[INPUT_NAME])), engine_path.with_name(engine_path.name + ".calib")  # type: ignore[index]
            )
            config.set_calibration_profile(profile)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TuneppError(f"{src}: TensorRT failed to build the engine (see the TensorRT log above)")
        write_atomic(engine_path, lambda t: t.write_bytes(bytes(serialized)))
        write_atomic(cache_path, lambda t: t.write_bytes(bytes(config.get_timing_cache().serialize())))

    dev = torch.device("cuda", torch.cuda.current_device())
    info = EngineInfo(
        tensorrt_version=trt.__version__, compute_capability=gpu_capability(dev),
        gpu_name=torch.cuda.get_device_name(dev), onnx_sha256=file_sha256(src), precision=precision,
        profile={k: [list(s) for s in v] for k, v in shapes.items()}, tunepp=meta.to_props(),
    )
    sidecar = write_sidecar(engine_path, info)
    return EngineResult(engine_path, sidecar, info, time.perf_counter() - t0)


__all__ = ["PRECISIONS", "EngineResult", "build_engine", "calibration_feeds", "load_calibration_windows"]
