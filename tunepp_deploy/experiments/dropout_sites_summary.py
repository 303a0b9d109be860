"""Summary of the dropout-site study: per run the mean over test cases of ``cases.json`` plus its
``timing.json``; per variant the mean over seeds with a 95% t-interval; paired differences against
the first variant (same seed, same data split and batches: the seed-to-seed spread cancels).
Writes ``dropout_sites.json`` and ``dropout_sites.md`` (atomic).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.experiments.fidelity_summary import ci95

#: (key, label, higher is better) of the table, in order; ``det_*`` are the deterministic pass.
ROWS: tuple[tuple[str, str, bool | None], ...] = (
    ("speedup", "MC-S speed-up vs naive loop (x)", True),
    ("reuse_bound", "trunk-reuse bound (x, FLOPs)", True),
    ("engine_s", "MC-S engine, one volume (s)", False),
    ("naive_s", "naive loop, one volume (s)", False),
    ("mc_dice", "Dice, MC mean", True),
    ("det_dice", "Dice, deterministic", True),
    ("mc_ece_fg", "fg ECE, MC mean", False),
    ("det_ece_fg", "fg ECE, deterministic", False),
    ("mc_auroc_total", "AUROC total map", True),
    ("mc_auroc_epistemic", "AUROC epistemic map", True),
    ("mc_auroc_msp", "AUROC 1 - max MC-mean softmax", True),
    ("det_auroc_msp", "AUROC 1 - max softmax (deterministic)", True),
    ("mc_aurc_total", "AURC total map", False),
    ("mc_aurc_epistemic", "AURC epistemic map", False),
    ("mc_aurc_msp", "AURC 1 - max MC-mean softmax", False),
    ("det_aurc_msp", "AURC 1 - max softmax (deterministic)", False),
    ("best_val_dice", "best validation Dice", True),
    ("train_s", "training (s)", None),
)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    v = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
    return float(np.mean(v)) if v else float("nan")


def run_summary(run: Path) -> dict[str, float] | None:
    """One finished run's numbers (test-case means, timing, training), or None while unfinished."""
    cases, timing, train = run / "cases.json", run / "timing.json", run / "train_done.json"
    if not (cases.is_file() and timing.is_file() and train.is_file()):
        return None
    c = json.loads(cases.read_text())
    t = json.loads(timing.read_text())
    tr = json.loads(train.read_text())
    out: dict[str, float] = {}
    for part in ("det", "mc"):
        rows = list(c[part].values())
        for key in ("dice", "ece_fg", "auroc_msp", "aurc_msp", "auroc_total", "aurc_total", "auroc_epistemic",
                    "aurc_epistemic"):
            if any(key in r for r in rows):
                out[f"{part}_{key}"] = _mean(rows, key)
    out.update({"speedup": float(t["speedup"]), "reuse_bound": float(t["reuse_bound"]),
                "engine_s": float(min(t["engine_s"])), "naive_s": float(min(t["naive_s"])),
                "max_abs_diff_maps": float(t["max_abs_diff_maps"]), "best_val_dice": float(tr["best_val_dice"]),
                "train_s": float(tr["seconds"])})
    return out


def collect(root: Path, seeds: int, variants: tuple[str, ...]) -> dict[str, dict[int, dict[str, float]]]:
    """``{variant: {seed: run_summary}}`` over the finished runs."""
    from tunepp_deploy.experiments.dropout_sites import run_dir

    out: dict[str, dict[int, dict[str, float]]] = {v: {} for v in variants}
    for v in variants:
        for seed in range(seeds):
            r = run_summary(run_dir(root, seed, v))
            if r is not None:
                out[v][seed] = r
    return out


def aggregate(per: dict[str, dict[int, dict[str, float]]], ref: str) -> dict[str, Any]:
    """Per variant and key: mean, 95% half-width, n; and paired differences (variant - ref) over the
    seeds both finished."""
    table: dict[str, Any] = {}
    for v, seeds in per.items():
        keys = sorted({k for r in seeds.values() for k in r})
        entry: dict[str, Any] = {"seeds": sorted(seeds)}
        for k in keys:
            m, h, n = ci95([r.get(k, float("nan")) for r in seeds.values()])
            entry[k] = {"mean": m, "ci95": h, "n": n}
        if v != ref:
            both = [sd for sd in seeds if sd in per.get(ref, {})]
            diffs: dict[str, Any] = {}
            for k in keys:
                d = [seeds[sd][k] - per[ref][sd][k] for sd in both if k in seeds[sd] and k in per[ref][sd]]
                m, h, n = ci95(d)
                diffs[k] = {"mean": m, "ci95": h, "n": n}
            entry["paired_vs_ref"] = diffs
        table[v] = entry
    return table


