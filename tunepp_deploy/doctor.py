"""``tunepp doctor``: what this machine can run, and for everything it cannot, why.

Each check imports lazily and never raises: a missing optional package (CuPy, TensorRT,
onnxruntime-gpu, OpenVINO) is a normal state on a CPU laptop or CI runner and is reported with the reason and
what to install, so users do not have to decode ImportErrors when a backend is unavailable.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    ok: bool
    detail: str


def _torch() -> list[Check]:
    import torch

    out = [Check("torch", True, f"{torch.__version__} (threads: {torch.get_num_threads()})")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cap = torch.cuda.get_device_capability(0)
        bf16 = torch.cuda.is_bf16_supported()
        out.append(Check("torch CUDA", True, f"CUDA {torch.version.cuda}, {names}, sm {cap[0]}.{cap[1]}, bf16={bf16}"))
    elif torch.version.cuda is None:
        out.append(Check("torch CUDA", False, "this torch is a CPU-only build"))
    else:
        out.append(Check("torch CUDA", False, f"built for CUDA {torch.version.cuda} but no GPU/driver is visible"))
    return out


def _cupy() -> Check:
    try:
        import cupy
    except Exception as e:
        return Check("CuPy", False, f"not installed ({type(e).__name__}); pip install cupy-cuda12x (or -cuda13x)")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        return Check("CuPy", n > 0, f"{cupy.__version__}, {n} device(s)")
    except Exception as e:
        return Check("CuPy", False, f"{cupy.__version__} imports but has no usable device ({type(e).__name__})")


def _numba_cuda() -> Check:
    try:
        from numba import cuda
    except Exception as e:
        return Check("Numba-CUDA", False, f"numba.cuda unavailable ({type(e).__name__}: {e})")
    try:
        if cuda.is_available():
            return Check("Numba-CUDA", True, f"device {cuda.get_current_device().name!r}")
        return Check("Numba-CUDA", False, "numba.cuda imports but finds no CUDA driver/device")
    except Exception as e:
        return Check("Numba-CUDA", False, f"device query failed ({type(e).__name__})")


def _onnx() -> list[Check]:
    out = []
    try:
        import onnx

        out.append(Check("ONNX", True, onnx.__version__))
    except Exception as e:
        out.append(Check("ONNX", False, f"not importable ({type(e).__name__}); export needs it"))
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        out.append(Check("ONNX Runtime", True, f"{ort.__version__}, providers {providers}"))
        cuda = "CUDAExecutionProvider" in providers
        out.append(Check("ONNX Runtime CUDA", cuda, "CUDAExecutionProvider available" if cuda else
                         "CPU build of onnxruntime (install onnxruntime-gpu for the CUDA provider)"))
    except Exception as e:
        out.append(Check("ONNX Runtime", False, f"not importable ({type(e).__name__}); --backend ort unavailable"))
    return out


def _openvino() -> list[Check]:
    """OpenVINO (optional extra ``[openvino]``): version, CPU capabilities and the default precision it
    would pick (bf16 on AVX512-BF16/AMX CPUs, which the runner overrides with an f32 pin), then what
    ``--backend auto`` runs an ONNX file on here."""
    from tunepp_deploy.infer.runners.openvino_runner import EXTRA_HINT, element_type_name

    try:
        import openvino as ov
    except Exception as e:
        checks = [Check("OpenVINO", False, f"not installed ({type(e).__name__}); {EXTRA_HINT}; "
                                           "--backend openvino unavailable")]
    else:
        try:
            core = ov.Core()
            caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            default = element_type_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
            detail = (f"{ov.__version__.split('-')[0]}, CPU capabilities {caps}, plugin default precision "
                      f"{default} (tunepp pins f32 unless bf16 is asked)")
            checks = [Check("OpenVINO", True, detail)]
        except Exception as e:
            checks = [Check("OpenVINO", False, f"{ov.__version__.split('-')[0]} imports but its CPU plugin fails "
                                               f"({type(e).__name__})")]
    try:
        import torch

        from tunepp_deploy.infer.runners.load import auto_backend

        backend, reason = auto_backend("onnx", torch.device("cpu"))
        checks.append(Check("--backend auto (ONNX, CPU)", True, f"{backend}: {reason}"))
    except Exception as e:
        checks.append(Check("--backend auto (ONNX, CPU)", False, f"cannot decide ({type(e).__name__})"))
    return checks


def _tensorrt() -> Check:
    try:
        import tensorrt as trt
    except Exception as e:
        return Check("TensorRT", False, f"not installed ({type(e).__name__}); pip install tensorrt-cu12 from NVIDIA's "
                     "index, or use JetPack on Jetson; --backend trt unavailable")
    major = int(trt.__version__.split(".")[0])
    path = "strongly typed + ModelOpt Q/DQ" if major >= 11 else "builder flags + calibrator"
    return Check("TensorRT", True, f"{trt.__version__} (fp16/int8 via {path})")


def _kernels() -> list[Check]:
    try:
        from tunepp_deploy.kernels import available_backends
    except Exception as e:
        return [Check("kernels", False, f"tunepp_deploy.kernels not importable ({type(e).__name__})")]
    return [Check(f"kernels: {name}", ok, detail) for name, (ok, detail) in available_backends().items()]


def run_checks() -> list[Check]:
    """All checks, in the order the doctor prints them."""
    checks = [Check("Python", True, f"{sys.version.split()[0]} on {platform.platform()}")]
    checks += _torch()
    checks += [_cupy(), _numba_cuda()]
    checks += _onnx()
    checks += _openvino()
    checks.append(_tensorrt())
    checks += _kernels()
    return checks


__all__ = ["Check", "run_checks"]
