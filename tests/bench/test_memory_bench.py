"""``tunepp bench memory`` at CI size: two child runs, the files, and the exactness of the comparison.

The figures themselves are a benchmark (bench/README.md); this proves the plumbing on a 48^3 scan and
a two-level network: each run is its own process with its own peak RSS, the streamed run really
streams (a budget where ``plan_chunk`` gives fewer than S samples, the trunk cached across chunks),
the per-sample run holds all S in one chunk with the same call plan, and both give the same maps.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from tunepp_deploy.bench.memory import MemorySettings, build_model, memory_model, run_memory_bench
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config import load_config
from tunepp_deploy.config.load import config_to_dict
from tunepp_deploy.infer.mc import plan_calls, window_output_bytes
from tunepp_deploy.infer.sampling import plan_chunk

REPO = Path(__file__).resolve().parents[2]
VOLUME = (48, 48, 48)  # 8 windows of 32^3
SAMPLES = 24  # the engine's fixed terms (64 MiB stats slabs) need many samples before a chunk is < S


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(REPO / "configs" / "phantom.yaml", {
        "model.widths": [8, 16], "model.depths": [1, 1], "model.decoder_depths": [1],
        "model.dropout.sites": ["dec0"], "data.crop_size": [32, 32, 32],
    })
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def _streaming_budget(s: MemorySettings) -> float:
    """A budget at which the engine streams: fewer than S samples per chunk fit (it then caches the trunk)."""
    _, cfg, meta = build_model(s)
    plan = plan_calls(meta, s.samples, cfg.infer.max_batch, 1.0, s.max_rows)
    call = plan.windows_per_call * plan.samples_per_call * plan.row_bytes
    per_sample = window_output_bytes(meta, plan.windows_per_call)
    fixed = memory_model(VOLUME, meta.window, meta.num_classes, 0, call)["total_gb"]
    one = memory_model(VOLUME, meta.window, meta.num_classes, 1, 0, per_sample_bytes=per_sample)
    gb = (fixed + one["chunk_gb"] + one["chunk_window_outputs_gb"]) / 0.75 * 1.01
    assert 2 <= plan_chunk(VOLUME, meta.window, meta.num_classes, s.samples, gb, call, per_sample) < s.samples
    return gb


@pytest.fixture(scope="module")
def result(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("mem")
    s = MemorySettings(out=out, tag="ci", config=tiny_config, volume=VOLUME, samples=SAMPLES, max_rows=1,
                       widths=(8, 16), threads=1, timeout_s=600, maps_dir=out / "maps")
    s = replace(s, memory_gb=_streaming_budget(s))
    return run_memory_bench(s, log=lambda _m: None)


@pytest.fixture(scope="module")
def settings(result: dict) -> MemorySettings:
    st = result["settings"]
    return MemorySettings(out=Path(st["out"]), tag="ci", config=Path(st["config"]), volume=VOLUME, samples=SAMPLES,
                          max_rows=1, widths=(8, 16), threads=1, memory_gb=st["memory_gb"],
                          maps_dir=Path(st["maps_dir"]))


def test_files_written(result: dict) -> None:
    out = Path(result["settings"]["out"])
    body = json.loads((out / "memory_ci.json").read_text())
    assert body["runs"].keys() == {"streamed", "per_sample"}
    md = (out / "memory_ci.md").read_text()
    assert "| streamed |" in md and "| per_sample |" in md and "Max |diff|" in md
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_streamed_streams_and_per_sample_holds_all(result: dict) -> None:
    a, b = result["runs"]["streamed"], result["runs"]["per_sample"]
    assert "error" not in a and "error" not in b, (a.get("error"), b.get("error"))
    assert a["sample_chunk"] < SAMPLES and a["sample_chunks"] == math.ceil(SAMPLES / a["sample_chunk"])
    assert a["trunk"] == "cached" and a["trunk_cache_bytes"] > 0
    assert b["sample_chunk"] == SAMPLES and b["sample_chunks"] == 1 and b["trunk"] == "once"
    assert result["settings"]["same_call_plan"] and a["samples_per_call"] == b["samples_per_call"] == 1
    for run in (a, b):
        assert run["peak_rss_mb"] >= run["mc_peak_rss_mb"] >= run["rss_before_mc_mb"] > 0
        assert run["engine_model"]["total_gb"] <= run["memory_gb"] + 1e-9
        assert run["windows"] == 8 and run["model_grid"] == list(VOLUME)
    assert result["peak_rss_ratio"] == b["peak_rss_mb"] / a["peak_rss_mb"]


def test_both_are_the_exact_blend(result: dict) -> None:
    d = result["maps_max_abs_diff"]
    assert set(d) >= {"mean_probs", "epistemic", "aleatoric", "total", "predictive_entropy", "mutual_information"}
    assert d["max"] < 1e-5


def test_cli_refuses_unknown_runs(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["bench", "memory", "--runs", "both", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--runs" in res.output


def test_reuse_takes_the_per_sample_run_from_an_earlier_maps_dir(settings: MemorySettings, tmp_path: Path) -> None:
    s = replace(settings, out=tmp_path, tag="again", runs=("streamed",), maps_dir=tmp_path / "maps",
                reuse=settings.maps_dir)
    r = run_memory_bench(s, log=lambda _m: None)
    assert r["runs"]["per_sample"]["reused_from"] == str(settings.maps_dir)
    assert "error" not in r["runs"]["streamed"] and r["maps_max_abs_diff"]["max"] < 1e-5
    assert "reused from" in (tmp_path / "memory_again.md").read_text()


def test_a_stopped_run_keeps_its_polled_peak(settings: MemorySettings, tmp_path: Path) -> None:
    r = run_memory_bench(replace(settings, out=tmp_path, tag="stop", runs=("streamed",), maps_dir=None,
                                 timeout_s=1.0), log=lambda _m: None)
    a = r["runs"]["streamed"]
    assert a["error"].startswith("stopped after 1") and a["polled_peak_rss_mb"] > 0
    assert r["runs"]["per_sample"]["error"] == "not run (--runs)" and r["maps_max_abs_diff"] is None
    assert "polled, stopped" in (tmp_path / "memory_stop.md").read_text()
