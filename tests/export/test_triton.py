"""`tunepp export triton`: the repository's configs against Triton's schema and the graph, bad inputs, and a
real round trip through the tritonserver binary that nvidia-pytriton bundles (skipped, with the reason,
where that server cannot start here). The oracle for the served maps is ``mc_predict`` — the engine of
``tunepp infer`` — on a volume that is exactly one window, with the same seed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tunepp_deploy.export.onnx_export import export_onnx
from tunepp_deploy.export.triton_mc import MAP_NAMES, WindowBatchMC
from tunepp_deploy.export.triton_repo import MC_MODEL, ONNX_MODEL, TRT_MODEL, write_repository
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config import load_config
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.model import build_network

REPO = Path(__file__).resolve().parents[2]
WINDOW = (16, 16, 16)
SAMPLES = 4
needs_tritonclient = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                        reason="tritonclient not installed (pip install 'tunepp-deploy[triton]')")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom network (perturbed so samples differ) exported for 16^3 windows (~30 s on 2 cores)."""
    cfg = load_config(REPO / "configs" / "phantom.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = build_network(cfg).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        out = tmp_path_factory.mktemp("triton_onnx") / "model.onnx"
        export_onnx(net, cfg, out, window=WINDOW)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def repo(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(onnx_model, out, samples=SAMPLES, max_batch_size=4, threads=1)
    return out


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, *WINDOW)).astype(np.float32)


def reference(mc: WindowBatchMC, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """`tunepp infer`'s engine on a one-window volume: sliding window, stitching, streaming float64 moments."""
    res = mc_predict(torch.from_numpy(x), mc.runner, sample_masks(mc.meta.sites, mc.meta.window, SAMPLES, seed),
                     MCSettings(samples=SAMPLES, seed=seed))
    assert res.windows == 1
    m = res.maps
    return dict(zip(MAP_NAMES, (t.numpy() for t in (m.mean_probs, m.epistemic, m.aleatoric, m.predictive_entropy,
                                                    m.mutual_information)), strict=True))


# ---- static: layout and configs -------------------------------------------------------------------------


def test_layout(repo: Path, onnx_model: Path) -> None:
    for name in (ONNX_MODEL, TRT_MODEL, MC_MODEL):
        assert (repo / name / "config.pbtxt").is_file()
    src = onnx_model.read_bytes()
    assert (repo / ONNX_MODEL / "1" / "model.onnx").read_bytes() == src
    assert (repo / MC_MODEL / "1" / "model.onnx").read_bytes() == src
    assert "class TritonPythonModel" in (repo / MC_MODEL / "1" / "model.py").read_text()
    assert "tunepp export trt" in (repo / TRT_MODEL / "1" / "README.txt").read_text()
    assert not [p for p in repo.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@needs_tritonclient
def test_graph_configs_match_onnxruntime_view(repo: Path, onnx_model: Path) -> None:
    """The ORT/TRT configs, parsed with Triton's proto, declare what an ORT session sees in the graph."""
    from tunepp_deploy.export.triton_config import data_type_name, validate_file

    graph = onnx.load(str(onnx_model))
    sess = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    seen = {a.name: a for a in (*sess.get_inputs(), *sess.get_outputs())}
    for name, platform in ((ONNX_MODEL, "onnxruntime_onnx"), (TRT_MODEL, "tensorrt_plan")):
        msg = validate_file(repo / name / "config.pbtxt", graph)
        assert msg.platform == platform and msg.max_batch_size == 0
        declared = {t.name: t for t in (*msg.input, *msg.output)}
        assert set(declared) == set(seen)
        for n, t in declared.items():
            assert data_type_name(t.data_type) == "TYPE_FP32" and seen[n].type == "tensor(float)"
            ort_dims = [d if isinstance(d, int) else -1 for d in seen[n].shape]
            assert list(t.dims) == ort_dims
    assert [t.name for t in msg.input][1:] == [f"mask_{s}" for s in ("dec1", "dec0")]


@needs_tritonclient
def test_mc_config(repo: Path) -> None:
    from tunepp_deploy.export.triton_config import validate_file

    msg = validate_file(repo / MC_MODEL / "config.pbtxt")
    assert msg.backend == "python" and msg.max_batch_size == 4 and msg.HasField("dynamic_batching")
    assert {t.name: list(t.dims) for t in msg.input} == {"x": [1, *WINDOW], "seed": [1], "start": [3]}
    assert [t.name for t in msg.output] == list(MAP_NAMES)
    assert list(msg.output[0].dims) == [5, *WINDOW]
    assert msg.parameters["samples"].string_value == str(SAMPLES)


@needs_tritonclient
@pytest.mark.parametrize(("old", "new", "needle"), [
    ("data_type: TYPE_FP32\n    dims: [ -1, 1, 16, 16, 16 ]", "data_type: TYPE_FP16\n    dims: [ -1, 1, 16, 16, 16 ]",
     "'x' data_type TYPE_FP16, the graph has TYPE_FP32"),
    ("dims: [ -1, 1, 16, 16, 16 ]", "dims: [ -1, 1, 16, 16, 17 ]", "'x' dims [-1, 1, 16, 16, 17]"),
    ("max_batch_size: 0", "max_batch_size: 4", "without the batch axis"),
    ("dims: [ -1, 16 ]", "dims: [ 8, 16 ]", "fix an axis the graph keeps dynamic"),
    ('name: "mask_dec0"', 'name: "mask_dec7"', "missing ['mask_dec0'], not in graph ['mask_dec7']"),
    ("TYPE_FP32", "TYPE_FLOAT32", "not a valid Triton model config"),
    ("max_batch_size: 0", "max_batch_sise: 0", "not a valid Triton model config"),
])
def test_broken_config_is_one_line(repo: Path, onnx_model: Path, tmp_path: Path, old: str, new: str,
                                   needle: str) -> None:
    from tunepp_deploy.export.triton_config import validate_file

    text = (repo / ONNX_MODEL / "config.pbtxt").read_text()
    assert old in text
    bad = tmp_path / ONNX_MODEL / "config.pbtxt"
    bad.parent.mkdir()
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(TuneppError) as e:
        validate_file(bad, onnx.load(str(onnx_model)))
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---- bad inputs and atomicity ---------------------------------------------------------------------------


def _no_mask_graph(onnx_model: Path, out: Path) -> Path:
    """A graph with no mask inputs that still carries tunepp metadata (config without dropout sites)."""
    props = {p.key: p.value for p in onnx.load(str(onnx_model), load_external_data=False).metadata_props}
    config = json.loads(props["tunepp.config"])
    config["model"]["dropout"]["sites"] = []
    props.update({"tunepp.config": json.dumps(config), "tunepp.dropout_sites": "[]", "tunepp.inputs": '["x"]'})
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 1, *WINDOW])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["b", 1, *WINDOW])
    g = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["logits"])],
                                                      "g", [x], [y]))
    onnx.helper.set_model_props(g, props)
    onnx.save(g, str(out))
    return out


