"""Dropout-site study: its statistics against SciPy's t-interval, the one-line error for an unknown
site, and a tiny end-to-end run (1 seed x 2 variants) that resumes without redoing any work."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from tunepp_deploy.experiments.dropout_sites_summary import aggregate

REPO = Path(__file__).resolve().parents[2]


def _interval(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x)
    lo, hi = stats.t.interval(0.95, a.size - 1, loc=a.mean(), scale=stats.sem(a))
    return float(a.mean()), float((hi - lo) / 2)


def test_summary_intervals_and_paired_differences_are_scipys() -> None:
    ref = {0: {"speedup": 1.2, "mc_dice": 0.70}, 1: {"speedup": 1.3, "mc_dice": 0.74}, 2: {"speedup": 1.25,
                                                                                           "mc_dice": 0.69}}
    alt = {0: {"speedup": 1.5, "mc_dice": 0.68}, 1: {"speedup": 1.45, "mc_dice": 0.75}, 2: {"speedup": 1.6,
                                                                                           "mc_dice": 0.64}}
    t = aggregate({"dec1+dec0": ref, "dec0": alt}, "dec1+dec0")
    for v, rows in (("dec1+dec0", ref), ("dec0", alt)):
        for k in ("speedup", "mc_dice"):
            m, h = _interval([rows[s][k] for s in range(3)])
            assert math.isclose(t[v][k]["mean"], m) and math.isclose(t[v][k]["ci95"], h, rel_tol=1e-10)
            assert t[v][k]["n"] == 3
    for k in ("speedup", "mc_dice"):
        m, h = _interval([alt[s][k] - ref[s][k] for s in range(3)])
        d = t["dec0"]["paired_vs_ref"][k]
        assert math.isclose(d["mean"], m, abs_tol=1e-12) and math.isclose(d["ci95"], h, rel_tol=1e-10)
    assert "paired_vs_ref" not in t["dec1+dec0"]


def test_unknown_site_is_one_line_error(tmp_path: Path) -> None:
    from tunepp_deploy.cli.app import app

    res = CliRunner().invoke(app, ["experiment", "dropout-sites", "--out", str(tmp_path / "s"), "--config",
                                   str(REPO / "configs" / "phantom.yaml"), "--sites", "dec1+dec0,dec9"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "dec9" in lines[0] and "head" in lines[0], res.output
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_tiny_study_runs_and_resumes_without_retraining(tmp_path: Path) -> None:
    import torch

    from tunepp_deploy.experiments.dropout_sites import SitesSettings, run_dir, run_dropout_sites

    env_before = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    threads_before = torch.get_num_threads()
    s = SitesSettings(config=REPO / "configs" / "phantom.yaml", seeds=1, variants=("dec1+dec0", "head"), base_epochs=1,
                      finetune_epochs=1, iters_per_epoch=1, train_cases=3, test_cases=1, samples=2, jobs=1,
                      phantom_shape=(48, 48, 32))
    root = tmp_path / "sites"
    body = run_dropout_sites(root, s)
    assert not body["errors"], body["errors"]
    assert {v: os.environ.get(v) for v in env_before} == env_before  # the pool's thread settings restored
    assert torch.get_num_threads() == threads_before
    for v in s.variants:
        run = body["runs"][v]["0"]
        assert run["speedup"] > 0 and math.isfinite(run["engine_s"]) and math.isfinite(run["naive_s"])
        assert run["max_abs_diff_maps"] < 1e-4  # engine and naive loop compute the same MC maps
        assert 0.0 <= run["mc_dice"] <= 1.0 and 0.0 <= run["det_dice"] <= 1.0
        timing = json.loads((run_dir(root, 0, v) / "timing.json").read_text())
        assert timing["threads"] == 1 and timing["samples"] == 2
        assert 0.0 < timing["trunk_flop_share"] < 1.0
    # the trunk before "head" is nearly the whole network: its reuse bound exceeds [dec1, dec0]'s
    assert body["runs"]["head"]["0"]["reuse_bound"] > body["runs"]["dec1+dec0"]["0"]["reuse_bound"]
    md = (root / "dropout_sites.md").read_text()
    assert "[dec1, dec0]" in md and "[head]" in md and "Paired differences" in md
    stamps = {p: p.stat().st_mtime_ns for v in s.variants for p in run_dir(root, 0, v).glob("*.*") if p.is_file()}
    assert any(p.name == "best.pt" for p in stamps) and any(p.name == "cases.json" for p in stamps)
    again = run_dropout_sites(root, s)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained, re-predicted or re-timed
    assert again["runs"] == json.loads(json.dumps(body["runs"]))
    from tunepp_deploy.errors import TuneppError

    with pytest.raises(TuneppError, match="other settings"):
        run_dropout_sites(root, SitesSettings(**{**s.__dict__, "samples": 3}))
