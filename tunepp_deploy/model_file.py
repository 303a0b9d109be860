"""What a model file is and what it says about itself — read in one low-level place.

Everything that opens a model (``infer/``, ``export/``, ``calibrate/``, the predictors) asks here:
the file's kind from its name (checkpoint, ONNX, TensorRT engine), an ONNX file's ``metadata_props``
(one-line error for a file that is not ONNX), the uncertainty method it belongs to (a checkpoint's
``"method"`` key, an ONNX file's ``tunepp_method`` prop; TUNE++'s own files have none; an engine is
always TUNE++), the backend a single-backend method's file runs on, and a stored temperature. This
module imports nothing of ``infer/``, ``export/`` or ``calibrate/``, so they no longer import each other
to learn about a file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import torch

from tunepp_deploy.errors import ModelMismatchError, TuneppError

METHODS = ("tunepp", "segwithu", "variational")
#: The ONNX metadata prop the other methods' exporters write.
ONNX_METHOD_PROP = "tunepp_method"
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
#: Where ``tunepp calibrate temperature`` stores T: checkpoint key / ONNX props (plain and prefixed).
TEMPERATURE_KEY = "temperature"
TEMPERATURE_PROPS = ("temperature", "tunepp.temperature")


def model_kind(path: Path) -> str:
    """``checkpoint``, ``onnx`` or ``engine`` from the file name."""
    name = Path(path).name.lower()
    if name.endswith(ONNX_SUFFIXES):
        return "onnx"
    if name.endswith(ENGINE_SUFFIXES):
        return "engine"
    return "checkpoint"


def read_onnx_props(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (weights not loaded); a file that is not ONNX is one line."""
    p = Path(path)
    if not p.is_file():
        raise TuneppError(f"{p}: model file not found")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelMismatchError(f"{p}: not a readable ONNX file ({type(e).__name__})") from None
    return {q.key: q.value for q in model.metadata_props}


def detect_method(path: str | Path) -> str:
    """``tunepp``, ``segwithu`` or ``variational`` (module docstring). An unreadable file is reported as
    TUNE++ so that TUNE++'s loader gives its usual one-line error about it."""
    p = Path(path)
    if not p.is_file():
        raise TuneppError(f"{p}: model file not found")
    kind = model_kind(p)
    method = None
    if kind == "checkpoint":
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # corrupt or foreign: TUNE++'s loader words the error
            return "tunepp"
        method = ckpt.get("method") if isinstance(ckpt, dict) else None
    elif kind == "onnx":
        try:
            method = read_onnx_props(p).get(ONNX_METHOD_PROP)
        except ModelMismatchError:
            return "tunepp"
    if method is None:
        return "tunepp"
    if method not in METHODS:
        raise ModelMismatchError(f"{p}: model of unknown method {method!r} (this tunepp knows {', '.join(METHODS)})")
    return str(method)


def resolve_method(requested: str, path: str | Path) -> str:
    """``requested`` (``auto`` or a method) checked against the file: a mismatch is one line."""
    if requested != "auto" and requested not in METHODS:
        raise TuneppError(f"unknown --method '{requested}' (use auto, {', '.join(METHODS)})")
    found = detect_method(path)
    if requested not in ("auto", found):
        raise ModelMismatchError(f"{path}: is a {found} model, not {requested} (use --method {found} or auto)")
    return found


def single_backend(path: str | Path, backend: str, method: str) -> str:
    """``torch`` or ``ort`` for a SegWithU / variational model: ``.pt`` runs on torch, ``.onnx`` on ONNX Runtime.

    These methods have no in-memory export on load and no TensorRT engines, so the file decides; a
    contradicting ``--backend`` is a one-line error rather than a silent switch, and so is a missing file.
    """
    if not Path(path).is_file():
        raise TuneppError(f"{path}: model file not found")
    kind = model_kind(Path(path))
    natural = {"checkpoint": "torch", "onnx": "ort"}.get(kind)
    if natural is None:
        raise TuneppError(f"{path}: {method} models run from a checkpoint (.pt) or an ONNX file, not an engine")
    if backend not in ("auto", natural):
        raise TuneppError(f"{path}: a {method} {kind} runs on --backend {natural} (or auto), not {backend}")
    return natural


def _finite_positive(values: list[float], where: str) -> list[float]:
    if not values or not all(math.isfinite(v) and v > 1e-6 for v in values):
        raise ModelMismatchError(f"{where}: stored temperature {values} is not a list of finite values > 1e-6")
    return values


def read_temperature(model: str | Path) -> list[float] | None:
    """The temperature stored in a checkpoint or ONNX file (None when there is none); a corrupt,
    non-finite or non-positive value is a one-line error, never applied."""
    p = Path(model)
    kind = model_kind(p)
    if kind == "onnx":
        props = read_onnx_props(p)
        raw = next((props[k] for k in TEMPERATURE_PROPS if k in props), None)
        if raw is None:
            return None
        try:
            values = [float(v) for v in json.loads(raw)]
        except (ValueError, TypeError) as e:
            raise ModelMismatchError(f"{p}: corrupt temperature metadata ({type(e).__name__})") from None
        return _finite_positive(values, str(p))
    if kind == "checkpoint":
        from tunepp_deploy.train.checkpoint import read_checkpoint

        t = read_checkpoint(p).get(TEMPERATURE_KEY)
        if t is None:
            return None
        try:
            values = [float(v) for v in (t.reshape(-1).tolist() if isinstance(t, torch.Tensor) else t)]
        except (ValueError, TypeError) as e:
            raise ModelMismatchError(f"{p}: corrupt stored temperature ({type(e).__name__})") from None
        return _finite_positive(values, str(p))
    raise TuneppError(f"{p}: temperatures are stored in checkpoints and ONNX files, not engines")


__all__ = [
    "METHODS",
    "ONNX_METHOD_PROP",
    "detect_method",
    "model_kind",
    "read_onnx_props",
    "read_temperature",
    "resolve_method",
    "single_backend",
]
