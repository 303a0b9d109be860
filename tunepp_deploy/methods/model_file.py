"""What a model file is: which uncertainty method it belongs to and which backend runs it.

``tunepp infer --method auto`` and ``tunepp export onnx`` take any method's model, so the method is
read from the file rather than asked for: a checkpoint (``.pt``) names it in its ``"method"`` key
(``"variational"``, ``"segwithu"``; TUNE++'s own checkpoints have none), an ONNX file in its
``tunepp_method`` metadata prop (TUNE++'s exports have none), and a TensorRT engine is always
TUNE++ (only its graph is built into engines). A file that cannot be read is reported as TUNE++ so
that TUNE++'s loader gives its usual one-line error about it.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.infer.runners.load import model_kind

METHODS = ("tunepp", "segwithu", "variational")
#: The ONNX metadata prop the other methods' exporters write.
ONNX_METHOD_PROP = "tunepp_method"


def detect_method(path: str | Path) -> str:
    """``tunepp``, ``segwithu`` or ``variational`` (module docstring)."""
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
            props = {q.key: q.value for q in onnx.load(str(p), load_external_data=False).metadata_props}
        except Exception:  # protobuf DecodeError and friends
            return "tunepp"
        method = props.get(ONNX_METHOD_PROP)
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


__all__ = ["METHODS", "ONNX_METHOD_PROP", "detect_method", "resolve_method", "single_backend"]
