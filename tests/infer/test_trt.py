"""TensorRT: real builds/runs need TensorRT and a GPU (skipped with the reason printed); the sidecar
checks and the CLI's one-line errors run everywhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tunepp_deploy.export.engine_sidecar import EngineInfo, check_compatible, read_sidecar, write_sidecar
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.errors import ModelMismatchError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
WHY = "TensorRT not installed or no CUDA GPU here: the trt backend is written against the documented API, unverified"


def _info(tmp_path: Path, onnx_file: Path) -> EngineInfo:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    return EngineInfo("10.3.0", "8.7", "Orin", "abc", "fp16", {"x": [[1, 1, 48, 48, 32]] * 3}, props)


def test_sidecar_roundtrip_and_version_gpu_checks(tmp_path: Path, onnx_file: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    info = _info(tmp_path, onnx_file)
    write_sidecar(engine, info)
    back = read_sidecar(engine)
    assert back == info and back.meta.window == (48, 48, 32)
    check_compatible(back, engine, "10.3.0", "8.7")
    with pytest.raises(ModelMismatchError, match=r"TensorRT 10\.3\.0, this is TensorRT 11\.0\.0"):
        check_compatible(back, engine, "11.0.0", "8.7")
    with pytest.raises(ModelMismatchError, match=r"compute capability 8\.7"):
        check_compatible(back, engine, "10.3.0", "9.0")


def test_engine_without_sidecar_and_missing_tensorrt_are_one_line(tmp_path: Path, onnx_file: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    res = CliRunner().invoke(app, ["infer", "-i", str(onnx_file), "-o", str(tmp_path / "o"), "--model", str(engine)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    if not HAVE_TRT:
        res = CliRunner().invoke(app, ["export", "trt", "--onnx", str(onnx_file), "--out", str(tmp_path / "m.engine")])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "m.engine").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason=WHY)
def test_trt_engine_matches_ort(tmp_path: Path, onnx_file: Path) -> None:
    from tunepp_deploy.export.trt_build import build_engine

    from tunepp_deploy.infer.masks import sample_masks
    from tunepp_deploy.infer.runners import open_runner

    res = build_engine(onnx_file, tmp_path / "m.engine", precision="fp32", max_batch=2, samples=2)
    with open_runner(res.engine, "trt", "cuda") as trt_r, open_runner(onnx_file, "ort", "cpu") as ort_r:
        x = torch.rand(2, 1, *trt_r.meta.window)
        rows = sample_masks(trt_r.meta.sites, trt_r.meta.window, 2, 0).rows(range(2), 2)
        a = trt_r(x.cuda(), [r.cuda() for r in rows])[0].float().cpu()
        b = ort_r(x, rows)[0]
        assert float((a - b).abs().max()) <= 1e-3

