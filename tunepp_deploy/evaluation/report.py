"""Write an evaluation: ``metrics.json``, ``metrics.csv`` (one row per case and label), ``report.md`` + PNGs.

Plots (matplotlib, Agg backend, written atomically): ``reliability.png`` (pooled reliability diagram,
all voxels and foreground), ``risk_coverage.png``, ``triage.png``, ``uncertainty_vs_error.png``
(histogram of the total uncertainty of correct vs wrong voxels near the anatomy) and, for the worst
cases (failed first, then lowest Dice), ``worst_NAME.png``: scan / truth / prediction / uncertainty
on the axial slice with the most topological-error voxels, those voxels outlined in red. A plot whose
inputs are missing (no probabilities, no uncertainty maps) is not drawn and the report says why.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import DataError
from tunepp_deploy.evaluation.cases import LoadedEval
from tunepp_deploy.evaluation.compute import CaseResult
from tunepp_deploy.metrics.ranking import risk_coverage
from tunepp_deploy.metrics.topology import topological_error_mask

CSV_CASE_KEYS = ("mean_dice", "betti_error", "violation", "failed", "ece", "ece_fg", "brier", "nll", "case_score",
                 "taus_total", "taus_seed_pearson", "auroc_total", "aurc", "eaurc")


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _save_fig(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    write_atomic(path, lambda tmp: tmp.write_bytes(data), suffix=".png")
    return path


def write_tables(out: Path, results: list[CaseResult], summary: dict[str, Any]) -> None:
    """metrics.json (summary + per case) and metrics.csv (one row per case and label)."""
    body = {"summary": summary, "cases": {r.name: {"case": r.case, "labels": r.labels} for r in results}}
    text = json.dumps(_json_safe(body), indent=2)
    write_atomic(out / "metrics.json", lambda tmp: tmp.write_text(text))
    buf = io.StringIO()
    cols = ["case", "label", "name", "dice", "iou", "hd95", "betti_error", "betti_pred", "betti_true", *CSV_CASE_KEYS]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in results:
        for row in r.labels:
            w.writerow({"case": r.name, **row, "betti_pred": " ".join(map(str, row["betti_pred"])),
                        "betti_true": " ".join(map(str, row["betti_true"])),
                        **{k: r.case.get(k, "") for k in CSV_CASE_KEYS}})
    csv_text = buf.getvalue()
    write_atomic(out / "metrics.csv", lambda tmp: tmp.write_text(csv_text))


def plot_reliability(results: list[CaseResult], path: Path) -> Path | None:
    rel = [r for r in results if r.reliability_all is not None]
    if not rel:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, attr, title in ((axes[0], "reliability_all", "all voxels"), (axes[1], "reliability_fg", "foreground")):
        b = getattr(rel[0], attr)
        for r in rel[1:]:
            b = b.merge(getattr(r, attr))
        centres = (b.edges[:-1] + b.edges[1:]) / 2
        width = b.edges[1] - b.edges[0]
        ok = b.count > 0
        ax.bar(centres[ok], b.accuracy[ok], width=width * 0.9, color="tab:blue", alpha=0.8, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
        ax.plot(centres[ok], b.confidence[ok], "o", color="tab:orange", ms=3, label="mean confidence")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{title}: ECE {b.ece:.4f}")
        ax.legend(loc="upper left", fontsize=8)
    return _save_fig(fig, path)


def plot_risk_coverage(unc: np.ndarray, err: np.ndarray, path: Path) -> Path:
    rc = risk_coverage(unc, err)
    cov, risk = rc.subsample(400)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(cov, risk, label=f"total uncertainty (AURC {rc.aurc:.4f}, E-AURC {rc.eaurc:.4f})")
    ax.axhline(rc.error_rate, color="grey", ls="--", lw=1, label=f"random ({rc.error_rate:.4f})")
    ax.set(xlabel="coverage (most certain voxels kept)", ylabel="risk (error rate)", xlim=(0, 1),
           title="risk-coverage, voxels near the anatomy (pooled)")
    ax.legend(fontsize=8)
    return _save_fig(fig, path)


def plot_triage(summary: dict[str, Any], path: Path) -> Path:
    t = summary["triage"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(t["reviewed"], t["found"], marker="o", ms=3, label="by case uncertainty")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="random order")
    found = t["found_at_budget"]
    if found is not None:
        ax.axvline(t["budget"], color="tab:red", lw=1)
        ax.annotate(f"{100 * found:.0f}% at {100 * t['budget']:.0f}%", (t["budget"], found),
                    xytext=(5, -12), textcoords="offset points", fontsize=8)
    ax.set(xlabel="fraction of cases reviewed", ylabel="fraction of failures found", xlim=(0, 1), ylim=(0, 1.02),
           title=f"triage ({t['failures']} failed of {t['cases']})")
    ax.legend(fontsize=8, loc="lower right")
    return _save_fig(fig, path)


def plot_unc_hist(unc: np.ndarray, err: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    hi = float(np.percentile(unc, 99.9)) if unc.size else 1.0
    bins = np.linspace(0.0, max(hi, 1e-6), 50)
    for sel, name, col in ((~err, "correct", "tab:blue"), (err, "wrong", "tab:red")):
        if sel.any():
            ax.hist(np.clip(unc[sel], 0, hi), bins=bins, density=True, alpha=0.55, color=col,
                    label=f"{name} ({int(sel.sum())})")
    ax.set(xlabel="total uncertainty", ylabel="density", title="uncertainty of correct vs wrong voxels")
    ax.legend(fontsize=8)
    return _save_fig(fig, path)


def plot_case_panel(c: LoadedEval, r: CaseResult, num_classes: int, path: Path) -> Path:
    """Scan / truth / prediction / uncertainty on the worst axial slice, topological errors outlined."""
    z = r.worst_slice
    topo = topological_error_mask(c.pred, c.truth, num_classes)[:, :, z]
    unc = c.unc.get(c.main_map) if c.main_map else None
    if unc is None and c.probs is not None:
        unc = 1.0 - c.probs.max(0)
    panels = [("scan", None if c.image is None else c.image[:, :, z], "gray"),
              ("truth", c.truth[:, :, z], "tab10"), ("prediction", c.pred[:, :, z], "tab10"),
              ("uncertainty", None if unc is None else unc[:, :, z], "magma")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, (title, img, cmap) in zip(axes, panels, strict=True):
        if img is None:
            ax.text(0.5, 0.5, f"no {title}", ha="center", va="center", transform=ax.transAxes)
        elif cmap == "tab10":
            ax.imshow(img.T, cmap=cmap, vmin=0, vmax=9, origin="lower", interpolation="nearest")
        else:
            ax.imshow(img.T, cmap=cmap, origin="lower")
        if topo.any():
            ax.contour(topo.T.astype(float), levels=[0.5], colors="red", linewidths=0.9)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"{r.name}  slice {z}  Dice {r.case['mean_dice']:.3f}  Betti error {r.case['betti_error']}  "
                 f"(red: topological errors)")
    return _save_fig(fig, path)


def worst_cases(results: list[CaseResult], n: int) -> list[CaseResult]:
    """Failed cases first, then by Betti error (desc) and mean Dice (asc)."""
    def key(r: CaseResult) -> tuple:
        d = r.case["mean_dice"]
        return (not r.case["failed"], -r.case["betti_error"], d if math.isfinite(d) else 2.0)

    return sorted(results, key=key)[:n]


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else str(x)
    return str(x)


#: Written last when a staged report is moved into place: its presence means the report is complete.
REPORT_MD = "report.md"


@contextlib.contextmanager
def staged_outputs(out: Path) -> Iterator[Path]:
    """A hidden folder inside ``out`` to write the report's files into, moved into ``out`` on success.

    Each file is atomic already, but a report is several files: a full disk halfway through would
    leave ``metrics.json`` and some plots without ``report.md`` (or next to an older report.md). So
    everything is written into ``out/.tunepp_eval.*``, then renamed into ``out`` (same file system, no
    copy), ``report.md`` last; on any failure the staging folder goes, ``out`` keeps what it had, and
    an ``out`` this call created (and left empty) is removed too.
    """
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".tunepp_eval.", dir=out))
    except OSError as e:
        raise DataError(f"{out}: cannot create the report folder ({e.strerror or e})") from None
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir())
        for name in [*(n for n in names if n != REPORT_MD), *(n for n in names if n == REPORT_MD)]:
            os.replace(stage / name, out / name)
    except OSError as e:
        raise DataError(f"{out}: cannot write the report ({e.strerror or e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            with contextlib.suppress(OSError):
                out.rmdir()


def write_markdown(out: Path, summary: dict[str, Any], plots: dict[str, Path | None], panels: list[Path]) -> Path:
    s = summary
    lines = [
        "# Evaluation report", "",
        f"{s['cases']} cases, classes {', '.join(s['classes'][1:])}. Definitions: `tunepp_deploy/metrics/`.", "",
        "## Segmentation and topology", "",
        f"- mean Dice {_fmt(s['mean_dice'])}, mean IoU {_fmt(s['mean_iou'])}",
        f"- Betti error per case (sum over labels and k) {_fmt(s['mean_betti_error_per_case'])}; "
        f"per label {_fmt(s['mean_betti_error_per_label'])}",
        f"- cases with any topological violation: {_fmt(s['violation_share'], 3)}", "",
        "| label | Dice | IoU | HD95 mean (mm) | HD95 median | HD95 inf | Betti error | violation share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in s["per_label"]:
        lines.append(f"| {row['name']} | {_fmt(row['dice'])} | {_fmt(row['iou'])} | {_fmt(row['hd95_mean'], 2)} | "
                     f"{_fmt(row['hd95_median'], 2)} | {row['hd95_infinite']} | {_fmt(row['betti_error'], 3)} | "
                     f"{_fmt(row['violation_share'], 3)} |")
    lines += ["", "HD95 is +inf for a label present on only one side (counted in 'HD95 inf', left out of the mean).",
              ""]
    if "calibration" in s:
        c = s["calibration"]
        lines += ["## Calibration", "",
                  f"- ECE (15 bins, pooled voxels): all {_fmt(c['ece_pooled'])}, foreground {_fmt(c['ece_fg_pooled'])} "
                  f"({c['foreground']})",
                  f"- per-case means: ECE {_fmt(c['ece_mean'])}, foreground ECE {_fmt(c['ece_fg_mean'])}, "
                  f"Brier {_fmt(c['brier_mean'])}, NLL {_fmt(c['nll_mean'])}", ""]
    if "ranking" in s:
        lines += ["## Uncertainty", "",
                  f"- TAUS ({s['taus_map']} map: AUROC for topological-error vs correct voxels near the anatomy): "
                  f"{_fmt(s['taus'])}",
                  f"- seed's TAUS (Pearson r of the {s['taus_map']} map with the complexity map C): "
                  f"{_fmt(s['taus_seed_pearson'])}",
                  f"- risk-coverage of voxel errors: AURC {_fmt(s['aurc'])}, E-AURC {_fmt(s['eaurc'])}",
                  f"- triage: {_fmt(s['triage']['found_at_budget'], 3)} of {s['triage']['failures']} failed cases "
                  "found "
                  f"reviewing the {100 * s['triage']['budget']:.0f}% most uncertain "
                  f"(failure: Dice < {s['failure_rule']['dice_below']} or Betti violation "
                  f"{'on' if s['failure_rule']['any_betti_violation'] else 'off'})", "",
                  f"Voxel-error ranking ({s['ranking_region']}):", "",
                  "| map | AUROC | AUPRC | TAUS | cases with topological errors |", "|---|---|---|---|---|"]
        for m, v in s["ranking"].items():
            lines.append(f"| {m} | {_fmt(v['auroc'])} | {_fmt(v['auprc'])} | {_fmt(v['taus'])} | {v['taus_cases']} |")
        lines.append("")
    if s["notes"]:
        lines += ["## Not computed", "", *[f"- {n}" for n in s["notes"]], ""]
    lines += ["## Figures", ""]
    for name, p in plots.items():
        lines.append(f"![{name}]({p.name})" if p is not None else f"- {name}: not drawn (inputs missing, see above)")
    lines.append("")
    for p in panels:
        lines.append(f"![{p.stem}]({p.name})")
    text = "\n".join(lines) + "\n"
    path = out / REPORT_MD
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


__all__ = ["REPORT_MD", "plot_case_panel", "staged_outputs", "worst_cases", "write_markdown", "write_tables"]
