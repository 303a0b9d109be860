"""Backbone + SegWithU head as a :class:`~tunepp_deploy.infer.runners.graph.GraphRunner`.

Either backend runs the same named graph: input ``x [B, in, *window]`` -> :data:`~.export.OUTPUTS`
(raw logits, tempered logits, temperature, U_cal, U_rnk, U_epi). On torch that is ``head.pt``'s
module (:class:`TorchSegWithURunner`); on ONNX Runtime the exported single-pass graph in the shared
:class:`~tunepp_deploy.infer.runners.graph.OrtGraphRunner`. The ONNX file is enough on its own:
:func:`~.export.export_segwithu` stores the backbone's config (spacing, normalisation, classes,
inference defaults) and the window in its metadata props, which :func:`open_segwithu_runner` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tunepp_deploy.config.load import config_from_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import ConfigError, ModelMismatchError
from tunepp_deploy.infer.runners.graph import GraphRunner, OrtGraphRunner, TorchGraphRunner, onnx_props, single_backend
from tunepp_deploy.methods.segwithu.export import OUTPUTS
from tunepp_deploy.methods.segwithu.model import SegWithU, load_segwithu
from tunepp_deploy.model_file import meta_ints, parse_json_prop

#: The graph's only input.
INPUT = "x"


class TorchSegWithURunner(TorchGraphRunner):
    """A :class:`SegWithU` module behind the graph's names."""

    def __init__(self, model: SegWithU, device: torch.device, threads: int | None = None) -> None:
        super().__init__(model, (INPUT,), OUTPUTS, device, threads)

    def forward(self, *inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        logits, o = self.module(inputs[0])
        return logits, o.tempered_logits, o.temperature, o.u_cal, o.u_rnk, o.u_epi


@dataclass
class SegWithUGraph:
    """An opened SegWithU model: its runner and what the file says (config, window)."""

    runner: GraphRunner
    cfg: TuneppConfig
    window: tuple[int, ...]


def _open_ort(path: Path, device: torch.device, threads: int | None) -> SegWithUGraph:
    props = onnx_props(path)
    if props.get("tunepp_method") != "segwithu":
        raise ModelMismatchError(f"{path}: not a SegWithU ONNX file")
    try:
        cfg = config_from_dict(parse_json_prop(props, "config", path), f"{path} metadata")
    except ConfigError as e:
        raise ModelMismatchError(str(e)) from None
    window = meta_ints(parse_json_prop(props, "window", path), "window", path, length=3)
    runner = OrtGraphRunner(path, device, threads, outputs=OUTPUTS)
    if runner.input_names != (INPUT,):
        runner.close()
        raise ModelMismatchError(f"{path}: graph inputs {list(runner.input_names)} are not ['{INPUT}']")
    return SegWithUGraph(runner, cfg, window)


def open_segwithu_runner(path: str | Path, backend: str, device: torch.device,
                         threads: int | None = None) -> SegWithUGraph:
    """``head.pt`` on torch or ``segwithu.onnx`` on ONNX Runtime (the file decides, see
    :func:`~tunepp_deploy.infer.runners.graph.single_backend`)."""
    p = Path(path)
    if single_backend(p, backend, "segwithu") == "ort":
        return _open_ort(p, device, threads)
    net, cfg = load_segwithu(p)
    return SegWithUGraph(TorchSegWithURunner(net, device, threads), cfg, tuple(cfg.window))


__all__ = ["INPUT", "SegWithUGraph", "TorchSegWithURunner", "open_segwithu_runner"]