def test_bad_inputs(onnx_model: Path, tmp_path: Path) -> None:
    with pytest.raises(TuneppError, match="not found"):
        write_repository(tmp_path / "missing.onnx", tmp_path / "r1")
    with pytest.raises(TuneppError, match="no dropout mask inputs"):
        write_repository(_no_mask_graph(onnx_model, tmp_path / "plain.onnx"), tmp_path / "r2")
    full = tmp_path / "r3"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(TuneppError, match="not empty"):
        write_repository(onnx_model, full)
    assert (full / "keep.txt").is_file()
    with pytest.raises(TuneppError, match="samples >= 1"):
        write_repository(onnx_model, tmp_path / "r4", samples=0)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists() and not (tmp_path / "r4").exists()


def test_cli_force_and_one_line_error(onnx_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = ["export", "triton", "--model", str(onnx_model), "--out", str(out), "--samples", "3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "not empty" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert not (out / "old.txt").exists() and (out / MC_MODEL / "1" / "model.py").is_file()
    assert 'string_value: "3"' in (out / MC_MODEL / "config.pbtxt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_failure_leaves_nothing(onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunepp_deploy.export.triton_repo as tr

    def boom(*a: object, **k: object) -> None:
        raise TuneppError("validation failed")

    monkeypatch.setattr(tr, "validate_file", boom)
    monkeypatch.setattr(tr, "_tritonclient_available", lambda: True)
    with pytest.raises(TuneppError, match="validation failed"):
        write_repository(onnx_model, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


# ---- the served computation, in-process -----------------------------------------------------------------


def test_window_batch_equals_tunepp_infer(onnx_model: Path) -> None:
    """Each window of a mixed-seed batch equals `tunepp infer`'s engine on that window with that seed."""
    mc = WindowBatchMC(onnx_model, SAMPLES, threads=1)
    x = windows(3)
    out = mc.run(x, np.array([7, 11, 7]))
    for b, seed in enumerate((7, 11, 7)):
        ref = reference(mc, x[b], seed)
        for n in MAP_NAMES:
            np.testing.assert_allclose(out[n][b], ref[n], atol=1e-5, rtol=0, err_msg=n)
    other = mc.run(x[:1], np.array([8]))
    assert np.abs(other["epistemic"][0] - out["epistemic"][0]).max() > 1e-4  # the seed matters
    assert out["epistemic"].max() > 1e-4  # the samples differ (MC is on)
    with pytest.raises(TuneppError, match="seeds must be >= 0"):
        mc.run(x[:1], np.array([-1]))
    with pytest.raises(TuneppError, match="windows must be"):
        mc.run(x[:, :, :8], np.array([1, 1, 1]))


# ---- a real Triton server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_dist(tmp: Path) -> tuple[Path, dict[str, str]] | str:
    """The bundled tritonserver with the stub for this Python copied in, and its environment; or why not."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return "nvidia-pytriton (bundled tritonserver) not installed"
    if importlib.util.find_spec("tritonclient") is None:
        return "tritonclient not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (dist / "bin" / "tritonserver").is_file() or not stub.is_file():
        return f"no tritonserver binary or Python {version} stub in {dist}"
    libs = root.parent / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    ldd = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=env, check=False)
    missing = [ln.split()[0] for ln in ldd.stdout.splitlines() if "not found" in ln]
    if missing:
        return f"the Python {version} stub cannot load {missing} (libpython mismatch; docs/triton.md)"
    out = tmp / "tritonserver"
    shutil.copytree(dist, out, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(stub, out / "backends" / "python" / "triton_python_backend_stub")
    env["TUNEPP_TRITON_SITE"] = sysconfig.get_paths()["purelib"]
    env["OMP_NUM_THREADS"] = "1"
    return out, env


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """tritonserver serving tunepp_mc on a free HTTP port (CPU); killed (its whole process group) at the end."""
    tmp = tmp_path_factory.mktemp("tritonserver")
    got = _server_dist(tmp)
    if isinstance(got, str):
        print(f"SKIP triton round trip: {got}")
        pytest.skip(got)
    dist, env = got
    port = _free_port()
    log = tmp / "server.log"
    cmd = [str(dist / "bin" / "tritonserver"), f"--model-repository={repo}", f"--backend-directory={dist / 'backends'}",
           "--model-control-mode=explicit", f"--load-model={MC_MODEL}", f"--http-port={port}", "--allow-grpc=false",
           "--allow-metrics=false", "--exit-timeout-secs=5"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = client.is_model_ready(MC_MODEL)
            except Exception:  # not listening yet
                ready = False
            if ready:
                break
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        if not ready:
            tail = " | ".join(text.strip().splitlines()[-3:])[:400]
            if f"failed to load '{MC_MODEL}'" in text or "Started HTTPService" in text:
                pytest.fail(f"tritonserver started but {MC_MODEL} did not load: {tail}")
            print(f"SKIP triton round trip: tritonserver did not start: {tail}")
            pytest.skip(f"tritonserver did not start: {tail}")
        yield client
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the stubs share the server's session: none may outlive it
            os.killpg(proc.pid, signal.SIGKILL)


def _request(x: np.ndarray, seed: int):
    import tritonclient.http as httpclient

    ins = [httpclient.InferInput("x", list(x.shape), "FP32"), httpclient.InferInput("seed", [x.shape[0], 1], "INT64")]
    ins[0].set_data_from_numpy(x)
    ins[1].set_data_from_numpy(np.full((x.shape[0], 1), seed, np.int64))
    outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in MAP_NAMES]
    return ins, outs


def test_triton_round_trip(server, onnx_model: Path) -> None:
    """Served maps equal `tunepp infer`'s engine (same window, same seed) within 1e-5; latency vs in-process."""
    from tritonclient.utils import InferenceServerException

    mc = WindowBatchMC(onnx_model, SAMPLES, threads=1)
    x = windows(2, seed=1)
    ins, outs = _request(x, 7)
    res = server.infer(MC_MODEL, ins, outputs=outs)
    for b in range(2):
        ref = reference(mc, x[b], 7)
        for n in MAP_NAMES:
            np.testing.assert_allclose(res.as_numpy(n)[b], ref[n], atol=1e-5, rtol=0, err_msg=n)

    # requests in flight together (dynamic batching may join them): each gets its own seed's maps
    reqs = [_request(x[i % 2 : i % 2 + 1], s) for i, s in enumerate((3, 4, 5))]
    pending = [server.async_infer(MC_MODEL, ins, outputs=outs) for ins, outs in reqs]
    for i, (req, s) in enumerate(zip(pending, (3, 4, 5), strict=True)):
        got = req.get_result().as_numpy("mean_probs")[0]
        np.testing.assert_allclose(got, reference(mc, x[i % 2], s)["mean_probs"], atol=1e-5, rtol=0)

    with pytest.raises(InferenceServerException, match="seeds must be >= 0"):
        bad_in, bad_out = _request(x[:1], -3)
        server.infer(MC_MODEL, bad_in, outputs=bad_out)

    served, local = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server's stub (OMP_NUM_THREADS=1): the same threads on both sides
    try:
        for _ in range(7):
            t0 = time.perf_counter()
            server.infer(MC_MODEL, ins, outputs=outs)
            served.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mc.run(x, np.array([7, 7]))
            local.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    ms, ml = statistics.median(served), statistics.median(local)
    print(f"\ntriton tunepp_mc: {x.shape[0]} windows {WINDOW} x {SAMPLES} samples, median of 7: served "
          f"{ms * 1e3:.1f} ms, in-process ORT {ml * 1e3:.1f} ms, ratio {ms / ml:.2f} (1 ORT + 1 torch thread each)")
