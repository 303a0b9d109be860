"""Run backbone + SegWithU head on torch (``head.pt``) or ONNX Runtime (``segwithu.onnx``).

Either way the model is a :data:`WindowFn`: windows ``[B, in, *window]`` -> the graph's
:data:`~.export.OUTPUTS` (raw logits, tempered logits, temperature, U_cal, U_rnk, U_epi) as CPU
tensors. The ONNX file is enough on its own: :func:`~.export.export_segwithu` stores the backbone's
config (spacing, normalisation, classes, inference defaults) and the window in its metadata props.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from tunepp_deploy.config.load import config_from_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import ConfigError, ModelMismatchError
from tunepp_deploy.infer.runners.load import resolve_device
from tunepp_deploy.methods.model_file import single_backend
from tunepp_deploy.methods.segwithu.export import OUTPUTS
from tunepp_deploy.methods.segwithu.model import SegWithU, load_segwithu

WindowFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]  # -> OUTPUTS of export.py


def torch_window_fn(model: SegWithU, device: torch.device | str = "cpu") -> WindowFn:
    """``model`` as a :data:`WindowFn` (no gradients; outputs back on the CPU)."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            logits, o = model(x.to(device))
        return tuple(t.float().cpu() for t in (logits, o.tempered_logits, o.temperature, o.u_cal, o.u_rnk, o.u_epi))

    return run


@dataclass
class SegWithURunner:
    """A loaded SegWithU model: its window function, config, window and a one-line description."""

    window_fn: WindowFn
    cfg: TuneppConfig
    window: tuple[int, ...]
    name: str
    device: torch.device

    def describe(self) -> str:
        return f"{self.name} on {self.device} (segwithu, single pass, fp32)"


def _ort_window_fn(path: Path, device: torch.device, threads: int | None) -> tuple[WindowFn, dict[str, str]]:
    from tunepp_deploy.infer.runners.ort_runner import make_session

    try:
        props = {q.key: q.value for q in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelMismatchError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    if props.get("tunepp_method") != "segwithu":
        raise ModelMismatchError(f"{path}: not a SegWithU ONNX file")
    session = make_session(str(path), device, threads)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        try:
            outs = session.run(list(OUTPUTS), {"x": x.detach().to("cpu", torch.float32).contiguous().numpy()})
        except Exception as e:  # ORT's exception classes derive from Exception only: make it a case failure
            raise RuntimeError(f"ONNX Runtime: {str(e).strip().splitlines()[0][:200] if str(e).strip() else e}") \
                from None
        return tuple(torch.from_numpy(o) for o in outs)

    return run, props


def open_segwithu(
    model: str | Path, backend: str = "auto", device: str = "auto", threads: int | None = None
) -> SegWithURunner:
    """Load ``head.pt`` on torch or ``segwithu.onnx`` on ONNX Runtime (the file decides)."""
    path = Path(model)
    chosen = single_backend(path, backend, "segwithu")
    dev = resolve_device(device)
    if chosen == "ort":
        fn, props = _ort_window_fn(path, dev, threads)
        try:
            cfg = config_from_dict(json.loads(props["config"]), f"{path} metadata")
            window = tuple(int(w) for w in json.loads(props["window"]))
        except ConfigError as e:
            raise ModelMismatchError(str(e)) from None
        except (KeyError, ValueError, TypeError) as e:
            raise ModelMismatchError(f"{path}: corrupt SegWithU metadata ({type(e).__name__}: {e})") from None
        return SegWithURunner(fn, cfg, window, "ort", dev)
    net, cfg = load_segwithu(path)
    if threads:
        torch.set_num_threads(threads)
    return SegWithURunner(torch_window_fn(net.to(dev), dev), cfg, tuple(cfg.window), "torch", dev)


__all__ = ["SegWithURunner", "WindowFn", "open_segwithu", "torch_window_fn"]