def _fmt(cell: dict[str, Any] | None, digits: int = 3) -> str:
    if not cell or not math.isfinite(cell["mean"]):
        return "—"
    if not math.isfinite(cell["ci95"]):
        return f"{cell['mean']:.{digits}f} (n={cell['n']})"
    return f"{cell['mean']:.{digits}f} ± {cell['ci95']:.{digits}f}"


def markdown(body: dict[str, Any]) -> str:
    """The tables of ``dropout_sites.md`` (the reading is written by hand in docs/results)."""
    variants = list(body["variants"])
    ref = variants[0]
    agg = body["table"]
    s = body["settings"]
    lines = [
        "# Dropout-site study (generated)",
        "",
        f"{body['created']}; config {s['config']}; {s['seeds']} seeds x {len(variants)} variants; "
        f"training: dropout-free base {s['base_epochs']} x {s['iters_per_epoch']} iterations, then per variant a "
        f"fine-tune of {s['finetune_epochs']} x {s['iters_per_epoch']} with its sites; "
        f"{s['train_cases']} training phantoms "
        f"(train/val split per seed), {s['test_cases']} held-out test phantoms {s['phantom_shape']}; "
        f"MC S = {s['samples']}; timing on one window-sized centre crop; wall time {body['seconds'] / 60:.1f} min "
        f"on {s['jobs']} worker(s), one thread "
        f"each (timing: one thread, worker process, machine shared with other jobs; load average at the end "
        f"{body['loadavg_end']}).",
        "",
        "Mean ± 95% t-interval over seeds (n = seeds finished).",
        "",
        "| metric | " + " | ".join(f"[{v.replace('+', ', ')}]" for v in variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for key, label, _ in ROWS:
        cells = [_fmt(agg[v].get(key), 2 if key.endswith("_s") or key in ("speedup", "reuse_bound") else 3)
                 for v in variants]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    others = variants[1:]
    if others:
        lines += ["", f"Paired differences (variant − [{ref.replace('+', ', ')}]), same seed; mean ± 95% t-interval.",
                  "", "| metric | " + " | ".join(f"[{v.replace('+', ', ')}]" for v in others) + " |",
                  "|---|" + "---|" * len(others)]
        for key, label, better in ROWS:
            if better is None:
                continue
            cells = [_fmt(agg[v].get("paired_vs_ref", {}).get(key), 3) for v in others]
            arrow = " (↑ better)" if better else " (↓ better)"
            lines.append(f"| {label}{arrow} | " + " | ".join(cells) + " |")
    if body["errors"]:
        lines += ["", "Failed runs:", ""] + [f"- {k}: {v}" for k, v in sorted(body["errors"].items())]
    return "\n".join(lines) + "\n"


def write_summary(root: Path, s: Any, timings: dict[str, Any], errors: dict[str, str],
                  seconds: float) -> dict[str, Any]:
    """``dropout_sites.json`` + ``.md`` under ``root``; returns the JSON body."""
    from dataclasses import asdict

    per = collect(root, s.seeds, tuple(s.variants))
    body = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": json.loads(json.dumps(asdict(s), default=str)),
        "variants": list(s.variants),
        "seconds": seconds,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "runs": {v: {str(k): r for k, r in rows.items()} for v, rows in per.items()},
        "table": aggregate(per, s.variants[0]),
        "timings": timings,
        "errors": errors,
    }
    write_atomic(root / "dropout_sites.json", lambda t: t.write_text(json.dumps(body, indent=1, default=str)))
    write_atomic(root / "dropout_sites.md", lambda t: t.write_text(markdown(body)))
    return body


__all__ = ["ROWS", "aggregate", "collect", "markdown", "run_summary", "write_summary"]
