"""The before/after Grad-CAM study: the 3D runner (tiny sizes), its summaries against scipy's
t-interval, the shared-training invariant (same masks -> same predictive-variance scores in both
set-ups), and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from tunepp_deploy.errors import ConfigError
from tunepp_deploy.methods.saliency.experiment import SaliencySettings
from tunepp_deploy.methods.saliency.target_study import main, render, run_2d, verdict_lines
from tunepp_deploy.methods.saliency.volume3d import VARIANTS, Volume3dSettings, run_volume3d, split

TINY3D = Volume3dSettings(cases=3, test_cases=1, shape=(16, 16, 16), window=(16, 16, 8), widths=(8, 16, 32),
                          iters=2, samples=2, seeds=(0, 1))


def _ci(v: list[float]) -> float:
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    return (hi - lo) / 2


@pytest.fixture(scope="module")
def study3d() -> dict:
    return run_volume3d(TINY3D)


def test_volume3d_rows_summary_and_shared_masks(study3d: dict) -> None:
    rows = study3d["per_seed"]
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        before, after = r["variants"]["before"], r["variants"]["after"]
        assert (before["target"], before["per_class"]) == VARIANTS["before"]
        # same network and masks in both set-ups: the predictive-variance map (so its scores) is identical
        assert before["maps"]["predictive_variance"] == after["maps"]["predictive_variance"]
        assert before["maps"]["noise_control"] == after["maps"]["noise_control"]
        assert before["maps"]["saliency_variance"] != after["maps"]["saliency_variance"]
    summ = study3d["summary"]["after"]
    v = [r["variants"]["after"]["maps"]["fused"]["auroc"] for r in rows]
    assert summ["maps"]["fused"]["auroc"]["mean"] == pytest.approx(np.mean(v))
    assert summ["maps"]["fused"]["auroc"]["ci95"] == pytest.approx(_ci(v), rel=1e-9)
    after = [r["variants"]["after"]["maps"] for r in rows]
    d = [m["fused"]["u_ece_fg"] - m["noise_control"]["u_ece_fg"] for m in after]
    assert summ["fused_minus_noise"]["u_ece_fg"]["mean"] == pytest.approx(np.mean(d))


def test_split_is_seeded_and_sized() -> None:
    assert np.array_equal(split(8, 2, 3), split(8, 2, 3)) and split(8, 2, 3).sum() == 2
    assert any(not np.array_equal(split(8, 2, 0), split(8, 2, s)) for s in (1, 2, 3))


def test_volume3d_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="test_cases"):
        run_volume3d(Volume3dSettings(cases=2, test_cases=2))
    with pytest.raises(ConfigError, match="seeds"):
        run_volume3d(Volume3dSettings(seeds=(1, 1)))
    with pytest.raises(ConfigError, match="window"):
        run_volume3d(Volume3dSettings(shape=(16, 16, 8), window=(16, 16, 16)))


def test_2d_both_setups_share_training_and_report(study3d: dict, tmp_path) -> None:
    s = SaliencySettings(iters=2, samples=2, seeds=(0, 1), weights=(0.0, 0.5, 1.0))
    d2 = run_2d(s, cases=3)
    b, a = d2["bodies"]["before"], d2["bodies"]["after"]
    assert (b["target"], b["per_class"], a["target"], a["per_class"]) == ("bottleneck", False, "last_conv", True)
    for rb, ra in zip(b["per_seed"], a["per_seed"], strict=True):
        assert rb["weights"]["1"] == ra["weights"]["1"] and rb["dice"] == ra["dice"]  # same net, same masks
    v = [r["weights"]["0.5"]["fg_ece"] - r["weights"]["1"]["fg_ece"] for r in a["per_seed"]]
    got = d2["summary"]["after"]["diffs"]["fg_ece"]["fused_minus_predictive"]
    assert got["mean"] == pytest.approx(np.mean(v)) and got["ci95"] == pytest.approx(_ci(v), rel=1e-9)
    study = {"threads": 1, "2d": d2, "3d": study3d}
    md = render(json.loads(json.dumps(study, default=float)))
    assert "## 2D" in md and "## 3D" in md and "### before" in md and "| fused - noise control |" in md
    assert len(verdict_lines(study)) == 4


def test_main_writes_json_and_markdown(tmp_path) -> None:
    md = tmp_path / "r.md"
    main(["--out", str(tmp_path), "--md", str(md), "--seeds", "0,1", "--iters-2d", "1", "--cases-2d", "3",
          "--skip-3d"])
    body = json.loads((tmp_path / "saliency_target_study.json").read_text())
    assert set(body["2d"]["bodies"]) == {"before", "after"} and "3d" not in body
    assert md.read_text().startswith("# Saliency-variance fusion")
