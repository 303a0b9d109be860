"""TensorRT backend (TensorRT 10 and 11 named-tensor API). UNVERIFIED: TensorRT is not installable
on the machines this was written on; the code follows the documented Python API.

Buffers are torch CUDA tensors bound by ``data_ptr()`` and the engine is enqueued on torch's
current stream (``execute_async_v3(stream.cuda_stream)``), so nothing needs pycuda or cuda-python
and the outputs are ordinary torch tensors the MC engine can stitch on the GPU. The engine's
sidecar is checked (TensorRT version, compute capability) *before* deserialising.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.export.engine_sidecar import EngineInfo, check_compatible, read_sidecar
from tunepp_deploy.export.metadata import INPUT_NAME, OUTPUT_NAMES
from tunepp_deploy.infer.runners.base import Runner


def import_tensorrt():
    """``import tensorrt`` or a one-line error saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TuneppError(
            f"TensorRT is not installed ({e}); install it from NVIDIA (pip install tensorrt-cu12, or JetPack on Jetson)"
        ) from None
    return trt


def gpu_capability(device: torch.device) -> str:
    """``"major.minor"`` compute capability of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


class TrtRunner(Runner):
    """Runs a serialized TensorRT engine built by ``tunepp export trt``."""

    name = "trt"

    def __init__(self, engine_path: str | Path, device: torch.device, info: EngineInfo | None = None) -> None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise TuneppError("the trt backend needs a CUDA device (torch sees none)")
        info = info or read_sidecar(engine_path)
        super().__init__(info.meta, device)
        trt = import_tensorrt()
        check_compatible(info, engine_path, trt.__version__, gpu_capability(device))
        self.info = info
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise TuneppError(f"{engine_path}: TensorRT could not deserialize the engine")
            self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        missing = set(self.meta.input_names) | set(OUTPUT_NAMES)
        if missing - names:
            raise TuneppError(f"{engine_path}: engine lacks tensors {sorted(missing - names)}")
        self._out_dtype = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in OUTPUT_NAMES}

    @property
    def max_rows(self) -> int | None:
        rows = self.info.profile.get(self.meta.mask_names[0] if self.meta.sites else INPUT_NAME)
        return int(rows[2][0]) if rows else None

    def describe(self) -> str:
        return f"trt on {self.device} ({self.info.precision}, TensorRT {self.info.tensorrt_version})"

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {INPUT_NAME: x.to(self.device, torch.float32).contiguous()}
        inputs.update({n: m.to(self.device, torch.float32).contiguous()
                       for n, m in zip(self.meta.mask_names, masks, strict=True)})
        for name, t in inputs.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._out_dtype[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TuneppError("TensorRT execution failed (see the TensorRT log above)")
        return outs[0], outs[1]

    def close(self) -> None:
        self.context = None
        self.engine = None


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise TuneppError(f"engine output type {dt} is not supported (expected float32/float16)")
    return table[dt]


__all__ = ["TrtRunner", "gpu_capability", "import_tensorrt"]
