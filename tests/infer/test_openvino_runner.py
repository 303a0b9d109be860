"""The OpenVINO runner against torch (the oracle) and ONNX Runtime: parity of logits and maps, the f32
pin, bf16 only on request, the graph contract (mask inputs), threads, static-shape cache, and the
missing extra. Tests that need OpenVINO skip with the reason when it is not installed."""

from __future__ import annotations

import sys
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from infer_helpers import SCAN_MAP_TOL
from tunepp_deploy.export.metadata import meta_for

from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners import auto_backend, open_runner
from tunepp_deploy.infer.runners.load import read_onnx_meta
from tunepp_deploy.infer.runners.torch_runner import TorchRunner
from tunepp_deploy.model import TUNEPP, repeat_for_samples

HAVE_OV = find_spec("openvino") is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed: pip install 'tunepp-deploy[openvino]'")
CPU = torch.device("cpu")
#: The ORT runner's tolerances (tests/infer/test_mc_parity.py, test_onnx_export.py), on uniform-noise input.
MAP_TOL = 1e-4
LOGIT_TOL = 1e-4


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def _conv_precisions(runner, windows: int = 1, rows: int = 2) -> set[str]:
    """Runtime precisions of the compiled model's convolutions, as OpenVINO's runtime graph reports them:
    what actually executes, independent of the hint property the runner sets."""
    rt = runner.compiled(windows, rows).get_runtime_model()
    infos = [op.get_rt_info() for op in rt.get_ordered_ops()]
    return {i["runtimePrecision"].astype(str) for i in infos if "Convolution" in i["layerType"].astype(str)}


def _bf16_cpu() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def ov_runner(onnx_file: Path):
    if not HAVE_OV:
        pytest.skip("openvino is not installed: pip install 'tunepp-deploy[openvino]'")
    with open_runner(onnx_file, backend="openvino", device="cpu", threads=2) as r:
        yield r


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    # 52 x 40 x 30: two windows along the first axis, padding on the others (as test_mc_parity)
    return torch.rand(1, 52, 40, 30, generator=torch.Generator().manual_seed(0))


def test_missing_extra_is_one_line_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch, onnx_file: Path,
                                                       ckpt: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    for model in (onnx_file, ckpt):  # the checkpoint: refused before an in-memory export is paid for
        with pytest.raises(TuneppError) as e:
            open_runner(model, backend="openvino", device="cpu")
        assert "tunepp-deploy[openvino]" in _one_line(e)
    backend, reason = auto_backend("onnx", CPU)
    assert backend == "ort" and "not installed" in reason
    from tunepp_deploy.doctor import run_checks

    ov = next(c for c in run_checks() if c.name == "OpenVINO")
    assert not ov.ok and "tunepp-deploy[openvino]" in ov.detail


@needs_ov
def test_logits_parity_with_torch_and_batching(ov_runner, net: TUNEPP) -> None:
    meta = ov_runner.meta
    x = torch.rand(2, 1, *meta.window, generator=torch.Generator().manual_seed(0))
    S = 3
    masks = sample_masks(meta.sites, meta.window, S, seed=5)
    rows = masks.rows(range(S), 2)
    with torch.no_grad():
        ref_logits, ref_lv = net.head(*repeat_for_samples(net.trunk(x), S), *rows)
    logits, log_var = ov_runner(x, rows)
    assert logits.dtype == torch.float32 and tuple(logits.shape) == tuple(ref_logits.shape)
    d_logits = float((logits - ref_logits).abs().max())
    d_lv = float((log_var - ref_lv).abs().max())
    print(f"openvino vs torch: max|logits| {d_logits:.3g}, max|log_var| {d_lv:.3g}")
    assert d_logits <= LOGIT_TOL and d_lv <= LOGIT_TOL
    # S samples in one call == S single-sample calls (another static shape, another compiled model)
    for s in range(S):
        one = ov_runner(x, masks.rows([s], 2))[0]
        assert float((one - logits[s * 2:(s + 1) * 2]).abs().max()) <= 1e-5


