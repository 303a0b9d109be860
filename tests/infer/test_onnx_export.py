"""The exported graph: checker-clean, TensorRT-parsable op set, no stochastic ops, metadata, parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tunepp_deploy.export.metadata import ModelMeta
from tunepp_deploy.export.onnx_export import FORBIDDEN_OPS, graph_op_types, trt_supported_ops

from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.model import TUNEPP, repeat_for_samples

#: Ops whose axes TensorRT's parser needs as initializers/constants (operators.md restrictions).
AXES_FROM_INPUT = {"ReduceL2": 1, "Squeeze": 1, "Unsqueeze": 1, "Slice": 3}


def test_checker_clean_and_ops_inside_tensorrt_list(onnx_file: Path) -> None:
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model, full_check=True)
    ops = graph_op_types(model)
    supported, header = trt_supported_ops()
    assert "onnx-tensorrt" in header["source"] and header["tensorrt"].startswith("10")
    assert ops <= supported, f"ops TensorRT 10 cannot parse: {sorted(ops - supported)}"
    assert not ops & FORBIDDEN_OPS
    assert not any(op.startswith("Random") or op == "Dropout" for op in ops)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset <= int(header["opset_max"])


def test_axes_are_constants(onnx_file: Path) -> None:
    model = onnx.load(str(onnx_file))
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        idx = AXES_FROM_INPUT.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx]:
            assert node.input[idx] in constants, f"{node.op_type} {node.name}: axes from a computed tensor"


def test_dynamic_batch_static_window_and_metadata(onnx_file: Path, cfg) -> None:
    model = onnx.load(str(onnx_file))
    meta = ModelMeta.from_props({p.key: p.value for p in model.metadata_props}, "test")
    assert meta.config == cfg and meta.window == tuple(cfg.window) and meta.classes == list(cfg.data.classes)
    assert meta.spacing == tuple(cfg.data.spacing) and [s.name for s in meta.sites] == ["dec1", "dec0"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert isinstance(dims["x"][0], str) and dims["x"][1:] == [1, *cfg.window]
    assert isinstance(dims["mask_dec1"][0], str) and dims["mask_dec1"][1] == 16


def _trunk_outputs_graph(onnx_file: Path) -> tuple[ort.InferenceSession, list[str]]:
    """The exported graph with the trunk outputs (the inputs of the tiling nodes) exposed."""
    model = onnx.load(str(onnx_file))
    tiles = [n.input[0] for n in model.graph.node if n.op_type == "Tile"]
    for name in tiles:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), tiles


def test_trunk_head_and_batching_parity_with_torch(onnx_file: Path, net: TUNEPP) -> None:
    sess, _ = _trunk_outputs_graph(onnx_file)
    meta = ModelMeta.from_props({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}, "t")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, *meta.window, generator=g)
    S = 3
    masks = sample_masks(meta.sites, meta.window, S, seed=5)
    rows = masks.rows(range(S), 2)
    with torch.no_grad():
        feats = net.trunk(x)
        ref_logits, ref_lv = net.head(*repeat_for_samples(feats, S), *rows)
    out = sess.run(None, {"x": x.numpy(), **{n: r.numpy() for n, r in zip(meta.mask_names, rows, strict=True)}})
    logits, log_var, trunk = out[0], out[1], out[2:]
    # trunk: match each exposed tensor with the torch trunk output of the same shape
    for t in feats:
        cands = [a for a in trunk if a.shape == tuple(t.shape)]
        assert cands and min(float(np.abs(a - t.numpy()).max()) for a in cands) <= 1e-4
    assert float(np.abs(logits - ref_logits.numpy()).max()) <= 1e-4
    assert float(np.abs(log_var - ref_lv.numpy()).max()) <= 1e-4
    # S samples in one call == S single-sample calls
    for s in range(S):
        one = sess.run(["logits"], {"x": x.numpy(), **{n: r.numpy() for n, r in
                                                         zip(meta.mask_names, masks.rows([s], 2), strict=True)}})[0]
        assert float(np.abs(one - logits[s * 2:(s + 1) * 2]).max()) <= 1e-5
