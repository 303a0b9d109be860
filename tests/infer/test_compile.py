"""``TorchRunner(compile=True)``: torch.compile of the trunk and the head gives the eager runner's
outputs and the same MC maps, on the CPU (the GPU suite, ``tunepp bench gpu``, repeats it on CUDA with
inductor's Triton code).

Kept tiny (a two-level network, 32^3 windows, 8 windows, 3 samples). Inductor's cold C++ build of
even this trunk took ~5 min on the loaded 2-core CI box, so the whole runner is compiled with the
``aot_eager`` backend (dynamo tracing and AOT functionalisation of both graphs, fixed shapes, autocast
inside the compiled region — everything but code generation), and inductor itself compiles the head
(~30 s cold): the stochastic part, where the dropout masks are graph inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tunepp_deploy.export.metadata import meta_for

from tunepp_deploy.config import load_config
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners.torch_runner import TorchRunner
from tunepp_deploy.model import build_network

REPO = Path(__file__).resolve().parents[2]
TINY = {"model.widths": [8, 16], "model.depths": [1, 1], "model.decoder_depths": [1],
        "model.dropout.sites": ["dec0"], "data.crop_size": [32, 32, 32]}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(REPO / "configs" / "phantom.yaml", TINY)
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    with torch.no_grad():  # spread a fresh network's nearly constant outputs
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net, meta_for(net, cfg)


def _call(meta):
    x = torch.randn(2, meta.in_channels, *meta.window, generator=torch.Generator().manual_seed(3))
    rows = sample_masks(meta.sites, meta.window, 3, seed=1).rows([0, 1, 2], 2, CPU)
    return x, rows


@pytest.mark.slow
def test_compiled_runner_matches_eager(tiny) -> None:
    net, meta = tiny
    eager = TorchRunner(net, meta, CPU)
    compiled = TorchRunner(net, meta, CPU, compile=True, compile_backend="aot_eager")
    assert compiled.splits and "torch.compile" in compiled.describe()

    x, rows = _call(meta)
    fe, fc = eager.trunk(x), compiled.trunk(x)
    assert len(fe) == len(fc)
    for a, b in zip(fe, fc, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.head(fe, rows), compiled.head(fc, rows), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for a, b in zip(eager(x, rows), compiled(x, rows), strict=True):  # the whole-graph call: trunk + head
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)

    # the MC engine on both: same masks, same noise -> the same maps (fixed shapes: 2 windows x 3 rows)
    vol = torch.rand(meta.in_channels, 48, 48, 48, generator=torch.Generator().manual_seed(4))
    masks = sample_masks(meta.sites, meta.window, 3, seed=2)
    mc = MCSettings(samples=3, seed=2, max_batch=2, noise_draws=2)
    ref, out = mc_predict(vol, eager, masks, mc), mc_predict(vol, compiled, masks, mc)
    assert out.calls == ref.calls and out.trunk == ref.trunk
    for name in ("mean_probs", "epistemic", "aleatoric", "total"):
        a, b = getattr(ref.maps, name), getattr(out.maps, name)
        assert float((a - b).abs().max()) < 1e-4, name


@pytest.mark.slow
def test_inductor_head_matches_eager(tiny) -> None:
    net, meta = tiny
    eager = TorchRunner(net, meta, CPU)
    runner = TorchRunner(net, meta, CPU)
    runner._head_fn = torch.compile(runner._head_eager, dynamic=False)  # what compile=True builds, head only
    x, rows = _call(meta)
    feats = eager.trunk(x)
    for a, b in zip(eager.head(feats, rows), runner.head(feats, rows), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
