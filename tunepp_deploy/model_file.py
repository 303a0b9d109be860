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
import numbers
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
            with warnings.catch_warnings():  # torch's pickle-protocol warnings would be extra stderr lines
                warnings.simplefilter("ignore")
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


# ---------------------------------------------------------------------------------------------------
# metadata values: every value a model file carries is parsed and range-checked here, so a corrupt,
# non-numeric or absurd value is one line naming the file and the key, never a JSON traceback or a
# NaN that propagates into the maps.

#: Temperatures accepted from a model file or a caller: finite and within ``[0.01, 100]``, the range
#: ``tunepp calibrate temperature`` fits in (``|log T| <= log 100``). Outside it the tempered softmax
#: is a one-hot (T -> 0: 1e-30 passes ``> 0`` yet turns every logit into +-inf) or uniform (T -> inf).
TEMPERATURE_RANGE = (0.01, 100.0)
#: Relative slack on the range so that ``exp(+-log 100)`` from the fit's bound is accepted.
_RANGE_SLACK = 1e-9


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json_prop(props: Mapping[str, str], key: str, where: str | Path) -> Any:
    """The JSON value of metadata prop ``key``; a missing key or broken JSON is one line naming the key."""
    if key not in props:
        raise ModelMismatchError(f"{where}: metadata key {key!r} is missing")
    raw = props[key]
    try:
        return json.loads(raw)
    except (ValueError, TypeError) as e:
        raise ModelMismatchError(f"{where}: metadata key {key!r} is not valid JSON ({_short(raw, 40)}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def meta_number(value: Any, key: str, where: str | Path, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a finite float within ``[lo, hi]``; anything else (a string, a bool, NaN) is one line."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ModelMismatchError(f"{where}: metadata {key!r} value {_short(value)} is not a number")
    v = float(value)
    if not math.isfinite(v):
        raise ModelMismatchError(f"{where}: metadata {key!r} value {v} is not finite")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ModelMismatchError(f"{where}: metadata {key!r} value {v:g} is outside {lo:g}..{hi:g}")
    return v


def meta_ints(value: Any, key: str, where: str | Path, length: int | None = None, lo: int = 1,
              hi: int = 1 << 16) -> tuple[int, ...]:
    """``value`` as a tuple of whole numbers in ``[lo, hi]`` (``length`` of them when given), e.g. a window."""
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        want = f"a list of {length} whole numbers" if length is not None else "a list of whole numbers"
        raise ModelMismatchError(f"{where}: metadata {key!r} value {_short(value)} is not {want}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= int(v) <= hi:
            raise ModelMismatchError(f"{where}: metadata {key!r} value {_short(value)} must hold whole numbers "
                                     f"in {lo}..{hi}")
        out.append(int(v))
    return tuple(out)


def check_temperature(raw: Any, where: str | Path, classes: int | None = None) -> list[float]:
    """The one validator of a temperature, wherever it comes from (ONNX prop, checkpoint key, caller).

    ``raw``: a number, a list/tuple of numbers or a tensor; each value must be finite and within
    :data:`TEMPERATURE_RANGE`, and there must be 1 or ``classes`` of them. Anything else is a one-line
    :class:`ModelMismatchError`, so a temperature is never applied unless it is sane.
    """
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().reshape(-1).tolist()
    elif isinstance(raw, numbers.Real) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list | tuple) or not raw:
        raise ModelMismatchError(f"{where}: stored temperature {_short(raw)} is not a list of numbers")
    lo, hi = TEMPERATURE_RANGE
    values = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ModelMismatchError(f"{where}: stored temperature {_short(raw)} holds a non-number ({_short(v, 20)})")
        f = float(v)
        if not (math.isfinite(f) and lo * (1 - _RANGE_SLACK) <= f <= hi * (1 + _RANGE_SLACK)):
            raise ModelMismatchError(f"{where}: stored temperature {f:g} is not finite within {lo:g}..{hi:g} "
                                     "(the range `tunepp calibrate temperature` fits)")
        values.append(f)
    if classes is not None and len(values) not in (1, classes):
        raise ModelMismatchError(f"{where}: stored temperature has {len(values)} values, expected 1 or {classes}")
    return values


def read_temperature(model: str | Path) -> list[float] | None:
    """The temperature stored in a checkpoint or ONNX file (None when there is none); a corrupt,
    non-numeric, non-finite or out-of-range value (:func:`check_temperature`) is a one-line error,
    never applied."""
    p = Path(model)
    kind = model_kind(p)
    if kind == "onnx":
        props = read_onnx_props(p)
        key = next((k for k in TEMPERATURE_PROPS if k in props), None)
        if key is None:
            return None
        return check_temperature(parse_json_prop(props, key, p), f"{p} (metadata {key!r})")
    if kind == "checkpoint":
        from tunepp_deploy.train.checkpoint import read_checkpoint

        t = read_checkpoint(p).get(TEMPERATURE_KEY)
        if t is None:
            return None
        return check_temperature(t, f"{p} (key {TEMPERATURE_KEY!r})")
    raise TuneppError(f"{p}: temperatures are stored in checkpoints and ONNX files, not engines")


__all__ = [
    "METHODS",
    "ONNX_METHOD_PROP",
    "TEMPERATURE_RANGE",
    "check_temperature",
    "detect_method",
    "meta_ints",
    "meta_number",
    "model_kind",
    "parse_json_prop",
    "read_onnx_props",
    "read_temperature",
    "resolve_method",
    "single_backend",
]
