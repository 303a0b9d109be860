"""Open a model file on a backend: ``--model CKPT|ONNX|ENGINE`` x ``--backend auto|torch|ort|openvino|trt``.

``auto`` follows the file: an engine runs on TensorRT, a checkpoint on PyTorch (CUDA + AMP when
available), an ONNX file on the fastest installed backend for the device (:func:`auto_backend`):
OpenVINO on a CPU when the ``[openvino]`` extra is installed, else ONNX Runtime (CUDA provider when
onnxruntime-gpu and a GPU are there). A checkpoint can also run on ``ort`` or ``openvino``: it is
exported in memory first (the same graph ``tunepp export onnx`` writes). Every foreign or mismatched
file is a one-line :class:`ModelMismatchError`.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.export.metadata import ModelMeta, meta_for
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.model_file import model_kind

BACKENDS = ("auto", "torch", "ort", "openvino", "trt")


#: What ``--backend auto`` picks and why, per model kind. Measured, not timed at run time: on the
#: project's 2-core box (AMD EPYC with AVX512-BF16, load average ~5.6, nice 19, 2 threads), one MC call
#: of the phantom config (1 window 48x48x32 x 25 rows), median of 5 after a warm-up per backend
#: (min-max): torch 8.36 s (8.08-10.89), ONNX Runtime 3.50 s (2.76-3.97), OpenVINO fp32 2.05 s
#: (1.73-2.70); docs/openvino.md. So an ONNX file on a CPU runs on OpenVINO when it is installed.
#: A checkpoint stays on torch: ort/openvino would first export it in memory, 47 s on that box, which
#: a single case does not win back; `tunepp export onnx` once instead.
AUTO_REASONS = {
    "trt": "a TensorRT engine runs only on TensorRT",
    "torch": "a checkpoint runs on torch (ort/openvino would export it in memory first, ~47 s on 2 cores); "
             "export it once with `tunepp export onnx` for OpenVINO (one MC call 2.05 s vs torch 8.36 s)",
    "openvino": "the fastest installed CPU backend for ONNX (one MC call: OpenVINO 2.05 s, ONNX Runtime 3.50 s, "
                "2 threads; docs/openvino.md)",
    "ort-cpu": "OpenVINO is not installed (pip install 'tunepp-deploy[openvino]': one MC call 2.05 s vs ONNX "
               "Runtime's 3.50 s on 2 threads)",
    "ort-cuda": "ONNX Runtime on the GPU (OpenVINO runs on the CPU only)",
}


def auto_backend(kind: str, device: torch.device) -> tuple[str, str]:
    """``(backend, reason)`` that ``--backend auto`` picks for a ``kind`` model on ``device`` (:data:`AUTO_REASONS`).

    Decided from what is installed, never by timing at run time: a timing under a loaded box would make
    the backend (and so the last bits of the maps) depend on the machine's load at that moment.
    """
    from tunepp_deploy.infer.runners.openvino_runner import openvino_version

    if kind == "engine":
        return "trt", AUTO_REASONS["trt"]
    if kind == "checkpoint":
        return "torch", AUTO_REASONS["torch"]
    if device.type != "cpu":
        return "ort", AUTO_REASONS["ort-cuda"]
    if openvino_version() is not None:
        return "openvino", AUTO_REASONS["openvino"]
    return "ort", AUTO_REASONS["ort-cpu"]


def describe_auto(model: str | Path, device: str = "auto") -> str:
    """One line saying what ``--backend auto`` runs ``model`` on and why (printed by ``tunepp infer``)."""
    backend, reason = auto_backend(model_kind(Path(model)), resolve_device(device))
    return f"--backend auto: {backend}, {reason}"


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
    precision: str = "fp32",
) -> Runner:
    """Load ``model`` on ``backend`` (module docstring). The caller closes the runner.

    A runner executes the graph as exported: a temperature stored by ``tunepp calibrate temperature``
    is applied by the TUNE++ predictor (:mod:`tunepp_deploy.predictors.tunepp`), not here. ``compile``
    runs a checkpoint's trunk and head through ``torch.compile`` (torch backend only). ``precision``:
    ``fp32``, or ``bf16`` / ``int8`` asked explicitly on the openvino backend (the other backends take
    only ``fp32`` here: torch's CUDA precision is ``amp``, TensorRT's is fixed when the engine is built).
    """
    return _open_backend(Path(model), backend, device, amp, cuda_graphs, threads, compile, precision)


def _open_backend(
    path: Path, backend: str, device: str, amp: bool, cuda_graphs: bool, threads: int | None, compile: bool = False,
    precision: str = "fp32",
) -> Runner:
    if backend not in BACKENDS:
        raise TuneppError(f"unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    if not path.is_file():
        raise TuneppError(f"{path}: model file not found")
    kind = model_kind(path)
    dev = resolve_device(device)
    if backend == "auto":
        backend = auto_backend(kind, dev)[0]
    if backend == "openvino" and device == "auto":
        dev = torch.device("cpu")  # OpenVINO's CPU plugin: a visible GPU does not make --device auto an error
    if precision not in ("fp32", "f32") and backend != "openvino":
        raise TuneppError(f"precision {precision} is an openvino-backend option (got --backend {backend})")

    if backend == "trt":
        if kind != "engine":
            raise TuneppError(f"{path}: the trt backend runs engines; build one with `tunepp export trt --onnx ...`")
        from tunepp_deploy.infer.runners.trt_runner import TrtRunner

        return TrtRunner(path, dev if dev.type == "cuda" else torch.device("cuda"))
    if kind == "engine":
        raise TuneppError(f"{path}: a TensorRT engine runs only on --backend trt")

    if backend == "openvino":
        from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner, import_openvino

        import_openvino()  # the missing extra is one line before an in-memory export is paid for
        if kind == "onnx":
            _, meta = read_onnx_meta(path)
            return OpenVinoRunner(str(path), meta, dev, threads, precision)
        from tunepp_deploy.export.onnx_export import build_onnx, load_checkpoint_network

        net, cfg = load_checkpoint_network(path)
        meta = meta_for(net, cfg)
        return OpenVinoRunner(build_onnx(net, meta).SerializeToString(), meta, dev, threads, precision)

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
        raise TuneppError(f"{path}: the torch backend needs a checkpoint (.pt); run ONNX files with --backend ort "
                         "or openvino")
    from tunepp_deploy.export.onnx_export import load_checkpoint_network
    from tunepp_deploy.infer.runners.torch_runner import TorchRunner

    net, cfg = load_checkpoint_network(path)
    if threads:
        torch.set_num_threads(threads)
    return TorchRunner(net, meta_for(net, cfg), dev, amp=amp, cuda_graphs=cuda_graphs, compile=compile)


__all__ = ["AUTO_REASONS", "BACKENDS", "auto_backend", "describe_auto", "model_kind", "open_runner", "read_model_meta",
           "read_onnx_meta", "resolve_device"]
