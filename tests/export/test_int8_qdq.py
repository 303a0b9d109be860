"""``tunepp export int8``: the Q/DQ graph keeps the contract (float mask inputs, stochastic), runs on ONNX
Runtime, and agrees with the float graph (the independent oracle: the fp32 export of the same network,
checked against torch) within stated tolerances; bad calibration folders are one-line errors."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import typer
from tunepp_deploy.calibrate.int8 import scan_paths, write_calibration_set
from tunepp_deploy.export.metadata import QUANT_KEY, meta_for, quantization_of
from tunepp_deploy.export.onnx_export import MCGraph, export_onnx
from typer.testing import CliRunner

from tunepp_deploy.cli.export_int8_cmd import int8
from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.runners.load import read_onnx_meta
from tunepp_deploy.model import build_network

ROOT = Path(__file__).resolve().parents[2]
#: Tolerances of int8 against fp32 on the tiny (random, weight-spread) network: its logits span about +-4,
#: int8 steps of the activations then move probabilities by a few percent, rarely by more than 0.25.
PROB_MEAN_TOL = 0.02
PROB_MAX_TOL = 0.25
#: Labels where fp32 is decisive (top-2 probability gap above DECISIVE) must survive quantization.
DECISIVE = 0.2
DECISIVE_AGREEMENT = 0.995
#: All voxels, near-ties included (measured 0.958 on this network).
LABEL_AGREEMENT = 0.90


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A tiny phantom-config network, its fp32 export, a calibration folder and its int8 export (CLI)."""
    cfg = load_config(ROOT / "configs" / "phantom.yaml", {
        "data.crop_size": [16, 16, 8], "data.spacing": [4.0, 4.0, 5.0], "model.widths": [8, 16],
        "model.depths": [1, 1], "model.decoder_depths": [1], "model.proj_tokens": 8,
        "model.dropout.sites": ["dec0"],
    })
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    with torch.no_grad():  # a freshly initialised network is nearly constant; spread its outputs a little
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tmp = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(net, cfg, tmp / "model.onnx").path
    data = write_phantom_dataset(tmp / "data", 3, seed=3, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    meta = meta_for(net, cfg)
    calib = tmp / "calib"
    write_calibration_set(meta, scan_paths(data), calib, windows=16, batch=4)
    out = tmp / "model_int8.onnx"
    res = _cli(["--model", str(fp32), "--calib", str(calib), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return net, meta, fp32, calib, out


def _cli(args: list[str]):
    app = typer.Typer()
    app.command("int8")(int8)
    return CliRunner().invoke(app, args)


def _feeds(meta, calib: Path, seed: int, samples: int = 4) -> dict[str, np.ndarray]:
    """One calibration window with ``samples`` mask rows drawn from ``seed`` (not the calibration draw)."""
    x = np.load(calib / "batch_00001.npy")[:1]
    rows = sample_masks(meta.sites, meta.window, samples, seed=seed).rows(range(samples), 1, starts=[(0, 0, 0)])
    return {"x": x, **{n: t.numpy() for n, t in zip(meta.mask_names, rows, strict=True)}}


def _probs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    return torch.softmax(torch.from_numpy(logits), 1).numpy()


def test_graph_is_qdq_with_float_mask_inputs_and_metadata(tiny) -> None:
    _, meta, fp32, _, out = tiny
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert set(meta.input_names) <= set(inputs)
    assert all(inputs[n] == onnx.TensorProto.FLOAT for n in meta.mask_names)
    # the mask inputs still feed a float multiplication, not a QuantizeLinear (dropout at full precision)
    consumers = {n.op_type for n in model.graph.node for name in meta.mask_names if name in n.input}
    assert "QuantizeLinear" not in consumers and consumers
    # float graph metadata kept (the runners read it), plus the int8 record; the float export has none
    _, qmeta = read_onnx_meta(out)
    assert qmeta.input_names == meta.input_names and qmeta.window == meta.window
    props = {p.key: p.value for p in model.metadata_props}
    rec = quantization_of(props)
    assert rec is not None and rec["windows"] == 16 and rec["masks"] == "drawn" and rec["format"] == "onnx-qdq"
    assert rec["symmetric"] is True  # the default: what TensorRT needs and OpenVINO compiles
    assert quantization_of({p.key: p.value for p in onnx.load(str(fp32)).metadata_props}) is None
    assert json.loads(props[QUANT_KEY])["op_types"] == ["Conv", "ConvTranspose", "MatMul", "Gemm"]


def test_int8_agrees_with_fp32_oracle(tiny) -> None:
    net, meta, fp32, calib, out = tiny
    feeds = _feeds(meta, calib, seed=11)
    ref = _probs(fp32, feeds)
    # the oracle itself: the fp32 export equals torch on the same masks
    with torch.no_grad():
        logits, _ = MCGraph(net)(torch.from_numpy(feeds["x"]), tuple(torch.from_numpy(feeds[n])
                                                                     for n in meta.mask_names))
    np.testing.assert_allclose(ref, torch.softmax(logits, 1).numpy(), atol=1e-4)
    got = _probs(out, feeds)
    assert np.isfinite(got).all()
    diff = np.abs(got - ref)
    assert diff.mean() < PROB_MEAN_TOL and diff.max() < PROB_MAX_TOL, (diff.mean(), diff.max())
    agree = got.argmax(1) == ref.argmax(1)
    assert agree.mean() >= LABEL_AGREEMENT, agree.mean()
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > DECISIVE
    assert decisive.sum() > 1000 and agree[decisive].mean() >= DECISIVE_AGREEMENT, agree[decisive].mean()


def test_masks_still_drive_the_int8_graph(tiny) -> None:
    _, meta, _, calib, out = tiny
    a, b = _feeds(meta, calib, seed=1), _feeds(meta, calib, seed=2)
    assert any(not np.array_equal(a[n], b[n]) for n in meta.mask_names)
    pa, pb = _probs(out, a), _probs(out, b)
    assert np.abs(pa - pb).max() > 1e-2  # different masks, different samples
    np.testing.assert_array_equal(_probs(out, a), pa)  # same masks, same output: no hidden randomness
    # rows of one call differ from each other too (each row is its own MC sample)
    assert np.abs(pa[0] - pa[1]).max() > 1e-2


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_bad_calibration_folder_is_one_line(tiny, tmp_path: Path) -> None:
    _, meta, fp32, _, _ = tiny
    out = tmp_path / "q.onnx"
    base = ["--model", str(fp32), "--out", str(out), "--calib"]
    assert "not found" in _one_line_error(_cli([*base, str(tmp_path / "missing")]))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .npy" in _one_line_error(_cli([*base, str(empty)]))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.save(wrong / "batch_00000.npy", np.zeros((2, meta.in_channels, 8, 8, 8), np.float32))  # not the window
    assert "shape" in _one_line_error(_cli([*base, str(wrong)]))
    channels = tmp_path / "channels"
    channels.mkdir()
    np.save(channels / "batch_00000.npy", np.zeros((2, meta.in_channels + 1, *meta.window), np.float32))
    assert "shape" in _one_line_error(_cli([*base, str(channels)]))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "batch_00000.npy").write_bytes(b"not numpy")
    assert "unreadable" in _one_line_error(_cli([*base, str(broken)]))
    nan = tmp_path / "nan"
    nan.mkdir()
    np.save(nan / "batch_00000.npy", np.full((1, meta.in_channels, *meta.window), np.nan, np.float32))
    assert "NaN" in _one_line_error(_cli([*base, str(nan)]))
    assert not out.exists()  # nothing partial written


def test_quantized_input_and_bad_output_name_refused(tiny, tmp_path: Path) -> None:
    _, _, _, calib, out = tiny
    assert "already quantized" in _one_line_error(_cli(["--model", str(out), "--calib", str(calib),
                                                        "--out", str(tmp_path / "q.onnx")]))
    _, _, fp32, _, _ = tiny
    assert ".onnx" in _one_line_error(_cli(["--model", str(fp32), "--calib", str(calib),
                                            "--out", str(tmp_path / "q.bin")]))


def _openvino_int8_error(path: Path) -> str | None:
    """None when this CPU's OpenVINO plugin compiles the Q/DQ graph, else the runner's one-line error.

    On an AVX2-only AMD EPYC (no VNNI, 2026-12-04) OpenVINO 2026.4 refuses the quantized MatMuls of this
    network with a post-ops check; on AVX-512 VNNI CPUs it compiles (docs/results/int8.md)."""
    from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner

    runner = OpenVinoRunner(str(path), read_onnx_meta(path)[1], torch.device("cpu"), threads=1, precision="int8")
    try:
        runner.compiled(1, 4)
    except RuntimeError as e:
        return str(e)
    return None


def _cpu_flags() -> str:
    from tunepp_deploy.bench.machine import read_cpu_facts

    facts = read_cpu_facts()
    return f"{facts.model_name}: {' '.join(facts.flags) or 'no flags of interest'}"


@pytest.mark.skipif(find_spec("openvino") is None, reason="openvino is not installed: pip install "
                    "'tunepp-deploy[openvino]'")
def test_openvino_runs_the_default_graph_in_int8(tiny) -> None:
    from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner

    _, meta, fp32, calib, out = tiny
    err = _openvino_int8_error(out)
    if err is not None:  # the failure must be the one-line error that names the way out, then nothing to run
        assert "\n" not in err and err.startswith("OpenVINO: cannot compile") and "--backend ort" in err, err
        pytest.skip(f"OpenVINO cannot compile this int8 graph on this CPU ({_cpu_flags()}); its error was checked")
    feeds = _feeds(meta, calib, seed=7)
    runner = OpenVinoRunner(str(out), read_onnx_meta(out)[1], torch.device("cpu"), threads=1, precision="int8")
    rt = runner.compiled(1, 4).get_runtime_model()
    convs = {op.get_rt_info()["runtimePrecision"].astype(str) for op in rt.get_ordered_ops()
             if "Convolution" in op.get_rt_info()["layerType"].astype(str)}
    # 8-bit integer kernels, not a float fallback: i8, or u8 where the plugin takes unsigned activations
    # (seen on an AVX-512 VNNI CPU: {'i8', 'u8'}; {'i8'} on others)
    assert convs and convs <= {"i8", "u8"}, convs
    logits, _ = runner(torch.from_numpy(feeds["x"]), [torch.from_numpy(feeds[n]) for n in meta.mask_names])
    got = torch.softmax(logits, 1).numpy()
    ref = _probs(fp32, feeds)
    assert np.abs(got - ref).mean() < PROB_MEAN_TOL
    assert (got.argmax(1) == ref.argmax(1)).mean() >= LABEL_AGREEMENT


def test_source_folder_untouched_and_write_is_whole(tiny, tmp_path: Path) -> None:
    import shutil

    from tunepp_deploy.export.int8_qdq import quantize_qdq

    _, _, fp32, calib, out = tiny
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = src_dir / "model.onnx"
    shutil.copyfile(fp32, src)
    dst = tmp_path / "dst" / "q.onnx"
    res = quantize_qdq(src, calib, dst)
    assert sorted(p.name for p in src_dir.iterdir()) == ["model.onnx"]  # no -inferred.onnx left or written there
    assert sorted(p.name for p in dst.parent.iterdir()) == ["q.onnx"]  # no temporary file left next to it
    assert res.path == dst and res.windows == 16
    # deterministic: the same inputs give the same graph as the CLI's
    assert onnx.load(str(dst)).graph == onnx.load(str(out)).graph


@pytest.mark.skipif(find_spec("openvino") is None, reason="openvino is not installed: pip install "
                    "'tunepp-deploy[openvino]'")
def test_infer_cli_labels_int8_runs_and_refuses_precision_misuse(tiny, tmp_path: Path) -> None:
    """`tunepp infer` on the Q/DQ graph: the report says int8 (asked or not: OpenVINO runs Q/DQ in int8
    whatever the hint), a folder of fp32 results refuses the int8 run, and --precision outside OpenVINO or
    int8 on a float graph are one-line errors (exit 2)."""
    import nibabel as nib

    from tunepp_deploy.cli.app import app

    _, _, fp32, _, q = tiny
    scans = tmp_path / "in"
    scans.mkdir()
    vol = np.random.default_rng(0).random((20, 20, 12), dtype=np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([4.0, 4.0, 5.0, 1.0])), str(scans / "c_0000.nii.gz"))

    def infer(out: str, model: Path, *extra: str):
        return CliRunner().invoke(app, ["infer", "-i", str(scans), "-o", str(tmp_path / out), "--model", str(model),
                                        "--samples", "2", "--device", "cpu", "--threads", "1", *extra])

    ov_err = _openvino_int8_error(q)
    for out, extra in (("q_default", ["--backend", "openvino"]),
                       ("q_asked", ["--backend", "openvino", "--precision", "int8"])):
        res = infer(out, q, *extra)
        if ov_err is not None:  # a CPU whose plugin cannot compile it: a failed case naming the way out, no maps
            assert res.exit_code != 0 and "--backend ort" in res.output, res.output
            assert not list((tmp_path / out).glob("*.nii.gz"))
            continue
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / out / "c_report.json").read_text())
        assert report["backend"] == "openvino:int8", report["backend"]
        total = nib.load(str(tmp_path / out / "c_total.nii.gz")).get_fdata()
        assert np.isfinite(total).all()
    res = infer("f", fp32, "--backend", "openvino")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "f" / "c_report.json").read_text())["backend"] == "openvino"
    res = infer("f", q, "--backend", "openvino")  # int8 results into a folder of fp32 ones: refused
    assert res.exit_code != 0 and "c_seg.nii.gz" in {p.name for p in (tmp_path / "f").iterdir()}
    for extra, words in ((["--backend", "ort", "--precision", "bf16"], "openvino"),
                         (["--backend", "openvino", "--precision", "int8"], "Q/DQ")):
        res = infer("bad", fp32, *extra)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0], res.output
    assert not (tmp_path / "bad").exists()
