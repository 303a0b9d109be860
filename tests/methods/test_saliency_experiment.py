"""``tunepp experiment saliency``: files, the w=1 oracle, the ISIC path, the verdict, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, one_line_error
from PIL import Image

from tunepp_deploy.methods.saliency.data2d import phantom_data, split_groups
from tunepp_deploy.methods.saliency.experiment import SaliencySettings, check_settings, seed_maps, verdict
from tunepp_deploy.methods.saliency.fusion import minmax, uncertainty_calibration

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def test_phantom_cli_writes_every_seed_and_weight_and_w1_matches_oracle(tmp_path: Path) -> None:
    out = tmp_path / "sal"
    res = cli("experiment", "saliency", "--out", out, "--cases", 3, "--iters", 2, "--samples", 2, "--seeds", "0,1",
              "--weights", ",".join(map(str, WEIGHTS)))
    assert res.exit_code == 0, res.output
    body = json.loads((out / "saliency.json").read_text())
    md = (out / "saliency.md").read_text()
    assert [r["seed"] for r in body["per_seed"]] == [0, 1]
    assert body["ece_pixels"].startswith("union of predicted and true foreground")
    for r in body["per_seed"]:
        assert set(r["weights"]) == {f"{w:g}" for w in WEIGHTS}
        assert 0.0 <= r["pixel_accuracy"] <= 1.0 and r["test_groups"] == 1
        assert f"| {r['seed']} | fused | 0.25 |" in md and f"| {r['seed']} | saliency variance alone | 0 |" in md
    assert set(body["summary"]["weights"]) == {f"{w:g}" for w in WEIGHTS}

    # oracle: redo seed 1's (deterministic) MC run and score V_pred alone directly
    s = check_settings(SaliencySettings(iters=2, samples=2, seeds=(0, 1), weights=WEIGHTS))
    maps = seed_maps(phantom_data(3), 1, s)
    pv, sv = maps.predictive_variance, maps.saliency_variance
    row = body["per_seed"][1]
    assert row["weights"]["1"] == pytest.approx(uncertainty_calibration(minmax(pv).numpy(), maps.probs, maps.labels),
                                                rel=1e-12, abs=1e-15)
    assert row["weights"]["0"] == pytest.approx(uncertainty_calibration(minmax(sv).numpy(), maps.probs, maps.labels),
                                                rel=1e-12, abs=1e-15)
    assert row["predictive_variance_raw"] == pytest.approx(
        uncertainty_calibration(pv.numpy(), maps.probs, maps.labels), rel=1e-12, abs=1e-15)
    # the verdict's counts are the per-seed numbers'
    lower = sum(r["weights"]["0.5"]["fg_ece"] < r["weights"]["1"]["fg_ece"] for r in body["per_seed"])
    assert f"fused (w=0.5) vs predictive variance alone (w=1): fg-ECE lower in {lower}/2 seeds" in md


def _lesion_folder(root: Path, n: int) -> tuple[Path, Path]:
    imgs, masks = root / "img", root / "gt"
    imgs.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        m = np.zeros((20, 30), np.uint8)
        r, c = rng.integers(2, 10), rng.integers(2, 18)
        m[r:r + 8, c:c + 10] = 255
        rgb = (rng.integers(150, 200, (20, 30, 3)) - (m[..., None] > 0) * 100).astype(np.uint8)  # dark lesion
        Image.fromarray(rgb).save(imgs / f"ISIC_{i:07d}.jpg", format="JPEG")
        Image.fromarray(m).save(masks / f"ISIC_{i:07d}_segmentation.png")
    return imgs, masks


def test_isic_folder_cli(tmp_path: Path) -> None:
    imgs, masks = _lesion_folder(tmp_path, 6)
    out = tmp_path / "sal"
    res = cli("experiment", "saliency", "--out", out, "--isic-images", imgs, "--isic-masks", masks, "--size", 16,
              "--iters", 2, "--samples", 2, "--seeds", "3", "--weights", "0.5")
    assert res.exit_code == 0, res.output
    body = json.loads((out / "saliency.json").read_text())
    assert body["source"] == "isic" and body["num_classes"] == 2 and body["data"]["images"] == 6
    (row,) = body["per_seed"]
    assert row["test_images"] == 2 and row["train_images"] == 4 and len(row["dice_per_class"]) == 1
    assert set(row["weights"]) == {"0.5", "1"}  # w=1, the reference, is always scored
    assert "| fused | 0.5 |" in (out / "saliency.md").read_text()


def test_isic_bad_folders_are_one_line_errors(tmp_path: Path) -> None:
    imgs, masks = _lesion_folder(tmp_path, 3)
    base = ["experiment", "saliency", "--out", tmp_path / "o", "--size", 16, "--iters", 1, "--samples", 2]
    one_line_error(cli(*base, "--isic-images", tmp_path / "nope", "--isic-masks", masks), "image folder not found")
    one_line_error(cli(*base, "--isic-images", imgs, "--isic-masks", tmp_path / "nope"), "mask folder not found")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(imgs / "ISIC_0000009.jpg", format="JPEG")
    one_line_error(cli(*base, "--isic-images", imgs, "--isic-masks", masks), "1 image(s) without a mask")
    (imgs / "ISIC_0000009.jpg").unlink()
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(masks / "ISIC_0000001_segmentation.png")
    one_line_error(cli(*base, "--isic-images", imgs, "--isic-masks", masks), "ISIC_0000001: image is 30x20")


def test_bad_weights_exit_2_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "o"
    one_line_error(cli("experiment", "saliency", "--out", out, "--weights", "0,1.5"), "outside [0, 1]")
    one_line_error(cli("experiment", "saliency", "--out", out, "--weights", "0,half"), "comma-separated numbers")
    one_line_error(cli("experiment", "saliency", "--out", out, "--seeds", "1,1"), "repeated seed")
    assert not out.exists()  # refused before anything was written


def test_split_is_seeded_and_keeps_cases_whole() -> None:
    groups = np.repeat(np.arange(6), 4)
    a, b = split_groups(groups, 0, 1 / 3), split_groups(groups, 0, 1 / 3)
    assert np.array_equal(a, b) and a.sum() == 8
    assert all(len(set(a[groups == g])) == 1 for g in range(6))
    assert any(not np.array_equal(a, split_groups(groups, s, 1 / 3)) for s in range(1, 5))


def _row(w_ece: dict[str, float]) -> dict:
    return {"weights": {k: {"fg_ece": v, "auroc": 0.8, "fg_auroc": 0.7} for k, v in w_ece.items()},
            "predictive_variance_raw": {"fg_ece": 0.2, "auroc": 0.8, "fg_auroc": 0.7}}


def test_verdict_counts_and_null_result_line() -> None:
    worse = [_row({"0.5": 0.3, "1": 0.2}), _row({"0.5": 0.1, "1": 0.2}), _row({"0.5": 0.25, "1": 0.2})]
    lines = verdict(worse, (0.5, 1.0))
    assert lines[0].startswith("fused (w=0.5) vs predictive variance alone (w=1): fg-ECE lower in 1/3 seeds")
    assert "consistent with the seed's null result" in lines[1]
    better = [_row({"0.5": 0.1, "1": 0.2}), _row({"0.5": 0.1, "1": 0.2}), _row({"0.5": 0.3, "1": 0.2})]
    assert "NOT reproduced" in verdict(better, (0.5, 1.0))[1]
