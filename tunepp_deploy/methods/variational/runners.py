"""Run a variational network on torch (``vi.pt``) or ONNX Runtime (``vi.onnx``) behind one interface.

``runner.logits(x, noise, s)``: logits ``[B, K, *window]`` of weight sample ``s`` for B windows, on
the CPU, whatever the backend — the inputs :func:`tunepp_deploy.methods.volume.iter_sample_probs`
needs. Both backends draw the same noise (:func:`~.noise.sample_weight_noise` from the kernel shapes,
which the ONNX graph declares as its static ``eps_<i>`` input shapes), so a seed gives the same
samples on either; the ONNX file carries the config and settings in its metadata
(:func:`~.export.read_variational_props`), so it is enough on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import ModelMismatchError
from tunepp_deploy.infer.runners.load import resolve_device
from tunepp_deploy.methods.model_file import single_backend
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.export import noise_names, read_variational_props
from tunepp_deploy.methods.variational.noise import WeightNoise
from tunepp_deploy.methods.variational.train import load_variational


class VariationalRunner:
    """A loaded variational model: ``cfg``, ``settings``, ``window``, ``noise_shapes`` and :meth:`logits`."""

    name = "?"

    def __init__(self, cfg: TuneppConfig, settings: dict[str, Any], window: tuple[int, ...],
                 noise_shapes: list[tuple[int, ...]], device: torch.device) -> None:
        self.cfg, self.settings, self.window = cfg, settings, tuple(int(w) for w in window)
        self.noise_shapes, self.device = noise_shapes, device

    def logits(self, x: torch.Tensor, noise: WeightNoise, s: int) -> torch.Tensor:
        """``[B, K, *window]`` float32 logits of sample ``s`` on the CPU."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} on {self.device} (variational {self.settings.get('arch')}, fp32)"

    def close(self) -> None:
        """Release the session or network (a no-op for torch on the CPU)."""


class TorchVariationalRunner(VariationalRunner):
    """The checkpoint's network in eval mode on ``device``."""

    name = "torch"

    def __init__(self, net: BayesianSegNet, cfg: TuneppConfig, settings: dict[str, Any], device: torch.device) -> None:
        super().__init__(cfg, settings, tuple(cfg.window), net.noise_shapes(), device)
        net.check_window(self.window)
        self.net = net.to(device).eval()

    def logits(self, x: torch.Tensor, noise: WeightNoise, s: int) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x.to(self.device), noise.sample(s, self.device)).float().cpu()


class OrtVariationalRunner(VariationalRunner):
    """An exported sampling graph (``export_variational``) on ONNX Runtime."""

    name = "ort"

    def __init__(self, path: Path, device: torch.device, threads: int | None) -> None:
        from tunepp_deploy.infer.runners.ort_runner import make_session

        try:
            props = {q.key: q.value for q in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as e:  # protobuf DecodeError and friends
            raise ModelMismatchError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
        cfg, settings, window = read_variational_props(props, str(path))
        self.session = make_session(str(path), device, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.names = noise_names(len(inputs) - 1)
        if "x" not in inputs or set(self.names) != set(inputs) - {"x"}:
            raise ModelMismatchError(f"{path}: graph inputs {sorted(inputs)} are not x + eps_<i>")
        shapes = [tuple(int(d) for d in inputs[n].shape) for n in self.names]
        super().__init__(cfg, settings, window, shapes, device)

    def logits(self, x: torch.Tensor, noise: WeightNoise, s: int) -> torch.Tensor:
        feeds = {"x": x.detach().to("cpu", torch.float32).contiguous().numpy(),
                 **dict(zip(self.names, noise.sample_numpy(s), strict=True))}
        try:
            (out,) = self.session.run(["logits"], feeds)
        except Exception as e:  # ORT's exception classes derive from Exception only: make it a case failure
            raise RuntimeError(f"ONNX Runtime: {str(e).strip().splitlines()[0][:200] if str(e).strip() else e}") \
                from None
        return torch.from_numpy(out)

    def describe(self) -> str:
        return f"ort on {self.device} ({self.session.get_providers()[0]}, variational {self.settings.get('arch')})"


def open_variational(
    model: str | Path, backend: str = "auto", device: str = "auto", threads: int | None = None
) -> VariationalRunner:
    """Load ``vi.pt`` on torch or ``vi.onnx`` on ONNX Runtime (the file decides; see :func:`single_backend`)."""
    path = Path(model)
    chosen = single_backend(path, backend, "variational")
    dev = resolve_device(device)
    if chosen == "ort":
        return OrtVariationalRunner(path, dev, threads)
    net, cfg, settings = load_variational(path)
    if threads:
        torch.set_num_threads(threads)
    return TorchVariationalRunner(net, cfg, settings, dev)


__all__ = ["OrtVariationalRunner", "TorchVariationalRunner", "VariationalRunner", "open_variational"]
