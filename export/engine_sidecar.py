"""The JSON sidecar written next to every TensorRT engine (``model.engine`` -> ``model.engine.json``).

A serialized engine is only valid for the TensorRT version and GPU architecture it was built on
(unless built version/hardware-compatible, which is slower), and deserialising it elsewhere fails
with a long native error or, worse, a crash. The sidecar records what the engine was built with and
from — TensorRT version, compute capability, GPU name, the ONNX file's SHA-256, the precision and
the batch profile — plus the ONNX file's tunepp metadata, so ``tunepp infer --model model.engine``
needs nothing else and a mismatch is one line before TensorRT is touched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import ModelMismatchError

from .metadata import ModelMeta

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class EngineInfo:
    """What a TensorRT engine was built with (see module docstring)."""

    tensorrt_version: str
    compute_capability: str
    gpu_name: str
    onnx_sha256: str
    precision: str
    profile: dict[str, list[list[int]]]
    tunepp: dict[str, str] = field(default_factory=dict)
    format: int = SIDECAR_FORMAT

    @property
    def meta(self) -> ModelMeta:
        return ModelMeta.from_props(self.tunepp, "engine sidecar")


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine)
    return p.with_name(p.name + ".json")


def write_sidecar(engine: str | Path, info: EngineInfo) -> Path:
    """Write the sidecar atomically next to ``engine``."""
    path = sidecar_path(engine)
    text = json.dumps(asdict(info), indent=2, sort_keys=True)
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


def read_sidecar(engine: str | Path) -> EngineInfo:
    """Read and validate an engine's sidecar; a missing or foreign one is a one-line error."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise ModelMismatchError(f"{engine}: no {path.name} next to it (build engines with `tunepp export trt`)")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("format") != SIDECAR_FORMAT:
            raise ModelMismatchError(f"{path}: sidecar format {data.get('format')}, expected {SIDECAR_FORMAT}")
        return EngineInfo(**data)
    except ModelMismatchError:
        raise
    except (ValueError, TypeError) as e:
        raise ModelMismatchError(f"{path}: not a tunepp engine sidecar ({type(e).__name__})") from None


def check_compatible(info: EngineInfo, engine: str | Path, tensorrt_version: str, compute_capability: str) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU architecture."""
    if info.tensorrt_version != tensorrt_version:
        raise ModelMismatchError(
            f"{engine}: built with TensorRT {info.tensorrt_version}, this is TensorRT {tensorrt_version}; "
            "rebuild it with `tunepp export trt`"
        )
    if info.compute_capability != compute_capability:
        raise ModelMismatchError(
            f"{engine}: built for a GPU of compute capability {info.compute_capability} ({info.gpu_name}), "
            f"this GPU is {compute_capability}; rebuild it on this machine"
        )


__all__ = ["SIDECAR_FORMAT", "EngineInfo", "check_compatible", "read_sidecar", "sidecar_path", "write_sidecar"]
