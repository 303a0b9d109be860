"""``tunepp experiment saliency``: files, the w=1 and noise-control oracles, the ISIC path, the verdict (matched w
and each map's own best w), errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli, one_line_error
from PIL import Image

from tunepp_deploy.methods.saliency.data2d import phantom_data, split_groups
from tunepp_deploy.methods.saliency.experiment import (
    SaliencySettings,
    best_w,
    check_settings,
    noise_map,
    run_saliency_experiment,
    seed_maps,
    verdict,
)
from tunepp_deploy.methods.saliency.fusion import fuse, minmax, uncertainty_calibration

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
    below = {f"{w:g}" for w in WEIGHTS if w < 1}
    for r in body["per_seed"]:
        assert set(r["weights"]) == {f"{w:g}" for w in WEIGHTS}
        assert set(r["noise_control"]) == below  # a noise row for every w < 1 and seed
        assert 0.0 <= r["pixel_accuracy"] <= 1.0 and r["test_groups"] == 1
        assert f"| {r['seed']} | fused | 0.25 |" in md and f"| {r['seed']} | saliency variance alone | 0 |" in md
        assert f"| {r['seed']} | noise control | 0.25 |" in md and f"| {r['seed']} | noise control | 1 |" not in md
        assert f"| {r['seed']} | noise control (noise alone) | 0 |" in md
    assert set(body["summary"]["weights"]) == {f"{w:g}" for w in WEIGHTS}
    assert set(body["summary"]["noise_control"]) == below
    assert "| noise control | 0.5 |" in md and "**noise control**" in md and "fg-ECE" in body["noise_control"]

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
    noise = noise_map(1, sv)
    assert row["noise_control"]["0.5"] == pytest.approx(
        uncertainty_calibration(fuse(pv, noise, 0.5).numpy(), maps.probs, maps.labels), rel=1e-12, abs=1e-15)
    # the verdict's counts are the per-seed numbers'
    rows = body["per_seed"]
    lower = sum(r["weights"]["0.5"]["fg_ece"] < r["weights"]["1"]["fg_ece"] for r in rows)
    vs_noise = sum(r["weights"]["0.5"]["fg_ece"] < r["noise_control"]["0.5"]["fg_ece"] for r in rows)
    assert (f"fused (w=0.5): vs predictive variance alone (w=1): fg-ECE lower in {lower}/2 seeds" in md
            and f"; vs noise control (w=0.5): fg-ECE lower in {vs_noise}/2 seeds" in md)
    # the best-w record: each map's own best w < 1 per seed, recomputed from the rows, and its table in the report
    rec = body["best_w"]["metrics"]["fg_ece"]
    for i, r in enumerate(rows):
        fw = min(below, key=lambda k: (r["weights"][k]["fg_ece"], float(k)))
        nw = min(below, key=lambda k: (r["noise_control"][k]["fg_ece"], float(k)))
        assert rec["fused_w"][i] == float(fw) and rec["noise_w"][i] == float(nw)
        assert rec["noise"][i] == r["noise_control"][nw]["fg_ece"]
    assert "## Each map at its own best w < 1" in md and "oracle w" in md and "**best-w comparison**" in md


def test_noise_map_is_seeded_uniform_and_shaped_like_v_sal() -> None:
    like = np.zeros((3, 8, 8), np.float32)
    t = torch.from_numpy(like)
    a, b = noise_map(2, t), noise_map(2, t)
    assert a.shape == t.shape and a.dtype == t.dtype and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0 and float(a.std()) > 0.1
    assert not torch.equal(a, noise_map(3, t))
    # not the generator the seed's split / batches use (default_rng(seed))
    assert not np.allclose(a.numpy(), np.random.default_rng(2).random(like.shape).astype(np.float32))


def test_noise_control_reproducible_across_runs() -> None:
    data = phantom_data(3)
    s = SaliencySettings(iters=2, samples=2, seeds=(4,), weights=(0.0, 0.5))
    one, two = run_saliency_experiment(data, s), run_saliency_experiment(data, s)
    assert one["per_seed"][0]["noise_control"] == two["per_seed"][0]["noise_control"]
    assert set(one["per_seed"][0]["noise_control"]) == {"0", "0.5"}
    assert one["verdict"] == two["verdict"]


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


def _scores(fg_ece: float, auroc: float, fg_auroc: float) -> dict[str, float]:
    return {"fg_ece": fg_ece, "auroc": auroc, "fg_auroc": fg_auroc}


def _row(fused: tuple[float, float, float], pred: tuple[float, float, float],
         noise: tuple[float, float, float]) -> dict:
    """One seed's row with w = 0.5 (fused), w = 1 (V_pred alone) and the w = 0.5 noise control."""
    return {"weights": {"0.5": _scores(*fused), "1": _scores(*pred)}, "noise_control": {"0.5": _scores(*noise)},
            "predictive_variance_raw": _scores(0.2, 0.8, 0.7)}