@needs_ov
def test_whole_volume_maps_torch_vs_openvino_vs_ort(net: TUNEPP, cfg, ov_runner, onnx_file: Path,
                                                    volume: torch.Tensor) -> None:
    torch_runner = TorchRunner(net, meta_for(net, cfg), CPU)
    masks = sample_masks(torch_runner.meta.sites, torch_runner.meta.window, 2, seed=0)
    a = mc_predict(volume, torch_runner, masks, MCSettings(samples=2)).maps.stacked()
    b = mc_predict(volume, ov_runner, masks, MCSettings(samples=2)).maps.stacked()
    with open_runner(onnx_file, backend="ort", device="cpu") as ort_runner:
        c = mc_predict(volume, ort_runner, masks, MCSettings(samples=2)).maps.stacked()
    d_torch, d_ort = float((a - b).abs().max()), float((c - b).abs().max())
    print(f"maps: max|openvino - torch| {d_torch:.3g}, max|openvino - ort| {d_ort:.3g}, "
          f"max|ort - torch| {float((a - c).abs().max()):.3g}")
    assert d_torch <= MAP_TOL and d_ort <= MAP_TOL


@needs_ov
def test_seed_and_p_zero_limits(ov_runner, volume: torch.Tensor) -> None:
    meta = ov_runner.meta

    def run(seed: int, sites=meta.sites, **kw):
        return mc_predict(volume, ov_runner, sample_masks(sites, meta.window, 3, seed), MCSettings(samples=3, **kw))

    a, b, c = run(0).maps, run(0).maps, run(1).maps
    assert torch.equal(a.stacked(), b.stacked())  # the masks are inputs: same seed, same maps
    assert not torch.allclose(a.epistemic, c.epistemic) and float(a.epistemic.max()) > 0
    p0 = tuple(replace(s, p=0.0) for s in meta.sites)
    zero = run(0, p0, noise_draws=0).maps  # no dropout, no logit noise: every sample is the same network
    assert float(zero.epistemic.abs().max()) <= 1e-12 and float(zero.aleatoric.max()) > 0


@needs_ov
def test_f32_pinned_by_default_although_the_plugin_defaults_to_bf16(ov_runner, net: TUNEPP) -> None:
    import openvino as ov

    assert ov_runner.precision == "fp32" and ov_runner.precision_hint(1, 2) == "f32"
    assert _conv_precisions(ov_runner) == {"f32"}
    for windows, rows in list(ov_runner._compiled):  # every shape compiled so far carries the pin
        assert ov_runner.precision_hint(windows, rows) == "f32"
    if _bf16_cpu():  # the pin is load-bearing here: without it this CPU runs the graph in bf16
        plain = ov.Core().compile_model(ov_runner.model, "CPU")
        assert str(plain.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'bfloat16'>", "bf16")


@needs_ov
def test_bf16_only_when_asked(onnx_file: Path, ov_runner) -> None:
    if not _bf16_cpu():
        with pytest.raises(TuneppError) as e:
            open_runner(onnx_file, backend="openvino", device="cpu", precision="bf16")
        assert "bf16" in _one_line(e)
        return
    meta = ov_runner.meta
    x = torch.rand(1, 1, *meta.window, generator=torch.Generator().manual_seed(1))
    rows = sample_masks(meta.sites, meta.window, 2, seed=0).rows(range(2), 1)
    with open_runner(onnx_file, backend="openvino", device="cpu", threads=2, precision="bf16") as bf:
        assert bf.precision_hint(1, 2) == "bf16" and "bf16" in bf.describe()
        assert "bf16" in _conv_precisions(bf)
        diff = float((bf(x, rows)[0] - ov_runner(x, rows)[0]).abs().max())
    assert diff > 1e-3  # bf16 really computes differently (f32 vs torch is ~1e-5): not a no-op hint


@needs_ov
def test_precision_errors_are_one_line(onnx_file: Path) -> None:
    with pytest.raises(TuneppError) as e:
        open_runner(onnx_file, backend="openvino", device="cpu", precision="int8")
    assert "Q/DQ" in _one_line(e)  # the fp32 export has no quantization nodes
    with pytest.raises(TuneppError) as e:
        open_runner(onnx_file, backend="openvino", device="cpu", precision="fp64")
    assert "fp64" in _one_line(e)
    with pytest.raises(TuneppError) as e:
        open_runner(onnx_file, backend="ort", device="cpu", precision="bf16")
    assert "openvino" in _one_line(e)


def _graph_without_masks(onnx_file: Path, out: Path) -> Path:
    """The real export with its mask inputs replaced by constant all-ones masks (metadata kept): it
    runs, deterministically — the silent failure the contract check exists for."""
    model = onnx.load(str(onnx_file))
    _, meta = read_onnx_meta(onnx_file)
    for name, site in zip(meta.mask_names, meta.sites, strict=True):
        (inp,) = [i for i in model.graph.input if i.name == name]
        model.graph.input.remove(inp)
        shape = site.mask_shape(meta.window, 1)
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(shape, np.float32), name))
    onnx.save(model, str(out))
    return out


