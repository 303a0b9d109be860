"""Open a model file on a backend: ``--model CKPT|ONNX|ENGINE`` x ``--backend auto|torch|ort|trt``.

``auto`` follows the file: an engine runs on TensorRT, an ONNX file on ONNX Runtime (the default on
a machine without a GPU; CUDA provider when onnxruntime-gpu and a GPU are there), a checkpoint on
PyTorch (CUDA + AMP when available). A checkpoint can also run on ``ort``: it is exported in memory
first (the same graph ``tunepp export onnx`` writes). Every foreign or mismatched file is a one-line
:class:`ModelMismatchError`.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.export.metadata import ModelMeta, meta_for
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.model_file import model_kind

BACKENDS = ("auto", "torch", "ort", "trt")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when torch sees one; an unavailable CUDA request is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TuneppError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TuneppError(f"--device {device} requested but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise TuneppError(f"unsupported device '{device}' (use auto, cpu, cuda or cuda:N)")
    return dev


def read_onnx_meta(path: Path) -> tuple[onnx.ModelProto, ModelMeta]:
    """Load an ONNX file and its tunepp metadata (refusing plain ONNX graphs)."""
    if not path.is_file():
        raise TuneppError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelMismatchError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    return model, ModelMeta.from_props(props, str(path))


def read_model_meta(path: str | Path) -> ModelMeta:
    """The :class:`ModelMeta` of any supported model file (no backend needed)."""
    p = Path(path)
    kind = model_kind(p)
    if kind == "onnx":
        return read_onnx_meta(p)[1]
    if kind == "engine":
        from tunepp_deploy.export.engine_sidecar import read_sidecar

        return read_sidecar(p).meta
    from tunepp_deploy.export.onnx_export import load_checkpoint_network

    net, cfg = load_checkpoint_network(p)
    return meta_for(net, cfg)


def open_runner(
    model: str | Path,
    backend: str = "auto",
    device: str = "auto",
    amp: bool = True,
    cuda_graphs: bool = False,
    threads: int | None = None,
    compile: bool = False,
) -> Runner:
    """Load ``model`` on ``backend`` (module docstring). The caller closes the runner.

    A runner executes the graph as exported: a temperature stored by ``tunepp calibrate temperature``
    is applied by the TUNE++ predictor (:mod:`tunepp_deploy.predictors.tunepp`), not here. ``compile``
    runs a checkpoint's trunk and head through ``torch.compile`` (torch backend only).
    """
    return _open_backend(Path(model), backend, device, amp, cuda_graphs, threads, compile)


def _open_backend(
    path: Path, backend: str, device: str, amp: bool, cuda_graphs: bool, threads: int | None, compile: bool = False
) -> Runner:
    if backend not in BACKENDS:
        raise TuneppError(f"unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    if not path.is_file():
        raise TuneppError(f"{path}: model file not found")
    kind = model_kind(path)
    if backend == "auto":
        backend = {"engine": "trt", "onnx": "ort", "checkpoint": "torch"}[kind]
    dev = resolve_device(device)

    if backend == "trt":
        if kind != "engine":
            raise TuneppError(f"{path}: the trt backend runs engines; build one with `tunepp export trt --onnx ...`")
        from tunepp_deploy.infer.runners.trt_runner import TrtRunner

        return TrtRunner(path, dev if dev.type == "cuda" else torch.device("cuda"))
    if kind == "engine":
        raise TuneppError(f"{path}: a TensorRT engine runs only on --backend trt")

    if backend == "ort":
        from tunepp_deploy.infer.runners.ort_runner import OrtRunner

        if kind == "onnx":
            _, meta = read_onnx_meta(path)
            return OrtRunner(str(path), meta, dev, threads)
        from tunepp_deploy.export.onnx_export import build_onnx, load_checkpoint_network

        net, cfg = load_checkpoint_network(path)
        meta = meta_for(net, cfg)
        return OrtRunner(build_onnx(net, meta).SerializeToString(), meta, dev, threads)

    if kind == "onnx":
        raise TuneppError(f"{path}: the torch backend needs a checkpoint (.pt); run ONNX files with --backend ort")
    from tunepp_deploy.export.onnx_export import load_checkpoint_network
    from tunepp_deploy.infer.runners.torch_runner import TorchRunner

    net, cfg = load_checkpoint_network(path)
    if threads:
        torch.set_num_threads(threads)
    return TorchRunner(net, meta_for(net, cfg), dev, amp=amp, cuda_graphs=cuda_graphs, compile=compile)


__all__ = ["BACKENDS", "model_kind", "open_runner", "read_model_meta", "read_onnx_meta", "resolve_device"]