PRED = (0.20, 0.90, 0.70)


def test_verdict_fused_beats_both() -> None:
    rows = [_row((0.10, 0.95, 0.75), PRED, (0.15, 0.80, 0.60)),
            _row((0.12, 0.93, 0.72), PRED, (0.14, 0.81, 0.61)),
            _row((0.30, 0.85, 0.65), PRED, (0.25, 0.99, 0.90))]  # one seed the other way
    lines = verdict(rows, (0.5, 1.0))
    assert lines[0] == ("fused (w=0.5): vs predictive variance alone (w=1): fg-ECE lower in 2/3 seeds "
                        "(mean diff -0.0267), AUROC higher in 2/3 seeds (mean diff +0.0100), fg-AUROC higher in "
                        "2/3 seeds (mean diff +0.0067); vs noise control (w=0.5): fg-ECE lower in 2/3 seeds "
                        "(mean diff -0.0067), AUROC higher in 2/3 seeds (mean diff +0.0433), fg-AUROC higher in "
                        "2/3 seeds (mean diff +0.0033)")
    assert lines[1] == ("fg-ECE, matched w: fused beats (majority of 3 seeds and mean) predictive variance alone at "
                        "w = 0.5, its noise control (same w) at w = 0.5, both at w = 0.5")
    assert lines[4].startswith("fg-ECE, each map at its own best w < 1 per seed (w = 0.5; an oracle w")
    assert lines[7].startswith("fusion helps on fg-ECE, AUROC, fg-AUROC — fused at its best w beats both")
    assert lines[7].endswith("NOT reproduced on fg-ECE, AUROC, fg-AUROC") and "is reproduced" not in lines[7]
    # a majority of small wins with a worse mean (the third seed's loss is large) does not count as beating
    rows[2] = _row((0.30, 0.85, 0.65), PRED, (0.10, 0.99, 0.90))
    lines = verdict(rows, (0.5, 1.0))
    assert "fg-ECE lower in 2/3 seeds (mean diff +0.0433)" in lines[0]
    assert lines[1].endswith("its noise control (same w) at w = none, both at w = none")
    assert lines[7] == ("fusion helps on AUROC, fg-AUROC — fused at its best w beats both predictive variance alone "
                        "and the noise control at its best w (majority of 3 seeds and mean): the seed's null result is "
                        "NOT reproduced on AUROC, fg-AUROC; the seed's null result is reproduced on fg-ECE (fused-best "
                        "does not beat the noise control at its best w)")


def test_verdict_fused_beats_predictive_but_not_noise() -> None:
    # the fg-ECE artefact: fused lowers fg-ECE vs V_pred alone, but noise lowers it more; AUROC drops vs V_pred
    rows = [_row((0.10, 0.85, 0.65), PRED, (0.08, 0.80, 0.60)),
            _row((0.12, 0.86, 0.66), PRED, (0.09, 0.81, 0.61)),
            _row((0.11, 0.84, 0.64), PRED, (0.13, 0.82, 0.62))]
    lines = verdict(rows, (0.5, 1.0))
    assert lines[0].startswith("fused (w=0.5): vs predictive variance alone (w=1): fg-ECE lower in 3/3 seeds "
                               "(mean diff -0.0900), AUROC higher in 0/3 seeds")
    assert "; vs noise control (w=0.5): fg-ECE lower in 1/3 seeds (mean diff +0.0100), AUROC higher in 3/3" in lines[0]
    assert lines[1] == ("fg-ECE, matched w: fused beats (majority of 3 seeds and mean) predictive variance alone at "
                        "w = 0.5, its noise control (same w) at w = none, both at w = none")
    assert lines[2] == ("AUROC, matched w: fused beats (majority of 3 seeds and mean) predictive variance alone at "
                        "w = none, its noise control (same w) at w = 0.5, both at w = none")
    assert lines[7] == ("fusion helps on no metric (fused at its best w never beats both predictive variance alone and "
                        "the noise control at its best w in a majority of 3 seeds and on the mean); the seed's null "
                        "result is reproduced on fg-ECE (fused-best does not beat the noise control at its best w), "
                        "AUROC (fused-best does not beat predictive variance alone), fg-AUROC (fused-best does not "
                        "beat predictive variance alone)")
    assert "helps on fg-ECE" not in "\n".join(lines)


