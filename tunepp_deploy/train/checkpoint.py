"""Checkpoints that load safely and refuse to load into the wrong network.

A checkpoint is a plain dict of tensors and JSON-like values so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs). It carries the full config, the
package version and a format number; loading it for a config whose network or classes differ
is a one-line :class:`ModelMismatchError` rather than a wall of ``size mismatch`` messages.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from tunepp_deploy import __version__
from tunepp_deploy.config.load import config_from_dict, config_to_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.model.blocks.topology_branch import without_retired

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: TuneppConfig, **extra: Any) -> Path:
    """Write ``model``'s weights, ``cfg`` and ``extra`` (epoch, optimizer state, ...) atomically."""
    p = Path(path)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": config_to_dict(cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    write_atomic(p, lambda t: torch.save(state, t))
    return p


def _load(p: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of an existing file; anything unreadable is one line naming ``what``."""
    if not p.is_file():
        raise TuneppError(f"{p}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a second stderr line for a user
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/foreign files
        text = str(e).strip()
        if isinstance(e, pickle.UnpicklingError) and "weights_only" in text:
            if re.search(r"\bglobal\b", text, re.IGNORECASE):  # the pickle names code to run
                raise ModelMismatchError(unsafe_pickle_message(p, text)) from None
            # garbage: say what the unpickler saw, never torch's advice to retry with weights_only=False
            after = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
            detail = next((ln.strip() for ln in after.splitlines() if ln.strip()), "corrupt data")
            raise ModelMismatchError(f"{p}: not a {what} checkpoint (unreadable: {detail[:120]})") from None
        msg = text.splitlines()[0] if text else type(e).__name__
        raise ModelMismatchError(f"{p}: not a {what} checkpoint ({msg[:160]})") from None


def unsafe_pickle_message(path: Path, torch_message: str) -> str:
    """The refusal of a checkpoint that ``weights_only=True`` will not unpickle, in one line.

    torch's own message advises retrying with ``weights_only=False``, which would run whatever code the
    pickle names; a user must not be told to do that for a file of unknown origin, so the message names
    the refused object (``GLOBAL posix.system``) and says why, nothing more.
    """
    found = re.search(r"GLOBAL\s+([\w.]+)", torch_message)
    what = f" ({found.group(1)})" if found else ""
    return (f"{path}: refused for safety: the checkpoint contains objects that are not plain tensors or "
            f"containers{what}, and tunepp loads checkpoints without running pickled code")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; unreadable or foreign files raise one line."""
    p = Path(path)
    ckpt = _load(p, "tunepp")
    if isinstance(ckpt, dict) and ckpt.get("method") is not None:  # another method's (variational, segwithu)
        raise ModelMismatchError(f"{p}: a {ckpt['method']}-method checkpoint, not a TUNE++ one "
                                 f"(`tunepp infer --method auto` runs it)")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ModelMismatchError(f"{p}: not a tunepp checkpoint (missing state_dict/config)")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelMismatchError(
            f"{p}: checkpoint format {ckpt.get('format')} from tunepp {ckpt.get('version')}, "
            f"this is tunepp {__version__} (format {CHECKPOINT_FORMAT})"
        )
    return ckpt


def read_method_checkpoint(path: str | Path, method: str, what: str, trained_by: str) -> dict[str, Any]:
    """The checkpoint dict of another uncertainty method (``ckpt["method"] == method``, e.g. the
    SegWithU head or a variational network), loaded like :func:`read_checkpoint`; a missing,
    unreadable or foreign file is one line naming ``what`` and the command that makes one."""
    p = Path(path)
    ckpt = _load(p, what)
    if not isinstance(ckpt, dict) or ckpt.get("method") != method:
        raise ModelMismatchError(f"{p}: not a {what} checkpoint (train one with `{trained_by}`)")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], source: str = "checkpoint") -> TuneppConfig:
    """The config stored in a checkpoint, validated."""
    return config_from_dict(ckpt["config"], source)


def check_compatible(ckpt_cfg: TuneppConfig, cfg: TuneppConfig, source: str) -> None:
    """Refuse a checkpoint whose network shape or class list differs from ``cfg``'s."""
    if ckpt_cfg.model != cfg.model:
        diff = [k for k in type(cfg.model).model_fields if getattr(cfg.model, k) != getattr(ckpt_cfg.model, k)]
        raise ModelMismatchError(
            f"{source}: checkpoint was trained with config '{ckpt_cfg.name}' whose model differs in {', '.join(diff)}"
        )
    if list(ckpt_cfg.data.classes) != list(cfg.data.classes):
        raise ModelMismatchError(
            f"{source}: checkpoint classes {ckpt_cfg.data.classes} differ from config classes {cfg.data.classes}"
        )


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], source: str) -> None:
    """Load the state dict strictly, turning key/shape mismatches into one line.

    Keys an older layout had and this one retired (weights with no effect on the outputs,
    :func:`~tunepp_deploy.model.blocks.topology_branch.without_retired`) are dropped first.
    """
    try:
        model.load_state_dict(without_retired(model, ckpt["state_dict"]), strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelMismatchError(f"{source}: weights do not fit this network ({first[:160]})") from None
