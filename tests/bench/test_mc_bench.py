"""``tunepp bench`` at CI size: every JSON field present, ratios computed from recorded numbers.

One run through the CLI (module fixture): a two-level variant of the phantom network (its ONNX
export takes ~12 s on the 2-core CI box, the four-level phantom's ~30 s), a 32^3 scan, S = 1, 2,
one repeat, torch + ONNX Runtime, one thread (see bench/README.md for why). The timings themselves
are not asserted — the machine is shared — only their structure and the arithmetic built on them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config import load_config
from tunepp_deploy.config.load import config_to_dict

REPO = Path(__file__).resolve().parents[2]
ENTRY_FIELDS = {
    "key", "kind", "backend", "precision", "samples", "runner", "latency_s", "latency_runs_s", "stages_s", "windows",
    "runner_calls", "windows_per_call", "samples_per_call", "blend", "peak_rss_mb", "rss_increase_mb",
    "peak_device_mb", "windows_per_s", "window_samples_per_s", "gflops", "floor_s", "peak_gflops_per_s",
    "measured_over_floor", "network_over_floor", "sample_chunk", "sample_chunks", "trunk", "noise_draws",
    "trunk_windows", "head_rows",
}
SPREAD_FIELDS = {"median", "min", "max", "q1", "q3", "iqr", "n"}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    cfg = load_config(REPO / "configs" / "phantom.yaml", {
        "model.widths": [8, 16], "model.depths": [1, 1], "model.decoder_depths": [1],
        "model.dropout.sites": ["dec0"], "data.crop_size": [32, 32, 32],
    })
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    out = tmp / "out"
    res = CliRunner().invoke(app, [
        "bench", "--config", str(cfg_path), "--volume", "32x32x32", "--samples", "1,2", "--repeats", "1",
        "--warmup", "1", "--warmup-s", "0", "--backends", "torch,ort", "--threads", "1", "--device", "cpu",
        "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def result(bench_dir: Path) -> dict[str, Any]:
    return json.loads((bench_dir / "bench.json").read_text())


def test_outputs_written(bench_dir: Path) -> None:
    for name in ("bench.json", "bench.md", "bench_latency.png", "bench_stages.png"):
        assert (bench_dir / name).stat().st_size > 0, name
    md = (bench_dir / "bench.md").read_text()
    assert "A100, not this machine" in md and "Load average" in md and "| ratio |" in md
    assert "| kind | backend | prec | S | chunk | trunk |" in md


def test_top_level_and_machine(result: dict[str, Any]) -> None:
    assert {"created", "machine", "settings", "flops", "peak_gflops_per_s", "published", "stages", "entries",
            "ratios", "checks", "skipped"} <= set(result)
    m = result["machine"]
    for k in ("platform", "cpu_count", "torch", "onnxruntime", "torch_threads", "device", "loadavg_start",
              "loadavg_end"):
        assert k in m, k
    assert len(m["loadavg_start"]) == 3 and m["torch_threads"] == 1
    st = result["settings"]
    assert st["samples"] == [1, 2] and st["reference_samples"] == 2 and st["windows"] == 1
    assert st["model_grid"] == [32, 32, 32] and st["dropout_sites"] == ["dec0"]
    assert result["published"]["single_s"] == 1.1 and result["published"]["mc25_s"] == 2.8
    assert result["peak_gflops_per_s"]["fp32"]["value"] > 0


def test_every_configuration_measured(result: dict[str, Any]) -> None:
    keys = {e["key"] for e in result["entries"]}
    for b in ("torch", "ort"):
        assert {f"single/{b}/fp32/S1", f"mc/{b}/fp32/S1", f"mc/{b}/fp32/S2", f"reuse_off/{b}/fp32/S2"} <= keys
    assert "naive/torch/fp32/S2" in keys
    skipped = {(s["backend"], s["precision"]) for s in result["skipped"]}
    assert {("torch", "fp16"), ("torch", "int8"), ("ort", "fp16"), ("ort", "int8")} <= skipped
    assert all(s["reason"] for s in result["skipped"])


def test_entry_fields_and_arithmetic(result: dict[str, Any]) -> None:
    fl = result["flops"]
    for e in result["entries"]:
        assert set(e) >= ENTRY_FIELDS, ENTRY_FIELDS - set(e)
        assert set(e["latency_s"]) >= SPREAD_FIELDS
        assert set(e["stages_s"]) == set(result["stages"])
        med = e["latency_s"]["median"]
        assert e["latency_s"]["min"] <= med <= e["latency_s"]["max"]
        # one repeat: the stages partition the measured total
        assert math.isclose(sum(e["stages_s"].values()), med, rel_tol=1e-6, abs_tol=1e-6)
        assert math.isclose(e["windows_per_s"], e["windows"] / med)
        assert e["peak_rss_mb"] > 0 and e["peak_device_mb"] is None
        trunk, head = fl["trunk_gflops_per_window"], fl["head_gflops_per_window"]
        # FLOPs are counted from what ran: the engine runs the trunk once per window (one chunk here), the
        # baselines once per window and sample; the head always once per window and sample
        reuse = e["kind"] in ("mc", "single")
        assert e["trunk_windows"] == e["windows"] * (1 if reuse else e["samples"])
        assert e["head_rows"] == e["windows"] * e["samples"]
        want = e["windows"] * (trunk + e["samples"] * head) if reuse else e["windows"] * e["samples"] * (trunk + head)
        assert math.isclose(e["gflops"], want, rel_tol=1e-9)
        if e["kind"] != "naive":
            assert e["sample_chunk"] == e["samples"] and e["sample_chunks"] == 1 and e["noise_draws"] == 8
        assert e["trunk"] == {"mc": "once", "single": "once", "reuse_off": "once", "naive": "per sample"}[e["kind"]]
        assert math.isclose(e["floor_s"], e["gflops"] / e["peak_gflops_per_s"], rel_tol=1e-9)
        assert math.isclose(e["measured_over_floor"], med / e["floor_s"], rel_tol=1e-9)


def test_ratios_are_recorded_quotients(result: dict[str, Any]) -> None:
    by_key = {e["key"]: e for e in result["entries"]}
    names = {r["name"] for r in result["ratios"]}
    assert {"batched_vs_loop", "ort_vs_torch_single", "trunk_reuse_torch_fp32", "trunk_reuse_ort_fp32"} <= names
    assert {"ort_vs_torch_single_network", "batched_vs_loop_network"} <= names
    for r in result["ratios"]:
        num, den = by_key[r["numerator"]], by_key[r["denominator"]]
        if r["of"] == "latency":
            a, b = num["latency_s"]["median"], den["latency_s"]["median"]
        else:
            a, b = num["stages_s"][r["of"]], den["stages_s"][r["of"]]
        assert r["numerator_s"] == a and r["denominator_s"] == b
        assert r["value"] == a / b
        if "target" in r:
            assert r["met"] == (r["value"] >= r["target"])


def test_baselines_compute_the_same_samples(result: dict[str, Any]) -> None:
    """The seed's loop (S full passes, the same logit noise, reference maps_from_samples) and trunk reuse off
    give the streamed engine's probabilities *and* maps: like is compared with like."""
    checks = result["checks"]
    for name in ("naive_vs_engine", "reuse_off_vs_on"):
        for what in ("mean_probs", "maps"):
            keys = [k for k in checks if k.startswith(f"{name}_max_abs_diff_{what}")]
            assert keys, (name, what)
            assert all(checks[k] < 1e-5 for k in keys), {k: checks[k] for k in keys}
    assert {"reuse_off_vs_on_max_abs_diff_maps_torch_fp32", "reuse_off_vs_on_max_abs_diff_maps_ort_fp32"} <= set(checks)


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["bench", "--volume", "32x32", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--volume" in res.output
    res = CliRunner().invoke(app, ["bench", "--backends", "tpu", "--volume", "32x32x32", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown backend" in res.output


def test_kernels_subcommand(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["bench", "kernels", "--sizes", "12x12x12", "--repeats", "1", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 0, res.output
    for name in ("kernels.json", "kernels.md", "kernels.png"):
        assert (tmp_path / name).is_file()
    assert "tunepp numba" in res.output
