"""Fidelity experiment v2: its statistics and metrics against independent references (SciPy's
t-interval, scikit-learn's ROC AUC, hand-built cases), the failure rule, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from tunepp_deploy.experiments.fidelity_metrics import FailureRule, det_case_metrics, mc_case_metrics
from tunepp_deploy.experiments.fidelity_summary import ci95, run_summary
from tunepp_deploy.metrics.taus import near_foreground

REPO = Path(__file__).resolve().parents[2]
#: A two-level phantom network for the end-to-end run (config overrides, as tests/bench/test_bench_truth.py).
TINY_NET = {"model.widths": [8, 16], "model.depths": [1, 1], "model.decoder_depths": [1],
            "model.dropout.sites": ["dec0"], "data.crop_size": [32, 32, 32]}


def test_ci95_is_scipys_t_interval() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 9):
        x = rng.normal(size=n)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        m, h, k = ci95([*x, float("nan"), None])  # non-finite entries are left out
        assert k == n and math.isclose(m, x.mean()) and math.isclose(h, (hi - lo) / 2, rel_tol=1e-10)
    assert ci95([1.0])[2] == 1 and math.isnan(ci95([1.0])[1])


def test_failure_rule_is_dice_or_betti_beyond_tolerance() -> None:
    rule = FailureRule(dice=0.8, betti_tolerance=1, min_voxels=10)
    assert not rule.failed(0.9, 0) and not rule.failed(0.9, 1)
    assert rule.failed(0.79, 0) and rule.failed(0.95, 2)
    assert "0.8" in rule.describe() and "10 voxels" in rule.describe()


def _volume() -> np.ndarray:
    t = np.zeros((24, 24, 16), np.uint8)
    t[3:11, 3:11, 3:11] = 1
    t[14:21, 14:21, 4:12] = 2
    return t


def _probs(seg: np.ndarray, k: int = 3, conf: float = 0.9) -> np.ndarray:
    p = np.full((k, *seg.shape), (1 - conf) / (k - 1), np.float32)
    for c in range(k):
        p[c][seg == c] = conf
    return p


def test_segmentation_metrics_on_hand_made_cases() -> None:
    t = _volume()
    rule = FailureRule()
    perfect = det_case_metrics(t, (1.0, 1.0, 1.0), 3, t, _probs(t), rule)
    assert perfect["dice"] == 1.0 and perfect["betti_error"] == 0 and perfect["betti_matching_error"] == 0
    assert not perfect["failed"] and math.isnan(perfect["auroc_msp"])  # no errors to rank
    seg = t.copy()
    seg[20:22, 2:4, 13] = 1  # a 4-voxel spurious fragment of class 1
    seg[14:21, 14:21, 4:12] = 0  # class 2 missed entirely ...
    seg[2:6, 14:18, 4:8] = 2  # ... and predicted elsewhere: Betti error 0, Betti matching 2 for class 2
    r = det_case_metrics(t, (1.0, 1.0, 1.0), 3, seg, _probs(seg), rule)
    assert r["betti_error"] == 1  # only the fragment
    assert r["betti_error_small_removed"] == 0  # the fragment is under 10 voxels
    assert r["betti_matching_error"] == 1 + 2
    assert r["failed"]  # class 2's Dice is 0


def test_ranking_is_sklearns_auroc_near_the_foreground() -> None:
    rng = np.random.default_rng(1)
    t = _volume()
    seg = t.copy()
    flip = rng.random(t.shape) < 0.05
    seg[flip] = rng.integers(0, 3, flip.sum())
    total = rng.random(t.shape).astype(np.float32) + 0.5 * (seg != t)
    p = _probs(seg)
    r = mc_case_metrics(t, (1.0, 1.0, 1.0), 3, seg, p, total, FailureRule())
    region = near_foreground(seg, t)
    assert math.isclose(r["auroc_total"], roc_auc_score((seg != t)[region], total[region]), rel_tol=1e-9)
    assert region.sum() < t.size  # the far background is left out


def _case(score: float, failed: bool) -> dict:
    return {"case_score": score, "failed": failed, "dice": 0.9}


def test_run_summary_triage_and_ood_from_the_case_scores() -> None:
    rng = np.random.default_rng(2)
    test = {f"t{i}": _case(float(rng.random()), bool(i % 4 == 0)) for i in range(20)}
    shift = {f"s{i}": _case(float(rng.random() + 0.3), bool(i % 2 == 0)) for i in range(20)}
    det = {k: {"dice": 0.9, "failed": False} for k in test}
    out = run_summary({"det": {"test": det}, "mc": {"test": test, "shift_noise": shift}}, budget=0.25)
    ids = [c["case_score"] for c in test.values()]
    sh = [c["case_score"] for c in shift.values()]
    assert math.isclose(out["ood_auroc"], roc_auc_score([0] * 20 + [1] * 20, ids + sh))
    assert math.isclose(out["ood_auroc_noise"], out["ood_auroc"])
    pool = list(test.values()) + list(shift.values())
    order = sorted(pool, key=lambda c: -c["case_score"])
    assert out["triage_failures"] == sum(c["failed"] for c in pool)
    found = sum(c["failed"] for c in order[:10]) / out["triage_failures"]  # 25% of 40 cases, no ties
    assert math.isclose(out["triage"], found)


def test_tiny_end_to_end_run(tmp_path: Path) -> None:
    """Every stage on a toy schedule (1 iteration per run): files, resume, and the tables' structure."""
    import yaml

    from tunepp_deploy.config.load import config_to_dict, load_config
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.experiments.fidelity import FidelitySettings, run_fidelity

    # the phantom config with a two-level network: the stages and files are what is tested, not the model
    # (the full network made this the suite's second-slowest test, 194 s on a 2-core AVX2 box)
    cfg = tmp_path / "phantom_tiny.yaml"
    cfg.write_text(yaml.safe_dump(config_to_dict(load_config(REPO / "configs" / "phantom.yaml", TINY_NET))))
    s = FidelitySettings(config=cfg, seeds=2, variants=("none", "component"),
                         base_epochs=1, finetune_epochs=1, iters_per_epoch=1, train_cases=3, test_cases=2,
                         shift_cases=1, samples=2, mc_seeds=1, jobs=1)
    body = run_fidelity(tmp_path / "fid", s)
    assert not body["errors"]
    md = (tmp_path / "fid" / "fidelity.md").read_text()
    for text in ("none (deterministic)", "component + post-processing", "Betti-matching error", "triage@25%",
                 "OOD AUROC all shifts", "Failure rule"):
        assert text in md
    cases = json.loads((tmp_path / "fid" / "runs" / "seed0" / "component" / "cases.json").read_text())
    assert set(cases["mc"]) == {"test", "shift_noise", "shift_intensity", "shift_shape"}
    assert "mc" not in json.loads((tmp_path / "fid" / "runs" / "seed1" / "none" / "cases.json").read_text()) or \
        not json.loads((tmp_path / "fid" / "runs" / "seed1" / "none" / "cases.json").read_text())["mc"]
    assert body["aggregate"]["component"]["det_dice"][2] == 2  # two seeds
    again = run_fidelity(tmp_path / "fid", s)  # everything exists: resumes without redoing work
    assert again["aggregate"]["none"]["det_dice"] == body["aggregate"]["none"]["det_dice"]
    stamp = (tmp_path / "fid" / "runs" / "seed0" / "none" / "cases.json").stat().st_mtime_ns
    more = run_fidelity(tmp_path / "fid", FidelitySettings(**{**s.__dict__, "variants": ("dt",)}))
    assert set(more["aggregate"]) == {"none", "component", "dt"}  # a variant added, the others kept
    assert (tmp_path / "fid" / "runs" / "seed0" / "none" / "cases.json").stat().st_mtime_ns == stamp
    with pytest.raises(TuneppError, match="other settings"):
        run_fidelity(tmp_path / "fid", FidelitySettings(**{**s.__dict__, "samples": 3}))
