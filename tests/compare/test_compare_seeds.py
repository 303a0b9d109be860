"""``tunepp compare --seeds``: the summary's intervals against scipy, one-line errors for missing or
mismatched seed files, and a tiny end-to-end run that resumes (skips finished seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.compare.seeds import load_seed_results, mean_ci, parse_seeds, summarise_seeds
from tunepp_deploy.config.load import load_config
from tunepp_deploy.errors import DataError, TuneppError

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "data.crop_size": [24, 24, 16],  # = the phantom grid: one window per volume
    "model.widths": [8, 16], "model.depths": [1, 1], "model.decoder_depths": [1],
    "model.proj_tokens": 8, "model.dropout.sites": ["dec0", "head"], "train.iters_per_epoch": 2,
    "train.batch_size": 1, "data.val_fraction": 0.34,
}


def _scipy_half(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    lo, hi = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return (hi - lo) / 2


def _row(**kw: float | None) -> dict[str, float | None]:
    base: dict[str, float | None] = {"dice": 0.9, "auroc": 0.95, "u_ece_fg": 0.08, "latency_ort_s": 1.0}
    return {**base, **kw}


def _result(samples: int, rows: dict[str, dict]) -> dict:
    return {"config": "phantom", "samples": samples, "train_cases": 4, "test_cases": ["a", "b"],
            "window": [16, 16, 8], "overlap": 0.5, "threads": 1, "methods": rows, "training": {}}


def test_mean_ci_is_the_scipy_t_interval() -> None:
    vals = [0.912, 0.934, 0.951, 0.903, 0.927]
    m = mean_ci(vals)
    assert m["mean"] == pytest.approx(float(np.mean(vals)))
    assert m["ci"] == pytest.approx(_scipy_half(vals), rel=1e-12)
    assert m["n"] == 5
    # missing / non-finite values are left out, one value has no interval, none has no mean
    assert mean_ci([0.5, None, float("nan"), 0.7])["ci"] == pytest.approx(_scipy_half([0.5, 0.7]))
    assert mean_ci([0.5])["ci"] is None and mean_ci([None, None])["mean"] is None


def test_paired_differences_per_seed() -> None:
    base = [0.95, 0.97, 0.93]
    other = [0.96, 0.94, 0.95]
    results = {s: _result(8, {"tunepp_mc": _row(auroc=b), "segwithu": _row(auroc=o, latency_ort_s=None)})
               for s, (b, o) in enumerate(zip(base, other, strict=True))}
    summ = summarise_seeds(results)
    d = [o - b for o, b in zip(other, base, strict=True)]
    got = summ["paired"]["segwithu"]["auroc"]
    assert got["values"] == pytest.approx(d)
    assert got["mean"] == pytest.approx(np.mean(d)) and got["ci"] == pytest.approx(_scipy_half(d))
    assert summ["paired"]["segwithu"]["u_ece_fg"]["values"] == pytest.approx([0.0, 0.0, 0.0])
    assert summ["methods"]["tunepp_mc"]["auroc"]["ci"] == pytest.approx(_scipy_half(base))
    assert summ["methods"]["segwithu"]["latency_ort_s"]["mean"] is None
    assert "tunepp_mc" not in summ["paired"]


def _write(out: Path, seed: int, res: dict) -> None:
    (out / f"seed_{seed}").mkdir(parents=True, exist_ok=True)
    (out / f"seed_{seed}" / "compare.json").write_text(json.dumps(res))


def test_missing_or_mismatched_seed_files_are_one_line(tmp_path: Path) -> None:
    rows = {"tunepp_mc": _row()}
    _write(tmp_path, 0, _result(8, rows))
    _write(tmp_path, 1, _result(4, rows))
    with pytest.raises(DataError, match=r"seed_1/compare\.json: samples = 4, seed 0 has 8") as e:
        load_seed_results(tmp_path, [0, 1])
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"seed_2/compare\.json: no compare\.json for seed 2"):
        load_seed_results(tmp_path, [0, 2])
    (tmp_path / "seed_1" / "compare.json").write_text("{not json")
    with pytest.raises(DataError, match=r"not a readable compare\.json"):
        load_seed_results(tmp_path, [0, 1])
    _write(tmp_path, 1, _result(8, {"segwithu": _row()}))
    with pytest.raises(DataError, match="no 'tunepp_mc' row"):
        load_seed_results(tmp_path, [0, 1])
    for bad in ("", "0,x", "1,1", "-1"):
        with pytest.raises(TuneppError, match="--seeds"):
            parse_seeds(bad)


def _tiny_config(tmp_path: Path) -> Path:
    cfg = load_config(ROOT / "configs" / "phantom.yaml", TINY)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _mtime(p: Path) -> int:
    return p.stat().st_mtime_ns


@pytest.mark.slow  # two tiny comparisons: ONNX exports and three trainings per seed
def test_seeds_cli_end_to_end_and_resume(tmp_path: Path) -> None:
    cfg = _tiny_config(tmp_path)
    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "-c", str(cfg), "--seeds", "0", "--phantoms", "3",
            "--phantom-shape", "24,24,16", "--epochs", "1", "--samples", "2", "--head-iters", "2",
            "--vi-iters", "2", "--repeats", "1", "--val-every", "1", "--patience", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    t0 = _mtime(out / "seed_0" / "compare.json")
    # resume: seed 0 is finished and skipped, only seed 1 runs
    args[6] = "0,1"
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "seed 0:" in r.output and "skipped" in r.output and "seed 1: tunepp compare" in r.output
    assert _mtime(out / "seed_0" / "compare.json") == t0
    summ = json.loads((out / "compare_seeds.json").read_text())
    assert summ["seeds"] == [0, 1]
    per_seed = [json.loads((out / f"seed_{s}" / "compare.json").read_text()) for s in (0, 1)]
    for name in ("tunepp_mc", "saliency_fusion", "segwithu", "vi_unet"):
        dice = [p["methods"][name]["dice"] for p in per_seed]
        assert summ["methods"][name]["dice"]["mean"] == pytest.approx(np.mean(dice)), name
        assert summ["methods"][name]["dice"]["n"] == 2
    auc = [p["methods"]["segwithu"]["auroc"] - p["methods"]["tunepp_mc"]["auroc"] for p in per_seed]
    if all(math.isfinite(a) for a in auc):
        assert summ["paired"]["segwithu"]["auroc"]["values"] == pytest.approx(auc)
    assert all(v is not None and v["median"] > 0 for v in summ["vi_sigma"].values())
    # each seed varies the phantoms and the training / sampling seeds
    c0, c1 = (yaml.safe_load((out / f"seed_{s}" / "config.yaml").read_text()) for s in (0, 1))
    assert (c0["train"]["seed"], c0["infer"]["seed"], c1["train"]["seed"], c1["infer"]["seed"]) == (0, 0, 1, 1)
    img = [np.asarray(nib.load(out / f"seed_{s}" / "data" / "imagesTr" / "phantom_000_0000.nii.gz").dataobj)
           for s in (0, 1)]
    assert not np.array_equal(img[0], img[1])
    md = (out / "compare_seeds.md").read_text()
    assert "| tunepp_mc |" in md and "Paired differences against `tunepp_mc`" in md
    # a plain rerun trains and evaluates nothing
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and r.output.count("skipped") == 2, r.output

    # a seed folder of another config is refused in one line, before anything runs
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "name": "other"}))
    r = CliRunner().invoke(app, [*args[:4], str(other), *args[5:]])
    assert r.exit_code == 2 and "seed 0 was run with another config" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, [*args, "--data", str(tmp_path)])
    assert r.exit_code == 2 and "drop --data" in r.output