def test_verdict_without_fused_weight_says_untested() -> None:
    rows = [{"weights": {"0": _scores(0.1, 0.6, 0.5), "1": _scores(*PRED)},
             "noise_control": {"0": _scores(0.1, 0.5, 0.5)}, "predictive_variance_raw": _scores(*PRED)}]
    lines = verdict(rows, (0.0, 1.0))
    assert lines[0].startswith("saliency variance alone (w=0): vs predictive variance alone (w=1): fg-ECE lower in 1/1")
    assert "; vs noise alone (w=0): fg-ECE lower in 0/1 seeds (mean diff +0.0000), AUROC higher in 1/1" in lines[0]
    assert lines[1] == "no fused weight (0 < w < 1) in the sweep: the seed's claim is not tested"


GRID = (0.25, 0.5, 0.75, 1.0)


def _grid_row(fused: tuple[float, float, float], noise: tuple[float, float, float]) -> dict:
    """One seed over w = 0.25, 0.5, 0.75 with fg-ECE per w given; AUROC / fg-AUROC of every w < 1 below V_pred's."""
    return {"weights": {"0.25": _scores(fused[0], 0.85, 0.65), "0.5": _scores(fused[1], 0.85, 0.65),
                        "0.75": _scores(fused[2], 0.85, 0.65), "1": _scores(*PRED)},
            "noise_control": {"0.25": _scores(noise[0], 0.80, 0.60), "0.5": _scores(noise[1], 0.80, 0.60),
                              "0.75": _scores(noise[2], 0.80, 0.60)},
            "predictive_variance_raw": _scores(*PRED)}


def test_verdict_matched_w_win_that_noise_at_its_best_w_erases_is_the_null_result() -> None:
    # fused beats noise and V_pred at matched w = 0.25 and 0.5, but noise at w = 0.75 is as good as or better than
    # fused at its best w (0.5) in every seed (seed 1 ties: a tie is not a win)
    rows = [_grid_row((0.18, 0.12, 0.15), (0.30, 0.16, 0.10)),
            _grid_row((0.17, 0.11, 0.14), (0.29, 0.15, 0.11)),
            _grid_row((0.19, 0.13, 0.16), (0.31, 0.17, 0.12))]
    lines = verdict(rows, GRID)
    assert lines[3] == ("fg-ECE, matched w: fused beats (majority of 3 seeds and mean) predictive variance alone at "
                        "w = 0.25, 0.5, 0.75, its noise control (same w) at w = 0.25, 0.5, both at w = 0.25, 0.5")
    assert lines[6] == ("fg-ECE, each map at its own best w < 1 per seed (w = 0.25, 0.5, 0.75; an oracle w picked on "
                        "the test images, optimistic for both alike): fused-best vs predictive variance alone (w=1): "
                        "fg-ECE lower in 3/3 seeds (mean diff -0.0800); vs noise-best: fg-ECE lower in 0/3 seeds "
                        "(mean diff +0.0100); best w per seed: fused 0.5, 0.5, 0.5, noise 0.75, 0.75, 0.75")
    summary = lines[-2]
    assert summary.startswith("fusion helps on no metric")
    assert "the seed's null result is reproduced on fg-ECE (fused-best does not beat the noise control at its best w)" \
        in summary
    assert summary.endswith("; matched w alone would say fusion helps on fg-ECE (w = 0.25, 0.5), which does not "
                            "survive each map taking its own best w")
    assert "NOT reproduced" not in summary
    rec = best_w(rows, GRID)
    assert rec["grid"] == [0.25, 0.5, 0.75]
    assert rec["metrics"]["fg_ece"]["fused_w"] == [0.5] * 3 and rec["metrics"]["fg_ece"]["noise_w"] == [0.75] * 3
    assert rec["metrics"]["fg_ece"]["noise"] == [0.10, 0.11, 0.12]


def test_verdict_fused_best_beating_v_pred_and_noise_best_helps() -> None:
    # noise's best w (0.75) stays above fused's best (0.5) in 2/3 seeds and on the mean
    rows = [_grid_row((0.18, 0.12, 0.15), (0.30, 0.16, 0.14)),
            _grid_row((0.17, 0.11, 0.14), (0.29, 0.15, 0.13)),
            _grid_row((0.19, 0.13, 0.16), (0.31, 0.17, 0.12))]
    lines = verdict(rows, GRID)
    assert "vs noise-best: fg-ECE lower in 2/3 seeds (mean diff -0.0100)" in lines[6]
    assert lines[-2] == ("fusion helps on fg-ECE — fused at its best w beats both predictive variance alone and the "
                         "noise control at its best w (majority of 3 seeds and mean): the seed's null result is NOT "
                         "reproduced on fg-ECE; the seed's null result is reproduced on AUROC (fused-best does not "
                         "beat predictive variance alone), fg-AUROC (fused-best does not beat predictive variance "
                         "alone)")
    assert "matched w alone" not in lines[-2]
