"""Export a variational network to ONNX with its weight noise as graph inputs.

Graph: inputs ``x [B, in, *window]`` (B dynamic) and ``eps_<i>`` (one per Bayesian layer, shaped
like its kernel, static); output ``logits [B, K, *window]``. One call = one posterior sample for B
windows; S samples = S calls with S noise sets from :func:`.noise.sample_weight_noise`. No random op
is in the graph (checked), so ONNX Runtime cannot optimise the sampling away and runs reproduce
from the seed. The TorchScript exporter is enough here (plain convolutions, no token reshapes) and
is an order of magnitude faster than the dynamo exporter.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.methods.variational.base import BayesianSegNet

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
    return [f"eps_{i}" for i in range(len(net.bayes_layers()))]


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


__all__ = ["RANDOM_OPS", "export_variational", "noise_input_names"]
