"""ONNX export of a network with ``model.gate: supervised`` (issue #13, item 3).

The supervised gate adds an error head per TUPA block whose output feeds the fusion weight ``w_t``
(tunepp_deploy/model/blocks/tupa.py). The export must keep the graph contract (masks as float inputs,
no random ops), and ONNX Runtime must compute what torch computes with the same masks: the oracle is
``MCGraph`` (the module the exporter traces) run in torch, which shares no code with ONNX Runtime.
The error head's ``z`` is not a graph output (``NetOutput.gate_logits`` exists in training only), so
its presence in the graph is checked through its effect: changing the error heads' weights changes
ONNX Runtime's logits, and torch's by the same amount.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tunepp_deploy.export.metadata import OUTPUT_NAMES
from tunepp_deploy.export.onnx_export import FORBIDDEN_OPS, MCGraph, export_onnx, graph_op_types

from tunepp_deploy.config.load import load_config
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.model import build_network
from tunepp_deploy.model.blocks.tupa import SupervisedGate

ROOT = Path(__file__).resolve().parents[2]
#: fp32 parity of ONNX Runtime and torch on the same graph (the brief's bound).
ATOL = 1e-5


def _tiny_supervised(seed: int = 0):
    cfg = load_config(ROOT / "configs" / "phantom.yaml", {
        "data.crop_size": [16, 16, 8], "data.spacing": [4.0, 4.0, 5.0], "model.widths": [8, 16],
        "model.depths": [1, 1], "model.decoder_depths": [1], "model.proj_tokens": 8,
        "model.dropout.sites": ["dec0"], "model.gate": "supervised",
    })
    torch.manual_seed(seed)
    net = build_network(cfg).eval()
    with torch.no_grad():  # a freshly initialised network is nearly constant; spread its outputs a little
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net, cfg


def _feeds(meta, windows: int, samples: int, seed: int) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(windows, meta.in_channels, *meta.window, generator=g)
    rows = sample_masks(meta.sites, meta.window, samples, seed=seed).rows(
        range(samples), windows, starts=[(0, 0, 0)] * windows)
    return {"x": x.numpy(), **{n: t.numpy() for n, t in zip(meta.mask_names, rows, strict=True)}}


def _torch(net, meta, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits, log_var = MCGraph(net)(torch.from_numpy(feeds["x"]),
                                       tuple(torch.from_numpy(feeds[n]) for n in meta.mask_names))
    return logits.numpy(), log_var.numpy()


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(list(OUTPUT_NAMES), feeds)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    net, cfg = _tiny_supervised()
    assert any(isinstance(m, SupervisedGate) for m in net.modules())
    tmp = tmp_path_factory.mktemp("gate_export")
    res = export_onnx(net, cfg, tmp / "model.onnx")
    return net, cfg, res, tmp


def test_supervised_graph_keeps_the_mask_contract(exported) -> None:
    _, _, res, _ = exported
    model = onnx.load(str(res.path))
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert list(inputs) == list(res.meta.input_names) and res.meta.mask_names
    assert all(inputs[n] == onnx.TensorProto.FLOAT for n in res.meta.mask_names)
    consumers = [n for n in model.graph.node for name in res.meta.mask_names if name in n.input]
    assert consumers  # the masks are used, not folded away
    assert not graph_op_types(model) & FORBIDDEN_OPS
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)


def test_ort_equals_torch_with_the_same_masks(exported) -> None:
    net, _, res, _ = exported
    feeds = _feeds(res.meta, windows=2, samples=3, seed=5)
    ref_logits, ref_log_var = _torch(net, res.meta, feeds)
    got_logits, got_log_var = _ort(res.path, feeds)
    assert got_logits.shape == ref_logits.shape == (6, res.meta.num_classes, *res.meta.window)
    np.testing.assert_allclose(got_logits, ref_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got_log_var, ref_log_var, atol=ATOL, rtol=0)
    # the masks drive the rows: another draw gives other outputs, in both runtimes alike
    other = {**feeds, **{n: v for n, v in _feeds(res.meta, 2, 3, seed=6).items() if n != "x"}}
    assert np.abs(_ort(res.path, other)[0] - got_logits).max() > 1e-3
    np.testing.assert_allclose(_ort(res.path, other)[0], _torch(net, res.meta, other)[0], atol=ATOL, rtol=0)


def test_error_heads_are_in_the_graph(exported) -> None:
    """Perturbing only the error heads moves the exported logits, and torch's identically."""
    net, cfg, res, tmp = exported
    feeds = _feeds(res.meta, windows=1, samples=2, seed=7)
    before = _ort(res.path, feeds)[0]
    net2, _ = _tiny_supervised()
    heads = [m.error_head for m in net2.modules() if isinstance(m, SupervisedGate)]
    with torch.no_grad():
        for h in heads:
            h[-1].bias.add_(3.0)  # u -> higher everywhere: w_t moves towards the topology branch
    res2 = export_onnx(net2, cfg, tmp / "model_shifted.onnx")
    after = _ort(res2.path, feeds)[0]
    ref_after = _torch(net2, res2.meta, feeds)[0]
    np.testing.assert_allclose(after, ref_after, atol=ATOL, rtol=0)
    np.testing.assert_allclose(before, _torch(net, res.meta, feeds)[0], atol=ATOL, rtol=0)
    assert np.abs(after - before).max() > 1e-3