@needs_ov
def test_refuses_a_graph_without_the_mask_inputs(tmp_path: Path, onnx_file: Path) -> None:
    path = _graph_without_masks(onnx_file, tmp_path / "nomask.onnx")
    import openvino as ov

    assert [p.get_any_name() for p in ov.Core().read_model(str(path)).inputs] == ["x"]  # OpenVINO would run it
    for backend in ("openvino", "ort"):  # both runners refuse it alike
        with pytest.raises(ModelMismatchError) as e:
            open_runner(path, backend=backend, device="cpu")
        msg = _one_line(e)
        assert "graph inputs ['x']" in msg and "mask_dec1" in msg


def _reshape_graph(meta, out: Path, qdq: bool = False) -> Path:
    """The contract's inputs and outputs around a ``Reshape`` to ``[-1, 3, *window]``: it opens like an
    export and fails inside the backend on a one-window call (as ``tests/reliability/corpus.contract_graph``).
    ``qdq``: ``log_var`` goes through a QuantizeLinear/DequantizeLinear pair (a Q/DQ-quantized graph)."""
    from onnx import TensorProto, helper

    win = list(meta.window)
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    inputs = [vi("x", ["B", meta.in_channels, *win])]
    inputs += [vi(n, ["R", *s.mask_shape(meta.window, 1)[1:]]) for n, s in zip(meta.mask_names, meta.sites,
                                                                               strict=True)]
    shape = helper.make_tensor("shape", TensorProto.INT64, [5], [-1, 3, *win])
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["logits"]), helper.make_node("Identity", ["x"], ["log_var"])]
    inits = [shape]
    if qdq:
        inits += [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05]),
                  helper.make_tensor("zero", TensorProto.INT8, [], [0])]
        nodes[1:] = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
                     helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["log_var"])]
    graph = helper.make_graph(nodes, "g", inputs, [vi("logits", ["R", "K", *win]), vi("log_var", ["R", 1, *win])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, meta.to_props())
    onnx.save(model, str(out))
    return out


@needs_ov
def test_backend_error_during_a_call_is_one_line_runtime_error(tmp_path: Path, onnx_file: Path) -> None:
    _, meta = read_onnx_meta(onnx_file)
    with open_runner(_reshape_graph(meta, tmp_path / "m.onnx"), backend="openvino", device="cpu") as r:
        x = torch.zeros(1, meta.in_channels, *meta.window)
        with pytest.raises(RuntimeError) as e:
            r(x, [torch.ones(s.mask_shape(meta.window, 1)) for s in meta.sites])
    msg = _one_line(e)
    assert msg.startswith("OpenVINO:") and "divide" in msg  # OpenVINO's sentence, not its C++ location


@needs_ov
def test_int8_only_for_a_quantized_graph(tmp_path: Path, onnx_file: Path) -> None:
    _, meta = read_onnx_meta(onnx_file)
    with pytest.raises(TuneppError) as e:
        open_runner(_reshape_graph(meta, tmp_path / "plain.onnx"), backend="openvino", device="cpu", precision="int8")
    assert "Q/DQ" in _one_line(e)
    path = _reshape_graph(meta, tmp_path / "qdq.onnx", qdq=True)
    with open_runner(path, backend="openvino", device="cpu", precision="int8") as r:
        # int8 comes from the Q/DQ nodes; the float ops around them keep the f32 pin
        assert "int8" in r.describe() and r.precision_hint(3, 3) == "f32"
        x = torch.rand(3, meta.in_channels, *meta.window, generator=torch.Generator().manual_seed(0))
        logits, log_var = r(x, [torch.ones(s.mask_shape(meta.window, 3)) for s in meta.sites])
    assert tuple(logits.shape) == (1, 3, *meta.window) and tuple(log_var.shape) == tuple(x.shape)


@needs_ov
def test_int8_compile_failure_names_the_way_out(tmp_path: Path, onnx_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, meta = read_onnx_meta(onnx_file)
    path = _reshape_graph(meta, tmp_path / "qdq.onnx", qdq=True)
    with open_runner(path, backend="openvino", device="cpu", precision="int8") as r:
        def refuse(*_a: object, **_k: object) -> None:  # what the AVX2 EPYC's plugin did with the phantom's int8 graph
            raise RuntimeError("Check 'any_of(scale.size(), OC, 1U)' failed at dnnl_postops_composer.cpp:526")

        monkeypatch.setattr(r.core, "compile_model", refuse)
        x = torch.rand(3, meta.in_channels, *meta.window)  # the shape the graph above compiles for
        with pytest.raises(RuntimeError) as e:
            r(x, [torch.ones(s.mask_shape(meta.window, 3)) for s in meta.sites])
    msg = _one_line(e)
    assert msg.startswith("OpenVINO: cannot compile") and "any_of(scale.size()" in msg and "--backend ort" in msg


@needs_ov
def test_threads_honoured_and_shapes_static_and_cached(onnx_file: Path) -> None:
    for n in (1, 2):
        with open_runner(onnx_file, backend="openvino", device="cpu", threads=n) as r:
            assert r.num_threads(1, 3) == n and f"{n} threads" in r.describe()
            compiled = r.compiled(1, 3)
            shapes = {p.get_any_name(): p.get_partial_shape() for p in compiled.inputs}
            assert all(s.is_static for s in shapes.values())
            assert list(shapes["x"].to_shape()) == [1, 1, *r.meta.window]
            assert list(shapes["mask_dec1"].to_shape()) == [3, r.meta.sites[0].channels]
            assert r.compiled(1, 3) is compiled and r.compiled(1, 4) is not compiled
    with pytest.raises(TuneppError) as e:
        open_runner(onnx_file, backend="openvino", device="cpu", threads=0)
    _one_line(e)


@needs_ov
def test_cpu_only_and_auto_picks_openvino_for_onnx(onnx_file: Path, ckpt: Path) -> None:
    from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner

    _, meta = read_onnx_meta(onnx_file)
    with pytest.raises(TuneppError) as e:
        OpenVinoRunner(str(onnx_file), meta, torch.device("cuda"))
    assert "CPU" in _one_line(e)
    assert auto_backend("onnx", CPU)[0] == "openvino"
    assert auto_backend("checkpoint", CPU)[0] == "torch"  # no in-memory export behind the user's back
    assert auto_backend("onnx", torch.device("cuda"))[0] == "ort"
    with open_runner(onnx_file, backend="auto", device="cpu") as r:
        assert r.name == "openvino"


@needs_ov
def test_doctor_lists_openvino_with_version() -> None:
    import openvino as ov

    from tunepp_deploy.doctor import run_checks

    checks = {c.name: c for c in run_checks()}
    assert checks["OpenVINO"].ok and ov.__version__.split("-")[0] in checks["OpenVINO"].detail
    assert checks["--backend auto (ONNX, CPU)"].detail.startswith("openvino")


@needs_ov
def test_cli_auto_says_openvino_and_matches_ort(tmp_path: Path, onnx_file: Path, scan: Path) -> None:
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from tunepp_deploy.cli.app import app

    outs, said = {}, {}
    for backend in ("auto", "ort"):
        res = CliRunner().invoke(app, ["infer", "-i", str(scan), "-o", str(tmp_path / backend), "--model",
                                       str(onnx_file), "--samples", "2", "--device", "cpu", "--backend", backend])
        assert res.exit_code == 0, res.output
        outs[backend], said[backend] = tmp_path / backend, " ".join(res.output.split())  # rich may wrap lines
    assert "--backend auto: openvino" in said["auto"] and "--backend auto" not in said["ort"]
    assert "openvino on cpu" in said["auto"]
    report = json.loads((outs["auto"] / "case_a_report.json").read_text())
    assert report["backend"] == "openvino"
    seg = [nib.load(str(o / "case_a_seg.nii.gz")).get_fdata() for o in outs.values()]
    print(f"CLI: labels differing openvino vs ort: {int((seg[0] != seg[1]).sum())} of {seg[0].size}")
    for kind in ("aleatoric", "epistemic", "total"):
        a, b = (nib.load(str(o / f"case_a_{kind}.nii.gz")).get_fdata() for o in outs.values())
        assert np.abs(a - b).max() <= SCAN_MAP_TOL, kind



@needs_ov
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_trunk_head_pair_equals_one_graph_and_runs_the_trunk_once(onnx_file: Path, ov_runner,
                                                                 volume: torch.Tensor, rows: int) -> None:
    """The split runner's maps equal the one graph's for any head-call size, the trunk runs once per
    window batch (not once per call), and every head call has at most ``rows`` rows."""
    from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner

    meta = ov_runner.meta
    masks = sample_masks(meta.sites, meta.window, 5, seed=3)
    ref = mc_predict(volume, ov_runner, masks, MCSettings(samples=5)).maps.stacked()
    pair = OpenVinoRunner(str(onnx_file), meta, CPU, threads=2, split=True)
    assert pair.splits and "trunk/head graph pair" in pair.describe() and pair.cut
    calls: dict[str, list[int]] = {"trunk": [], "head": []}
    trunk, head = pair.trunk, pair.head
    pair.trunk = lambda x: (calls["trunk"].append(int(x.shape[0])), trunk(x))[1]  # type: ignore[method-assign]
    pair.head = lambda f, m: (calls["head"].append(int(m[0].shape[0])), head(f, m))[1]  # type: ignore[method-assign]
    with pair:
        res = mc_predict(volume, pair, masks, MCSettings(samples=5, max_batch=2, rows_per_call=rows))
    got = res.maps.stacked()
    windows = res.windows
    assert sum(calls["trunk"]) == windows  # each window's trunk once
    assert max(calls["head"]) <= max(rows, 1) * 2 and sum(calls["head"]) == 5 * windows
    d = float((got - ref).abs().max())
    print(f"rows {rows}: max|pair - one graph| {d:.3g} over {windows} windows")
    assert d <= 1e-5


def test_ov_message_keeps_the_sentence_or_the_failed_check() -> None:
    from tunepp_deploy.infer.runners.openvino_runner import ov_message

    said = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nCheck 'false' failed at src/plugins/"
                        "intel_cpu/src/node.cpp:1018:\n[CPU] Convolution node 'c' Primitive descriptor was not found\n")
    assert ov_message(said) == "[CPU] Convolution node 'c' Primitive descriptor was not found"
    bare = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nException from src/inference/src/dev/"
                        "plugin.cpp:53:\nCheck 'it != end' failed at src/plugins/intel_cpu/src/graph.cpp:420:\n")
    assert ov_message(bare) == "Check 'it != end' failed at src/plugins/intel_cpu/src/graph.cpp:420:"
    assert ov_message(RuntimeError("Exception from a.cpp:1:")) == "Exception from a.cpp:1:"
    assert ov_message(RuntimeError("")) == "RuntimeError" and len(ov_message(RuntimeError("x" * 500))) == 200
