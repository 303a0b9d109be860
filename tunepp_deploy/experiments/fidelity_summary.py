"""Summary of the fidelity experiment v2: per-seed means of every run's ``cases.json``, then per
variant the mean over seeds with a 95% t-interval, and paired differences against ``none`` (same
seed, same base weights: the seed-to-seed spread cancels). Writes ``fidelity.json`` and ``fidelity.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.metrics.intervals import mean_ci95
from tunepp_deploy.metrics.triage import ood_auroc, triage_curve

SEG = ("dice", "hd95", "betti_error", "betti_error_small_removed", "betti_matching_error")
DET = (*SEG, *(f"pp_{k}" for k in SEG), "ece_fg", "auroc_msp", "aurc_msp", "auroc_entropy", "aurc_entropy")
MC = (*SEG, "ece_fg", "auroc_total", "aurc_total", "auroc_msp", "aurc_msp")


def ci95(values: list[float]) -> tuple[float, float, int]:
    """``(mean, half-width of the 95% t-interval, n)`` over the finite values (NaN half-width for n < 2)."""
    mean, half, n = mean_ci95(values)
    return mean, float("nan") if half is None else half, n


def _m(rows: list[dict[str, Any]], key: str) -> float:
    v = [r[key] for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
    return float(np.mean(v)) if v else float("nan")


def run_summary(cases: dict[str, dict[str, dict[str, Any]]], budget: float) -> dict[str, float]:
    """One run's numbers (``det_*`` / ``mc_*``): test-case means; with MC also triage over the test and
    shifted cases together and the OOD AUROC of the case score, per shift and over all shifts."""
    det = list(cases["det"]["test"].values())
    out = {f"det_{k}": _m(det, k) for k in DET}
    out["det_failed_share"] = float(np.mean([r["failed"] for r in det]))
    mc = cases.get("mc") or {}
    if "test" not in mc:
        return out
    test = list(mc["test"].values())
    out.update({f"mc_{k}": _m(test, k) for k in MC})
    out["mc_failed_share"] = float(np.mean([r["failed"] for r in test]))
    shifts = {k.removeprefix("shift_"): list(v.values()) for k, v in mc.items() if k.startswith("shift_")}
    pool = test + [r for rows in shifts.values() for r in rows]
    tri = triage_curve([r["case_score"] for r in pool], [r["failed"] for r in pool])
    out["triage"] = tri.at(budget)
    out["triage_failures"] = float(tri.failures)
    out["triage_cases"] = float(len(pool))
    id_scores = [r["case_score"] for r in test]
    all_shift = [r["case_score"] for rows in shifts.values() for r in rows]
    out["ood_auroc"] = ood_auroc(id_scores, all_shift) if all_shift else float("nan")
    for k, rows in shifts.items():
        out[f"ood_auroc_{k}"] = ood_auroc(id_scores, [r["case_score"] for r in rows])
        out[f"shift_dice_{k}"] = _m(rows, "dice")
    return out


def collect(root: Path, seeds: int, variants: tuple[str, ...], budget: float) -> dict[str, dict[int, dict[str, float]]]:
    """``{variant: {seed: run_summary}}`` over the runs that finished (a missing run is left out, and
    the tables say how many seeds each figure rests on)."""
    from tunepp_deploy.experiments.fidelity import run_dir

    out: dict[str, dict[int, dict[str, float]]] = {v: {} for v in variants}
    for v in variants:
        for seed in range(seeds):
            f = run_dir(root, seed, v) / "cases.json"
            if f.is_file():
                out[v][seed] = run_summary(json.loads(f.read_text()), budget)
    return out


def _fmt(mean: float, half: float, d: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{d}f} ± {half:.{d}f}" if math.isfinite(half) else f"{mean:.{d}f}"


def _paired(runs: dict[str, dict[int, dict[str, float]]], a: str, b: str, key: str, relative: bool = False
            ) -> tuple[float, float, int]:
    diffs = []
    for seed, ra in runs.get(a, {}).items():
        rb = runs.get(b, {}).get(seed)
        if rb is None:
            continue
        x, y = ra[key], rb[key]
        if relative:
            diffs.append((x - y) / y if y else float("nan"))
        else:
            diffs.append(x - y)
    return ci95(diffs)


def write_summary(root: Path, s: Any, timings: dict[str, Any], errors: dict[str, str],
                  seconds: float) -> dict[str, Any]:
    """``fidelity.json`` and ``fidelity.md`` (module docstring)."""
    runs = collect(root, s.seeds, tuple(s.variants), s.budget)
    keys = sorted({k for per in runs.values() for r in per.values() for k in r})
    agg = {v: {k: ci95([r.get(k) for r in per.values()]) for k in keys} for v, per in runs.items()}
    paired: dict[str, dict[str, tuple[float, float, int]]] = {}
    for v in s.variants:
        if v == "none":
            continue
        paired[v] = {
            "betti_error_rel": _paired(runs, v, "none", "det_betti_error", relative=True),
            "betti_error_small_removed_rel": _paired(runs, v, "none", "det_betti_error_small_removed",
                                                     relative=True),
            "betti_matching_error_rel": _paired(runs, v, "none", "det_betti_matching_error", relative=True),
            "dice": _paired(runs, v, "none", "det_dice"),
        }
    dt_vs_ph = _paired(runs, "dt", "ph", "det_dice") if "dt" in runs and "ph" in runs else (float("nan"),) * 2 + (0,)
    body = {"settings": json.loads(json.dumps(s.__dict__, default=lambda o: getattr(o, "__dict__", str(o)))),
            "seconds": round(seconds, 1), "errors": errors, "timings": timings,
            "per_seed": {v: {str(k): r for k, r in per.items()} for v, per in runs.items()},
            "aggregate": agg, "paired_vs_none": paired, "dice_dt_minus_ph": dt_vs_ph}
    write_atomic(root / "fidelity.json", lambda t: t.write_text(json.dumps(body, indent=1)))
    write_atomic(root / "fidelity.md", lambda t: t.write_text(markdown(s, runs, agg, paired, dt_vs_ph, errors,
                                                                        seconds)))
    return body


def markdown(s: Any, runs: dict[str, dict[int, dict[str, float]]], agg: dict[str, dict[str, tuple]],
             paired: dict[str, dict[str, tuple]], dt_vs_ph: tuple, errors: dict[str, str], seconds: float) -> str:
    """The report's text (tables: mean ± 95% t-interval over seeds)."""
    def cell(v: str, k: str, d: int) -> str:
        m, h, _ = agg[v].get(k, (float("nan"), float("nan"), 0))
        return _fmt(m, h, d)

    def seeds(v: str, k: str) -> int:
        return agg[v].get(k, (0, 0, 0))[2]

    def seg_row(label: str, v: str, p: str, fail: str | None) -> str:
        return (f"| {label} | {seeds(v, p + 'dice')} | {cell(v, p + 'dice', 3)} | {cell(v, p + 'hd95', 2)} | "
                f"{cell(v, p + 'betti_error', 2)} | {cell(v, p + 'betti_error_small_removed', 2)} | "
                f"{cell(v, p + 'betti_matching_error', 2)} | {cell(v, fail, 2) if fail else ''} |")

    lines = [
        "# Fidelity experiment v2 (contact phantoms)", "",
        f"{s.seeds} training seeds x variants {', '.join(s.variants)}; base {s.base_epochs} epochs without the "
        f"topology term, then {s.finetune_epochs} fine-tuning epochs per variant ({s.iters_per_epoch} iterations "
        f"each, lr x {s.finetune_lr_scale:.2f}); {s.train_cases} training phantoms (train/val split by seed), "
        f"{s.test_cases} test phantoms, {s.shift_cases} per shift; deterministic pass for every run, MC ({s.samples} "
        f"samples) for the first {s.mc_seeds} seeds; {s.jobs} worker(s) on one thread each; total wall time "
        f"{seconds / 60:.1f} min.",
        "Every cell: mean ± half-width of the 95% t-interval over seeds of the per-seed mean over the test cases.", "",
        "## Segmentation and topology (test cases)", "",
        "| variant | seeds | Dice | HD95 (mm) | Betti error | Betti error, components < "
        f"{s.rule.min_voxels} vox removed | Betti-matching error | failed share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [seg_row(f"{v} (deterministic)", v, "det_", "det_failed_share") for v in runs]
    lines += [seg_row(f"{v} + post-processing", v, "det_pp_", None) for v in runs]
    lines += [seg_row(f"{v} (MC mean)", v, "mc_", "mc_failed_share") for v in runs]
    lines += ["", "Post-processing: per label keep the b0 largest components and fill cavities where the designed "
              "Betti numbers have none (`tunepp_deploy.postprocess.topology`), on the deterministic segmentation.",
              f"Failure rule: {s.rule.describe()}.", "",
              "## Paired differences against `none` (same seed and base weights; deterministic pass)", "",
              "| variant | Betti error (relative) | Betti error, small removed (relative) | Betti-matching error "
              "(relative) | Dice (absolute) |", "|---|---|---|---|---|"]
    for v, p in paired.items():
        lines.append(f"| {v} | {_fmt(*p['betti_error_rel'][:2], 3)} | "
                     f"{_fmt(*p['betti_error_small_removed_rel'][:2], 3)} | "
                     f"{_fmt(*p['betti_matching_error_rel'][:2], 3)} | {_fmt(*p['dice'][:2], 4)} |")
    lines += ["", f"Dice(dt) - Dice(ph), paired over {dt_vs_ph[2]} seeds: {_fmt(dt_vs_ph[0], dt_vs_ph[1], 4)} "
              "(the seed: distance transform within 0.3% DSC of full PH).", "",
              "## Uncertainty (test cases; voxel ranking of each segmentation's errors near its foreground)", "",
              "| variant | fg ECE MC | fg ECE det. | AUROC MC total | AURC MC total | AUROC MC max-softmax | "
              "AUROC det. max-softmax | AUROC det. entropy | AURC det. max-softmax | AURC det. entropy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for v in runs:
        lines.append(f"| {v} | {cell(v, 'mc_ece_fg', 4)} | {cell(v, 'det_ece_fg', 4)} | "
                     f"{cell(v, 'mc_auroc_total', 3)} | {cell(v, 'mc_aurc_total', 4)} | {cell(v, 'mc_auroc_msp', 3)} | "
                     f"{cell(v, 'det_auroc_msp', 3)} | {cell(v, 'det_auroc_entropy', 3)} | "
                     f"{cell(v, 'det_aurc_msp', 4)} | {cell(v, 'det_aurc_entropy', 4)} |")
    shifts = sorted({k.removeprefix("ood_auroc_") for per in runs.values() for r in per.values() for k in r
                     if k.startswith("ood_auroc_")})
    lines += ["", "## Triage and out-of-distribution detection (MC; case score: mean total uncertainty over the "
              "predicted foreground)", "",
              f"Triage@{s.budget:.0%}: share of the failures among the test and shifted cases found by reviewing that "
              f"share of the cases, most uncertain first (a random order finds {s.budget:.2f} on average).", "",
              "| variant | seeds | failures / cases | triage@25% | OOD AUROC all shifts | " +
              " | ".join(f"OOD AUROC {k}" for k in shifts) + " | " + " | ".join(f"Dice {k}" for k in shifts) + " |",
              "|---|---|---|---|---|" + "---|" * (2 * len(shifts))]
    for v in runs:
        fails = cell(v, "triage_failures", 1) + " / " + cell(v, "triage_cases", 0)
        lines.append(f"| {v} | {seeds(v, 'triage_cases')} | {fails} | {cell(v, 'triage', 2)} | "
                     f"{cell(v, 'ood_auroc', 3)} | " + " | ".join(cell(v, f"ood_auroc_{k}", 3) for k in shifts) +
                     " | " + " | ".join(cell(v, f"shift_dice_{k}", 3) for k in shifts) + " |")
    if errors:
        lines += ["", "## Runs that failed (left out of the tables)", ""] + [f"- {k}: {e}" for k, e in errors.items()]
    lines += ["", "Per-run files: `runs/seed*/VARIANT/cases.json` (every case's metrics), `train_done.json`, "
              "`metrics.csv`; per-seed numbers in `fidelity.json`.", ""]
    return "\n".join(lines)


__all__ = ["ci95", "collect", "markdown", "run_summary", "write_summary"]
