"""``tunepp infer`` end to end: geometry of the outputs, one-line errors with no partial output,
resume, failure isolation, and reproducibility across processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import SCAN_MAP_TOL, write_scan
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint

FAST = ["--samples", "2"]


def _infer(inp: Path, out: Path, model: Path, *extra: str):
    return CliRunner().invoke(app, ["infer", "-i", str(inp), "-o", str(out), "--model", str(model), *FAST, *extra])


def _one_line_error(res) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output


def test_outputs_overlay_oblique_anisotropic_input(tmp_path: Path, onnx_file: Path) -> None:
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    spacing = (1.7, 2.9, 3.3)
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = [-40.0, 12.5, 80.0]
    scan = write_scan(tmp_path / "in" / "obl.nii.gz", shape=(45, 29, 27), spacing=spacing, affine=aff)
    res = _infer(scan, tmp_path / "out", onnx_file)
    assert res.exit_code == 0, res.output
    src = nib.load(str(scan))
    for kind, dtype in (("seg", np.uint8), ("aleatoric", np.float32), ("epistemic", np.float32),
                        ("total", np.float32)):
        img = nib.load(str(tmp_path / "out" / f"obl_{kind}.nii.gz"))
        assert img.shape == src.shape and np.allclose(img.affine, src.affine, atol=1e-5)
        assert img.get_data_dtype() == dtype
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    total = nib.load(str(tmp_path / "out" / "obl_total.nii.gz")).get_fdata()
    ale = nib.load(str(tmp_path / "out" / "obl_aleatoric.nii.gz")).get_fdata()
    epi = nib.load(str(tmp_path / "out" / "obl_epistemic.nii.gz")).get_fdata()
    assert np.allclose(total, ale + epi, atol=1e-6) and (epi >= 0).all() and epi.max() > 0
    report = json.loads((tmp_path / "out" / "obl_report.json").read_text())
    assert report["samples"] == 2 and report["seed"] == 0 and report["backend"] in ("ort", "openvino")  # auto
    assert len(report["labels"]) == 4 and {"load", "inference", "write"} <= set(report["timing_s"])
    assert "triage_score" in report["case"] and report["input_shape"] == [45, 29, 27]


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    d = tmp / "bad"
    d.mkdir()
    good = write_scan(d / "good.nii.gz")
    text = d / "notes.nii.gz"
    text.write_text("this is not a NIfTI file")
    trunc = d / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    nan = np.zeros((40, 36, 30), np.float32)
    nan[3, 3, 3] = np.nan
    inf = np.zeros((40, 36, 30), np.float32)
    inf[1, 2, 3] = np.inf
    return {
        "missing": d / "nope.nii.gz",
        "not_nifti": text,
        "truncated": trunc,
        "2d": _save(d / "flat.nii.gz", np.zeros((40, 36), np.float32)),
        "4d": _save(d / "multi.nii.gz", np.zeros((20, 20, 20, 3), np.float32)),
        "nan": _save(d / "nan.nii.gz", nan),
        "inf": _save(d / "inf.nii.gz", inf),
        "zero_axis": _save(d / "empty.nii.gz", np.zeros((40, 0, 30), np.float32)),
    }


def _save(path: Path, arr: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("kind", ["missing", "not_nifti", "truncated", "2d", "4d", "nan", "inf", "zero_axis"])
def test_bad_scan_is_one_line_and_writes_nothing(tmp_path: Path, onnx_file: Path, kind: str) -> None:
    path = _bad_inputs(tmp_path)[kind]
    out = tmp_path / "out"
    _one_line_error(_infer(path, out, onnx_file))
    assert not out.exists() or not any(out.iterdir())


def test_foreign_models_and_unwritable_output(tmp_path: Path, onnx_file: Path, scan: Path, cfg) -> None:
    import onnx

    plain = tmp_path / "plain.onnx"  # a valid ONNX graph with no tunepp metadata
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), str(plain))
    _one_line_error(_infer(scan, tmp_path / "o1", plain))

    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"widths": [8, 16, 32, 32]})})
    foreign = save_checkpoint(tmp_path / "foreign.pt", build_network(other), other)
    ck = torch.load(foreign, weights_only=True)
    ck["config"] = json.loads(json.dumps(ck["config"]))
    ck["config"]["model"]["widths"] = [8, 16, 32, 64]  # weights of one config, metadata of another
    torch.save(ck, foreign)
    _one_line_error(_infer(scan, tmp_path / "o2", foreign))

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf")
    _one_line_error(_infer(scan, tmp_path / "o3", garbage))

    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    _one_line_error(_infer(scan, blocker / "sub", onnx_file))
    for d in ("o1", "o2", "o3"):
        assert not (tmp_path / d).exists() or not any((tmp_path / d).iterdir())


def test_folder_resume_and_failure_isolation(tmp_path: Path, onnx_file: Path) -> None:
    inp = tmp_path / "in"
    write_scan(inp / "a.nii.gz", seed=1)
    write_scan(inp / "b.nii.gz", seed=2)
    out = tmp_path / "out"
    assert _infer(inp, out, onnx_file).exit_code == 0
    seg_a = out / "a_seg.nii.gz"
    stamp = seg_a.stat().st_mtime_ns
    (out / "b_report.json").unlink()  # b looks interrupted: maps present, report missing
    _save(inp / "c.nii.gz", np.full((40, 36, 30), np.nan, np.float32))  # a bad case joins the folder
    res = _infer(inp, out, onnx_file)
    assert res.exit_code == 1, res.output
    assert "skipped a" in res.output and "done b" in res.output and "failed c" in res.output
    assert seg_a.stat().st_mtime_ns == stamp and (out / "b_report.json").exists()
    assert not list(out.glob("c_*")) and not list(out.glob(".*tmp*"))
    res = _infer(inp, out, onnx_file, "--overwrite")
    assert seg_a.stat().st_mtime_ns != stamp


def test_same_seed_identical_across_processes(tmp_path: Path, onnx_file: Path, scan: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        cmd = [sys.executable, "-m", "tunepp_deploy", "infer", "-i", str(scan), "-o", str(out), "--model",
               str(onnx_file), "--samples", "3", "--seed", "7"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append({k: np.asarray(nib.load(str(out / f"case_a_{k}.nii.gz")).dataobj)
                     for k in ("seg", "epistemic", "aleatoric", "total")})
    for k in outs[0]:
        assert np.array_equal(outs[0][k], outs[1][k]), k


def test_torch_backend_from_checkpoint_matches_ort(tmp_path: Path, onnx_file: Path, ckpt: Path, scan: Path) -> None:
    assert _infer(scan, tmp_path / "t", ckpt, "--backend", "torch").exit_code == 0
    assert _infer(scan, tmp_path / "o", onnx_file).exit_code == 0
    a = nib.load(str(tmp_path / "t" / "case_a_total.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "o" / "case_a_total.nii.gz")).get_fdata()
    # float32 backends disagree most on a scan's background (SCAN_MAP_TOL says by how much)
    assert np.abs(a - b).max() <= SCAN_MAP_TOL


def test_backend_model_mismatch_and_doctor(tmp_path: Path, onnx_file: Path, scan: Path) -> None:
    _one_line_error(_infer(scan, tmp_path / "o", onnx_file, "--backend", "torch"))
    _one_line_error(_infer(scan, tmp_path / "o", onnx_file, "--backend", "trt"))
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0 and "TensorRT" in res.output and "ONNX Runtime" in res.output


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", "onnx", "--checkpoint", str(tmp_path / "no.pt"), "--out",
                                   str(tmp_path / "m.onnx")])
    _one_line_error(res)
    assert not (tmp_path / "m.onnx").exists()


def test_demo_figure(tmp_path: Path) -> None:
    from tunepp_deploy.demo import write_figure

    rng = np.random.default_rng(0)
    seg = np.zeros((20, 18, 16), np.uint8)
    seg[5:10, 5:10, 4:12] = 2
    maps = {m: rng.random((20, 18, 16)).astype(np.float32) for m in ("epistemic", "aleatoric", "total")}
    path = write_figure(rng.random((20, 18, 16)), seg, seg, maps, tmp_path / "demo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
