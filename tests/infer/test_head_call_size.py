"""Rows per head call (issue #14 item 6): the engine honours the chosen size, the maps do not depend on
it (torch, ONNX Runtime's trunk / head pair), the default rule, and bad sizes as one-line errors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from infer_helpers import FakeRunner
from tunepp_deploy.export.metadata import ModelMeta, meta_for

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict, parse_rows_per_call
from tunepp_deploy.infer.runners.base import CPU_HEAD_VOXELS_PER_CALL, CPU_ROWS_PER_CALL, default_rows_per_call
from tunepp_deploy.infer.runners.ort_runner import OrtRunner
from tunepp_deploy.infer.runners.torch_runner import TorchRunner
from tunepp_deploy.model.blocks.dropout import DropoutSite

SITES = (DropoutSite("dec1", 16, 0.1, "channel", (4, 4, 4)), DropoutSite("dec0", 8, 0.1, "channel", (2, 2, 2)))
SIZES = (1, 2, 4, 5, 8, 13, 25)


class SplitFake(FakeRunner):
    """:class:`FakeRunner` with a trunk (the windows themselves) and a head (the fake's formula), which
    records every call's row count: the spy on what the engine asked for."""

    def __init__(self, meta: ModelMeta, device: torch.device) -> None:
        super().__init__(meta, device)
        self.trunk_windows: list[int] = []
        self.head_rows: list[int] = []
        self.whole_calls = 0

    @property
    def splits(self) -> bool:
        return True

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.trunk_windows.append(int(x.shape[0]))
        return (x.clone(),)

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.head_rows.append(int(masks[0].shape[0]))
        return FakeRunner.infer(self, feats[0], masks)

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.whole_calls += 1
        return FakeRunner.infer(self, x, masks)


class Profiled(FakeRunner):
    """A backend with a hard row limit of its own (as a TensorRT profile's maximum)."""

    @property
    def max_rows(self) -> int | None:
        return 3


@pytest.fixture
def meta(cfg) -> ModelMeta:
    return ModelMeta(cfg, (16, 16, 16), SITES)


def _naive_maps(vol: torch.Tensor, meta: ModelMeta, masks, samples: int) -> torch.Tensor:
    """Oracle: a one-graph runner (no split) taking every window's S rows in one call."""
    return mc_predict(vol, FakeRunner(meta, torch.device("cpu")), masks,
                      MCSettings(samples=samples, rows_per_call=samples, max_batch=1)).maps.stacked()


@pytest.mark.parametrize("rows", SIZES)
def test_engine_honours_rows_per_call_and_runs_the_trunk_once(meta: ModelMeta, rows: int) -> None:
    vol = torch.rand(1, 24, 16, 20, generator=torch.Generator().manual_seed(3))
    S = 25
    masks = sample_masks(SITES, meta.window, S, seed=1)
    spy = SplitFake(meta, torch.device("cpu"))
    res = mc_predict(vol, spy, masks, MCSettings(samples=S, rows_per_call=rows, max_batch=1))
    per_window = [min(rows, S - i) for i in range(0, S, rows)]  # the calls one window's S rows need
    assert spy.head_rows == per_window * res.windows
    assert spy.trunk_windows == [1] * res.windows and spy.whole_calls == 0
    assert torch.allclose(res.maps.stacked(), _naive_maps(vol, meta, masks, S), atol=1e-6)


def test_rows_per_call_bounded_by_a_backend_limit(meta: ModelMeta) -> None:
    vol = torch.rand(1, 16, 16, 16)
    masks = sample_masks(SITES, meta.window, 5, seed=0)
    res = mc_predict(vol, Profiled(meta, torch.device("cpu")), masks, MCSettings(samples=5, rows_per_call=5))
    assert res.plan.samples_per_call == 3 and res.calls == 2


@pytest.mark.parametrize("bad", [0, -2, 2.5, "5", True])
def test_invalid_rows_per_call_is_one_line_error(meta: ModelMeta, bad: object) -> None:
    masks = sample_masks(SITES, meta.window, 2, seed=0)
    with pytest.raises(TuneppError) as e:
        mc_predict(torch.rand(1, 16, 16, 16), FakeRunner(meta, torch.device("cpu")), masks,
                   MCSettings(samples=2, rows_per_call=bad))  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and "rows per call" in str(e.value)


def test_parse_rows_per_call() -> None:
    assert parse_rows_per_call("auto") == "auto" and parse_rows_per_call(" 7 ") == 7
    for bad in ("0", "-1", "five", "2.5", ""):
        with pytest.raises(TuneppError) as e:
            parse_rows_per_call(bad)
        assert "\n" not in str(e.value)


def test_default_rule_fits_the_head_budget() -> None:
    for window in [(96, 96, 96), (48, 48, 32), (64, 64, 64), (16, 16, 16), (200, 200, 200)]:
        rows = default_rows_per_call(window, splits=True)
        vox = window[0] * window[1] * window[2]
        assert 1 <= rows <= CPU_ROWS_PER_CALL
        assert rows == 1 or rows * vox <= CPU_HEAD_VOXELS_PER_CALL  # within the budget
        assert rows == CPU_ROWS_PER_CALL or (rows + 1) * vox > CPU_HEAD_VOXELS_PER_CALL  # and the largest such
        assert default_rows_per_call(window, splits=False) == CPU_ROWS_PER_CALL  # one graph: all S in one call


def test_maps_do_not_change_with_call_size_torch_and_ort_pair(net, cfg, onnx_file) -> None:
    """Real network, one phantom window, MC-5: torch and the ONNX Runtime trunk / head pair at every
    call size against one call of all rows on ONNX Runtime's one graph (another runtime and graph)."""
    meta = meta_for(net, cfg)
    cpu = torch.device("cpu")
    vol = torch.rand(1, *meta.window, generator=torch.Generator().manual_seed(5))
    S = 5
    masks = sample_masks(meta.sites, meta.window, S, seed=4)
    one = OrtRunner(str(onnx_file), meta, cpu, threads=1)
    oracle = mc_predict(vol, one, masks, MCSettings(samples=S, rows_per_call=S)).maps.stacked()
    assert oracle.isfinite().all()
    pair = OrtRunner(str(onnx_file), meta, cpu, threads=1, split=True)
    assert pair.splits and not one.splits
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for runner in (TorchRunner(net, meta, cpu), pair):
            for rows in (1, 2, 4, 5):
                res = mc_predict(vol, runner, masks, MCSettings(samples=S, rows_per_call=rows))
                assert res.plan.samples_per_call == rows and res.calls == -(-S // rows)
                diff = (res.maps.stacked() - oracle).abs().max().item()
                assert diff <= (1e-6 if runner is pair else 1e-5), (runner.name, rows, diff)
    finally:
        torch.set_num_threads(old)


def test_ort_pair_matches_the_one_graph_call(net, cfg, onnx_file) -> None:
    """Trunk graph then head graph == the one exported graph, row for row (several windows and rows)."""
    meta = meta_for(net, cfg)
    pair = OrtRunner(str(onnx_file), meta, torch.device("cpu"), threads=1, split=True)
    x = torch.rand(2, 1, *meta.window, generator=torch.Generator().manual_seed(0))
    rows = sample_masks(meta.sites, meta.window, 3, seed=1).rows([0, 1, 2], 2)
    whole = pair(x, rows)
    split = pair.head(pair.trunk(x), rows)
    for a, b in zip(whole, split, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
    with pytest.raises(TuneppError, match="CPU provider only"):
        OrtRunner(str(onnx_file), meta, torch.device("cuda"), split=True)


def test_cli_rows_per_call_same_maps_auto_measures_and_bad_values_refused(tmp_path, ckpt, cfg) -> None:
    """``tunepp infer --rows-per-call``: N and auto give the default's maps (same masks and noise), the report
    says how the size was chosen, a bad value is one line with exit 2, and a method without rows refuses it."""
    import json

    import nibabel as nib
    import numpy as np
    from infer_helpers import write_scan
    from typer.testing import CliRunner

    from tunepp_deploy.cli.app import app

    scan = write_scan(tmp_path / "scan.nii.gz")
    threads = torch.get_num_threads()

    def run(out: str, *extra: str):
        try:
            return CliRunner().invoke(app, ["infer", "-i", str(scan), "-o", str(tmp_path / out), "-m", str(ckpt),
                                            "--backend", "torch", "--samples", "5", "--noise-draws", "2",
                                            "--threads", "1", *extra])
        finally:
            torch.set_num_threads(threads)

    runs = {"default": run("d"), "2": run("r2", "--rows-per-call", "2"), "auto": run("ra", "--rows-per-call", "auto")}
    for name, res in runs.items():
        assert res.exit_code == 0, (name, res.output)
    maps = {}
    for name, out in (("default", "d"), ("2", "r2"), ("auto", "ra")):
        maps[name] = {m: np.asarray(nib.load(str(p)).dataobj) for m in ("total", "epistemic")
                      for p in (tmp_path / out).glob(f"*{m}*.nii.gz")}
        assert maps[name]
        report = json.loads(next((tmp_path / out).glob("*.json")).read_text()) if name != "default" else None
        if report is not None:
            text = json.dumps(report)
            assert ("given" in text) if name == "2" else ("auto (measured: " in text), text[:400]
    for name in ("2", "auto"):
        for m, a in maps["default"].items():
            assert np.abs(maps[name][m].astype(np.float64) - a).max() <= 1e-5, (name, m)
    for bad in ("0", "-3", "two"):
        res = run(f"bad{bad}", "--rows-per-call", bad)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and "rows-per-call" in lines[0], res.output


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_predictor_switches_a_one_graph_runner_to_its_pair_when_rows_do_not_fit(onnx_file, backend) -> None:
    """Where the plan cannot take a window's S rows in one call, the TUNE++ predictor puts an ONNX runner
    on its trunk / head pair (the trunk then runs once per window, not once per call); the maps equal
    the one graph's; where they fit, the runner stays one graph."""
    if backend == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed: pip install 'tunepp-deploy[openvino]'")
    from tunepp_deploy.infer.runners import open_runner
    from tunepp_deploy.predictors.settings import RunSettings
    from tunepp_deploy.predictors.tunepp import TuneppPredictor

    vol = torch.rand(1, 40, 36, 30, generator=torch.Generator().manual_seed(2))
    settings = RunSettings(samples=6, seed=1, overlap=0.5, max_batch=2, memory_gb=4.0, blend="auto", noise_draws=2,
                           rows_per_call=2)
    with open_runner(onnx_file, backend=backend, device="cpu", threads=1) as one:
        assert not one.splits
        ref_pred = TuneppPredictor(one, settings.with_(rows_per_call=None))
        assert not one.splits and ref_pred.trunk_pair.startswith("one graph")
        ref = mc_predict(vol, one, ref_pred.masks, ref_pred.mc).maps.stacked()
        pred = TuneppPredictor(one, settings)
        assert one.splits and pred.trunk_pair.startswith("trunk/head pair (2 of 6"), pred.trunk_pair
        out = pred.predict(vol[0].numpy())
        assert out.info["trunk_pair"] == pred.trunk_pair
        got = mc_predict(vol, one, pred.masks, pred.mc).maps.stacked()
    assert float((got - ref).abs().max()) <= 1e-5


def test_call_sizes_are_timed_under_the_engines_allocator(meta: ModelMeta, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--rows-per-call auto` measures before the engine's first call: it must set the engine's allocator
    first, or large calls page-fault in the measurement and not in the run (measured: torch 25-row
    phantom calls 1.22 s per window in the bench, 0.44 s in the engine)."""
    import tunepp_deploy.bench.head_calls as hc

    seen: list[str] = []
    monkeypatch.setattr(hc, "tune_malloc", lambda: seen.append("tuned") or "tuned")
    runner = SplitFake(meta, torch.device("cpu"))
    times = hc.time_head_calls(runner, samples=4, sizes=(1, 4), repeats=1)
    assert seen == ["tuned"] and set(times) == {1, 4}
    assert runner.head_rows.count(4) == 2 and runner.trunk_windows  # warm-up + one timed run of the 4-row plan
