"""Old vs new Grad-CAM set-up, in 2D and 3D, with 95% t-intervals over seeds (issue #13, part 5).

*before*: the toolkit's first version — one Seg-Grad-CAM of the summed foreground score on the
deepest encoder stage, which lies upstream of every dropout site (its activation is the same in
every MC sample). *after*: the seed's set-up — one Seg-Grad-CAM per foreground class on the activation
after the last dropout site (:mod:`.gradcam`). Everything else is shared within a seed: in 2D one
trained U-Net per seed serves both set-ups (:func:`~.experiment.train_seed_net`), in 3D one small
TUNE++ per seed (:mod:`.volume3d`); the MC masks are the seed's in both, so the predictive variance
is the same map and only the saliency term changes.

Intervals: mean ± half-width of the two-sided 95% Student-t interval over seeds
(:func:`~.experiment.t_ci95`), for every metric and for the **paired** per-seed differences
fused - predictive variance alone and fused - noise control (a difference whose interval excludes 0
is the only "helps" this study claims; with 3 seeds the t quantile is 4.30, so only large, consistent
effects can show).

``python -m tunepp_deploy.methods.saliency.target_study --out DIR --md FILE`` runs both and writes
``DIR/saliency_target_study.json`` and the Markdown table ``FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.methods.saliency.data2d import phantom_data
from tunepp_deploy.methods.saliency.experiment import (
    REFERENCE_W,
    SaliencySettings,
    check_settings,
    run_saliency_experiment,
    t_ci95,
    train_seed_net,
)
from tunepp_deploy.methods.saliency.report import _clean
from tunepp_deploy.methods.saliency.volume3d import LOWER_IS_BETTER as LOWER_3D
from tunepp_deploy.methods.saliency.volume3d import VARIANTS, Volume3dSettings, run_volume3d

METRICS_2D = ("fg_ece", "auroc", "fg_auroc")
LOWER_2D = frozenset({"fg_ece"})
NAMES = {"fg_ece": "fg-ECE ↓", "auroc": "AUROC ↑", "fg_auroc": "fg-AUROC ↑", "u_ece_fg": "U-ECE fg ↓",
         "aurc": "AURC ↓"}
#: The matched fusion weight the tables show (the 2D sweep has more; its best-w record is summarised too).
W_SHOWN = 0.5


def _stat(values: list[float]) -> dict[str, float | int | None]:
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    return {"mean": sum(v) / len(v) if v else None, "ci95": t_ci95(v), "n": len(v)}


def _k(w: float) -> str:
    return f"{w:g}"


def summarize_2d(body: dict[str, Any]) -> dict[str, Any]:
    """Per metric: mean ± CI of the shown maps and of the paired differences (module docstring),
    including each map at its own best w < 1 (the 2D verdict's comparison)."""
    rows, rec = body["per_seed"], body["best_w"]["metrics"]
    w, ref = _k(W_SHOWN), _k(REFERENCE_W)
    out: dict[str, Any] = {"maps": {}, "diffs": {}}
    for m in METRICS_2D:
        out["maps"][m] = {
            "saliency_alone": _stat([r["weights"]["0"][m] for r in rows]),
            "fused": _stat([r["weights"][w][m] for r in rows]),
            "noise_control": _stat([r["noise_control"][w][m] for r in rows]),
            "predictive_alone": _stat([r["weights"][ref][m] for r in rows]),
            "fused_best_w": _stat(rec[m]["fused"]), "noise_best_w": _stat(rec[m]["noise"]),
        }
        out["diffs"][m] = {
            "fused_minus_predictive": _stat([r["weights"][w][m] - r["weights"][ref][m] for r in rows]),
            "fused_minus_noise": _stat([r["weights"][w][m] - r["noise_control"][w][m] for r in rows]),
            "fused_best_minus_predictive": _stat([f - p for f, p in zip(rec[m]["fused"], rec[m]["predictive"],
                                                                         strict=True)]),
            "fused_best_minus_noise_best": _stat([f - n for f, n in zip(rec[m]["fused"], rec[m]["noise"],
                                                                         strict=True)]),
        }
    return out


def run_2d(s: SaliencySettings, cases: int = 12) -> dict[str, Any]:
    """Both set-ups on the 2D phantom slices, one training per seed shared by them."""
    s = check_settings(s)
    data = phantom_data(cases)
    t0 = time.perf_counter()
    nets = {seed: train_seed_net(data, seed, s) for seed in s.seeds}
    train_s = time.perf_counter() - t0
    bodies = {}
    for name, (target, per_class) in VARIANTS.items():
        bodies[name] = run_saliency_experiment(data, replace(s, target=target, per_class=per_class), nets=nets)
    return {"train_seconds": train_s, "bodies": bodies,
            "summary": {name: summarize_2d(b) for name, b in bodies.items()},
            "seconds": time.perf_counter() - t0}


def _pm(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "–"
    return f"{d['mean']:.4f}" + ("" if d["ci95"] is None else f" ± {d['ci95']:.4f}")


def _sig(d: dict[str, Any], lower_better: bool) -> str:
    """``better`` / ``worse`` when the 95% interval of a difference excludes 0, else ``n.s.``."""
    if d["mean"] is None or d["ci95"] is None:
        return "–"
    lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
    if hi < 0 or lo > 0:
        return "better" if (hi < 0) == lower_better else "worse"
    return "n.s."


def _helps(diffs: dict[str, dict[str, Any]], pred_key: str, noise_key: str, lower: bool) -> bool:
    return _sig(diffs[pred_key], lower) == "better" and _sig(diffs[noise_key], lower) == "better"


def render(study: dict[str, Any]) -> str:
    """The Markdown report of :func:`main`'s result."""
    lines = ["# Saliency-variance fusion: Grad-CAM after the dropout sites, per class (before vs after)", ""]
    d2, d3 = study.get("2d"), study.get("3d")
    lines += [
        "*before*: one Seg-Grad-CAM of the summed foreground score on the deepest encoder stage (upstream of every "
        "dropout site: its activation is identical in every MC sample, only the channel weights vary). *after*: one "
        "Seg-Grad-CAM per foreground class on the activation after the last dropout site (the input of the 1x1 "
        "classifier; `gradcam.py`), per MC sample, V_sal = sum over classes of Var_s of the min-max normalised "
        "class maps. Same trained network and same MC masks for both within a seed.", "",
        "Cells: mean ± half-width of the 95% Student-t interval over seeds (t_{0.975, n-1} sd / sqrt(n)). "
        "Differences are paired per seed; *better* / *worse* = its interval excludes 0, *n.s.* = it does not.", "",
        "Note on *after*: between that activation and the logits there is only the 1x1 classifier, so the per-class "
        "Grad-CAM is exactly ReLU(|M_c|/N (z_c - b_c)) — the rectified bias-free class logit scaled by the predicted "
        "area (tested). After per-image normalisation its variance is the variance of the normalised logit maps.", ""]
    if d2:
        b = d2["bodies"]["after"]
        s, info = b["settings"], b["data"]
        seeds = ", ".join(map(str, s["seeds"]))
        lines += [f"## 2D (phantom slices, `experiment.py`): {len(s['seeds'])} seeds ({seeds})", "",
                  f"Data: {info['cases']} phantoms {info['shape']}, {info['slices']} axial slices, a third of the "
                  f"cases held out per seed; U-Net widths {list(s['widths'])}, {s['iters']} iterations (batch "
                  f"{s['batch']}), S = {s['samples']} MC samples; fg-ECE over the union of predicted and true "
                  f"foreground; noise control = w norm(V_pred) + (1-w) norm(uniform noise). Wall time "
                  f"{d2['seconds']:.0f} s on {study['threads']} thread(s) (training {d2['train_seconds']:.0f} s, "
                  "shared by both set-ups).", ""]
        for name in VARIANTS:
            sm = d2["summary"][name]
            lines += [f"### {name}", "", "| map | " + " | ".join(NAMES[m] for m in METRICS_2D) + " |",
                      "|---|---|---|---|"]
            for key, label in (("saliency_alone", "saliency variance alone (w=0)"),
                               ("fused", f"fused (w={W_SHOWN:g})"),
                               ("noise_control", f"noise control (w={W_SHOWN:g})"),
                               ("predictive_alone", "predictive variance alone (w=1)"),
                               ("fused_best_w", "fused at its best w < 1 per seed (oracle)"),
                               ("noise_best_w", "noise control at its best w < 1 per seed (oracle)")):
                lines.append(f"| {label} | " + " | ".join(_pm(sm["maps"][m][key]) for m in METRICS_2D) + " |")
            lines += ["", "| paired difference | " + " | ".join(NAMES[m] for m in METRICS_2D) + " |",
                      "|---|---|---|---|"]
            for key, label in (("fused_minus_predictive", f"fused (w={W_SHOWN:g}) - predictive alone"),
                               ("fused_minus_noise", f"fused (w={W_SHOWN:g}) - noise control"),
                               ("fused_best_minus_predictive", "fused-best - predictive alone"),
                               ("fused_best_minus_noise_best", "fused-best - noise-best")):
                lines.append(f"| {label} | " + " | ".join(
                    f"{_pm(sm['diffs'][m][key])} ({_sig(sm['diffs'][m][key], m in LOWER_2D)})"
                    for m in METRICS_2D) + " |")
            lines += ["", f"2D verdict of `experiment.verdict` ({name}, majority of seeds and mean): "
                      + d2["bodies"][name]["verdict"][-2], ""]
    if d3:
        s = d3["settings"]
        lines += [f"## 3D (whole phantom volumes, `volume3d.py`): {len(s['seeds'])} seeds "
                  f"({', '.join(map(str, s['seeds']))})", "",
                  f"Data: {s['cases']} phantoms of {list(s['shape'])} voxels at {list(s['spacing'])} mm, "
                  f"{s['test_cases']} held out per seed; small TUNE++ (widths {list(s['widths'])}, dropout dec1, dec0) "
                  f"trained {s['iters']} iterations (batch {s['batch']}, Dice + CE) per seed; saliency predictor with "
                  f"window {list(s['window'])}, overlap 0.5, S = {s['samples']} mask sets, w = {s['weight']}; metrics "
                  "are `compare.evaluate`'s per-case numbers, averaged over the test volumes. Wall time "
                  f"{d3['seconds']:.0f} s on {d3['threads']} thread(s). Segmentation Dice (mean fg, MC mean): "
                  f"{_pm(d3['summary']['after']['dice'])}.", ""]
        metrics = ("u_ece_fg", "auroc", "aurc")
        for name in VARIANTS:
            sm = d3["summary"][name]
            lines += [f"### {name}", "", "| map | " + " | ".join(NAMES[m] for m in metrics) + " |",
                      "|---|---|---|---|"]
            for key, label in (("saliency_variance", "saliency variance alone"), ("fused", f"fused (w={s['weight']})"),
                               ("noise_control", f"noise control (w={s['weight']})"),
                               ("predictive_variance", "predictive variance alone")):
                lines.append(f"| {label} | " + " | ".join(_pm(sm["maps"][key][m]) for m in metrics) + " |")
            lines += ["", "| paired difference | " + " | ".join(NAMES[m] for m in metrics) + " |", "|---|---|---|---|"]
            for key, label in (("fused_minus_predictive", "fused - predictive alone"),
                               ("fused_minus_noise", "fused - noise control")):
                lines.append(f"| {label} | " + " | ".join(f"{_pm(sm[key][m])} ({_sig(sm[key][m], m in LOWER_3D)})"
                                                          for m in metrics) + " |")
            lines.append("")
    lines += ["## Does the fusion help?", ""] + [f"- {v}" for v in verdict_lines(study)]
    lines += _per_seed(study)
    return "\n".join(lines) + "\n"


def _per_seed(study: dict[str, Any]) -> list[str]:
    """The per-seed numbers every interval above is computed from."""
    lines: list[str] = []
    if study.get("2d"):
        w, ref = _k(W_SHOWN), _k(REFERENCE_W)
        head = "| set-up | seed | Dice | map | " + " | ".join(NAMES[m] for m in METRICS_2D) + " |"
        lines += ["", "## Per seed, 2D", "", head, "|---|---|---|---|---|---|---|"]
        for name in VARIANTS:
            for r in study["2d"]["bodies"][name]["per_seed"]:
                for label, d in (("saliency alone (w=0)", r["weights"]["0"]), (f"fused (w={w})", r["weights"][w]),
                                 (f"noise control (w={w})", r["noise_control"][w]),
                                 ("predictive alone (w=1)", r["weights"][ref])):
                    lines.append(f"| {name} | {r['seed']} | {r['dice']:.4f} | {label} | "
                                 + " | ".join(f"{d[m]:.4f}" if d[m] is not None else "–" for m in METRICS_2D) + " |")
    if study.get("3d"):
        metrics = ("u_ece_fg", "auroc", "aurc")
        head = "| set-up | seed | Dice | map | " + " | ".join(NAMES[m] for m in metrics) + " |"
        lines += ["", "## Per seed, 3D", "", head, "|---|---|---|---|---|---|---|"]
        for name in VARIANTS:
            for r in study["3d"]["per_seed"]:
                v = r["variants"][name]
                for key in ("saliency_variance", "fused", "noise_control", "predictive_variance"):
                    d = v["maps"][key]
                    lines.append(f"| {name} | {r['seed']} | {v['dice']:.4f} | {key} | "
                                 + " | ".join(f"{d[m]:.5f}" if d[m] is not None else "–" for m in metrics) + " |")
    return lines


def verdict_lines(study: dict[str, Any]) -> list[str]:
    """Per dimension, set-up and metric: helps only where fused beats *both* predictive variance alone
    and the noise control with 95% intervals excluding 0 (module docstring)."""
    out = []
    if study.get("2d"):
        for name in VARIANTS:
            sm = study["2d"]["summary"][name]["diffs"]
            matched = [NAMES[m] for m in METRICS_2D if _helps(sm[m], "fused_minus_predictive", "fused_minus_noise",
                                                               m in LOWER_2D)]
            best = [NAMES[m] for m in METRICS_2D if _helps(sm[m], "fused_best_minus_predictive",
                                                            "fused_best_minus_noise_best", m in LOWER_2D)]
            out.append(f"2D {name}: fused (w={W_SHOWN:g}) beats both predictive variance alone and the noise control "
                       f"(95% intervals) on {', '.join(matched) or 'no metric'}; fused at its best w beats both on "
                       f"{', '.join(best) or 'no metric'}")
    if study.get("3d"):
        for name in VARIANTS:
            sm = study["3d"]["summary"][name]
            good = [NAMES[m] for m in ("u_ece_fg", "auroc", "aurc")
                    if _sig(sm["fused_minus_predictive"][m], m in LOWER_3D) == "better"
                    and _sig(sm["fused_minus_noise"][m], m in LOWER_3D) == "better"]
            out.append(f"3D {name}: fused (w={study['3d']['settings']['weight']}) beats both predictive variance alone "
                       f"and the noise control (95% intervals) on {', '.join(good) or 'no metric'}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study (defaults: the sizes in docs/results/saliency_variance.md) and write its files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for saliency_target_study.json")
    ap.add_argument("--md", type=Path, required=True, help="Markdown report to write")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of both parts unless --seeds-2d/--seeds-3d")
    ap.add_argument("--seeds-2d", default=None)
    ap.add_argument("--seeds-3d", default=None)
    ap.add_argument("--iters-2d", type=int, default=400)
    ap.add_argument("--cases-2d", type=int, default=12)
    ap.add_argument("--iters-3d", type=int, default=Volume3dSettings.iters)
    ap.add_argument("--skip-2d", action="store_true")
    ap.add_argument("--skip-3d", action="store_true")
    a = ap.parse_args(argv)
    seeds2 = tuple(int(x) for x in (a.seeds_2d or a.seeds).split(","))
    seeds3 = tuple(int(x) for x in (a.seeds_3d or a.seeds).split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    study: dict[str, Any] = {"threads": torch.get_num_threads()}
    if not a.skip_2d:
        study["2d"] = run_2d(SaliencySettings(iters=a.iters_2d, seeds=seeds2), cases=a.cases_2d)
    if not a.skip_3d:
        study["3d"] = run_volume3d(Volume3dSettings(iters=a.iters_3d, seeds=seeds3))
    clean = _clean(study)
    write_atomic(a.out / "saliency_target_study.json",
                 lambda t: t.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n"))
    write_atomic(a.md, lambda t: t.write_text(render(clean), encoding="utf-8"))
    return study


if __name__ == "__main__":
    main()


__all__ = ["main", "render", "run_2d", "summarize_2d", "verdict_lines"]
