"""A variational network as a :class:`~tunepp_deploy.infer.runners.graph.GraphRunner`.

Either backend runs the same named graph: ``x [B, in, *window]`` and one weight-noise tensor
``eps_<i>`` per Bayesian layer (shaped like its kernel) -> ``logits [B, K, *window]``; one call is
one posterior sample for B windows. On torch that is ``vi.pt``'s network
(:class:`TorchVariationalRunner`); on ONNX Runtime the exported sampling graph in the shared
:class:`~tunepp_deploy.infer.runners.graph.OrtGraphRunner`. Both report the noise shapes
(:attr:`VariationalGraph.noise_shapes`: the network's kernels, or the graph's static ``eps_<i>``
input shapes), so :func:`~.noise.sample_weight_noise` draws the same samples for either from one
seed. The ONNX file carries the config and settings in its metadata
(:func:`~.export.read_variational_props`), so it is enough on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import ModelMismatchError
from tunepp_deploy.infer.runners.graph import GraphRunner, OrtGraphRunner, TorchGraphRunner, onnx_props, single_backend
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.export import noise_input_names, noise_names, read_variational_props
from tunepp_deploy.methods.variational.train import load_variational

#: The image input and the one output of the sampling graph.
INPUT, OUTPUT = "x", "logits"


class TorchVariationalRunner(TorchGraphRunner):
    """A :class:`BayesianSegNet` behind the graph's names (``x``, ``eps_0..``) -> ``logits``."""

    def __init__(self, net: BayesianSegNet, device: torch.device, threads: int | None = None) -> None:
        super().__init__(net, (INPUT, *noise_input_names(net)), (OUTPUT,), device, threads)

    def forward(self, *inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        return (self.module(inputs[0], list(inputs[1:])),)


@dataclass
class VariationalGraph:
    """An opened variational model: its runner and what the file says."""

    runner: GraphRunner
    cfg: TuneppConfig
    settings: dict[str, Any]
    window: tuple[int, ...]
    noise_names: list[str]
    noise_shapes: list[tuple[int, ...]]


def _open_ort(path: Path, device: torch.device, threads: int | None) -> VariationalGraph:
    cfg, settings, window = read_variational_props(onnx_props(path), str(path))
    runner = OrtGraphRunner(path, device, threads, outputs=(OUTPUT,))
    shapes = runner.input_shapes
    names = noise_names(len(shapes) - 1)
    if INPUT not in shapes or set(names) != set(shapes) - {INPUT}:
        runner.close()
        raise ModelMismatchError(f"{path}: graph inputs {sorted(shapes)} are not x + eps_<i>")
    try:
        noise = [tuple(int(d) for d in shapes[n]) for n in names]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        runner.close()
        raise ModelMismatchError(f"{path}: the eps_<i> inputs must have static shapes") from None
    return VariationalGraph(runner, cfg, settings, window, names, noise)


def open_variational_runner(path: str | Path, backend: str, device: torch.device,
                            threads: int | None = None) -> VariationalGraph:
    """``vi.pt`` on torch or ``vi.onnx`` on ONNX Runtime (the file decides, see
    :func:`~tunepp_deploy.infer.runners.graph.single_backend`)."""
    p = Path(path)
    if single_backend(p, backend, "variational") == "ort":
        return _open_ort(p, device, threads)
    net, cfg, settings = load_variational(p)
    net.check_window(tuple(cfg.window))
    return VariationalGraph(TorchVariationalRunner(net, device, threads), cfg, settings, tuple(cfg.window),
                            noise_input_names(net), net.noise_shapes())


__all__ = ["INPUT", "OUTPUT", "TorchVariationalRunner", "VariationalGraph", "open_variational_runner"]
