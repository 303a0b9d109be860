"""Export a variational network to ONNX with its weight noise as graph inputs.

Graph: inputs ``x [B, in, *window]`` (B dynamic) and ``eps_<i>`` (one per Bayesian layer, shaped
like its kernel, static); output ``logits [B, K, *window]``. One call = one posterior sample for B
windows; S samples = S calls with S noise sets from :func:`.noise.sample_weight_noise`. No random op
is in the graph (checked), so ONNX Runtime cannot optimise the sampling away and runs reproduce
from the seed. The TorchScript exporter is enough here (plain convolutions, no token reshapes) and
is an order of magnitude faster than the dynamo exporter.

**Self-describing file.** :func:`export_variational_checkpoint` (``tunepp export onnx`` on a
variational checkpoint) stores the training config (spacing, normalisation, classes, inference
defaults) and the network settings in the metadata props, next to ``tunepp_method`` and ``window``,
so ``tunepp infer`` needs nothing but the ONNX file; :func:`read_variational_props` parses them back.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from tunepp_deploy import __version__
from tunepp_deploy.config.load import config_from_dict, config_to_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import ConfigError, ModelMismatchError, TuneppError
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.train import load_variational
from tunepp_deploy.model_file import meta_ints, parse_json_prop

#: Version of the metadata contract below; a file of another version is refused (re-export it).
EXPORT_FORMAT = 1
#: Opset of ``tunepp export onnx`` for variational networks when none is given.
DEFAULT_OPSET = 17
#: Ops that would make sampling backend-dependent (or let an optimiser remove it).
RANDOM_OPS = frozenset({"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike",
                        "Bernoulli", "Multinomial"})


class _SampleGraph(nn.Module):
    def __init__(self, net: BayesianSegNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, *noise: Tensor) -> Tensor:
        return self.net(x, list(noise))


def noise_input_names(net: BayesianSegNet) -> list[str]:
    """Graph input name of each Bayesian layer's noise, in :meth:`BayesianSegNet.bayes_layers` order."""
    return noise_names(len(net.bayes_layers()))


def noise_names(n: int) -> list[str]:
    """``eps_0 .. eps_{n-1}`` (also how a loaded graph's noise inputs are found without the network)."""
    return [f"eps_{i}" for i in range(n)]


def export_variational(
    net: BayesianSegNet, window: Sequence[int], path: str | Path, metadata: dict[str, object] | None = None,
    opset: int = 17,
) -> Path:
    """Write the sampling graph of ``net`` for windows of ``window`` to ``path``; returns the path."""
    net = net.to("cpu").float().eval()
    net.check_window(window)
    x = torch.zeros(1, net.bayes_layers()[0].weight_shape[1], *window)
    noise = tuple(torch.zeros(s) for s in net.noise_shapes())
    names = noise_input_names(net)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(_SampleGraph(net), (x, *noise), buf, input_names=["x", *names], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
    except Exception as e:  # the exporter raises many types; the first line says what failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuneppError(f"ONNX export of the variational network failed: {first[:200]}") from None
    model = onnx.load_from_string(buf.getvalue())
    bad = {n.op_type for n in model.graph.node} & RANDOM_OPS
    if bad:
        raise TuneppError(f"exported graph contains random ops {sorted(bad)}")
    props = {"tunepp_method": "variational", "window": json.dumps(list(window)), **(metadata or {})}
    onnx.helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
    p = Path(path)
    write_atomic(p, lambda t: onnx.save(model, str(t)), suffix=".onnx")
    return p


@dataclass(frozen=True)
class VariationalExport:
    """What :func:`export_variational_checkpoint` wrote."""

    path: Path
    seconds: float
    arch: str
    window: tuple[int, ...]
    noise_inputs: int
    opset: int


def variational_props(cfg: TuneppConfig, settings: Mapping[str, Any]) -> dict[str, object]:
    """The metadata that makes an exported graph enough for inference (module docstring)."""
    return {"format": str(EXPORT_FORMAT), "tunepp_version": __version__, "config": config_to_dict(cfg),
            "settings": dict(settings)}


def read_variational_props(
    props: Mapping[str, str], source: str
) -> tuple[TuneppConfig, dict[str, Any], tuple[int, ...]]:
    """``(config, settings, window)`` from a variational graph's metadata; anything else is one line."""
    if props.get("tunepp_method") != "variational":
        raise ModelMismatchError(f"{source}: not a variational-method ONNX file")
    if props.get("format") != str(EXPORT_FORMAT) or "config" not in props:
        raise ModelMismatchError(
            f"{source}: variational export format {props.get('format')} (this tunepp reads {EXPORT_FORMAT}); "
            "re-export it with `tunepp export onnx`")
    try:
        cfg = config_from_dict(parse_json_prop(props, "config", source), f"{source} metadata")
    except ConfigError as e:
        raise ModelMismatchError(str(e)) from None
    settings = parse_json_prop(props, "settings", source)
    if not isinstance(settings, dict):
        raise ModelMismatchError(f"{source}: metadata key 'settings' is not a JSON object")
    window = meta_ints(parse_json_prop(props, "window", source), "window", source, length=3)
    return cfg, settings, window


def export_variational_checkpoint(
    checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET
) -> VariationalExport:
    """``tunepp export onnx`` for a ``tunepp train-vi`` checkpoint: the sampling graph at the config's window."""
    p = Path(out)
    if not p.name.endswith(".onnx"):
        raise TuneppError(f"{p}: output name must end in .onnx")
    t0 = time.perf_counter()
    net, cfg, settings = load_variational(checkpoint)
    window = tuple(cfg.window)
    export_variational(net, window, p, variational_props(cfg, settings), opset)
    return VariationalExport(p, time.perf_counter() - t0, str(settings["arch"]), window, len(net.bayes_layers()),
                             opset)


__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMAT",
    "RANDOM_OPS",
    "VariationalExport",
    "export_variational",
    "export_variational_checkpoint",
    "noise_input_names",
    "noise_names",
    "read_variational_props",
    "variational_props",
]
