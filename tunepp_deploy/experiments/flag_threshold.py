"""Which flag threshold separates wrong regions from right ones: the report's rule measured on phantoms.

The case report flags a predicted component when its mean flag-map value exceeds ``flag_threshold``
(or when it is a detached fragment). What a value means changed when the TUNE++ ``total`` map became
the predictive Gini ``1 - sum_k pbar_k^2`` (it now includes the softmax's own boundary uncertainty, not
only the variance across samples), so the default has to be chosen again, on data, not by analogy.

Per repeat (an independent set of phantoms: in-distribution plus every shift of
:mod:`tunepp_deploy.data.shift`, whose errors are the ones a reader must catch), every predicted
component (26-connectivity, per label) gets its mean ``total`` and ``epistemic`` values and a ground
truth: **wrong** when more than half of its voxels carry another label in the reference. Per map and
repeat: the ROC AUC of the component mean as a detector of wrong components, the threshold with the
best Youden J (TPR - FPR) and the TPR / FPR at the current default. The threshold to ship is the mean
over repeats of the best ones, reported with its spread — a default that moves a lot between repeats
is not a property of the map.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from tunepp_deploy.data.nifti import load_volume, write_atomic
from tunepp_deploy.errors import TuneppError

MAPS = ("total", "epistemic")
#: A component is wrong when more than this fraction of its voxels have another reference label.
WRONG_FRACTION = 0.5


def component_table(seg: np.ndarray, ref: np.ndarray, maps: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every predicted component: label, voxels, fragment (not its label's largest), error fraction, map means."""
    rows: list[dict[str, Any]] = []
    full = np.ones((3, 3, 3), dtype=bool)
    for label in (int(v) for v in np.unique(seg) if v > 0):
        comps, n = ndimage.label(seg == label, structure=full)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(np.ones(seg.shape), comps, idx)
        errors = ndimage.mean((ref != label).astype(np.float64), comps, idx)
        means = {m: ndimage.mean(v.astype(np.float64), comps, idx) for m, v in maps.items()}
        largest = int(np.argmax(sizes))
        for i in range(n):
            rows.append({"label": label, "voxels": int(sizes[i]), "fragment": i != largest,
                         "error": float(errors[i]), **{f"mean_{m}": float(means[m][i]) for m in maps}})
    return rows


def best_threshold(scores: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    """The threshold (midpoint between sorted scores) with the largest Youden J = TPR - FPR."""
    pos, neg = max(int(wrong.sum()), 1), max(int((~wrong).sum()), 1)
    values = np.unique(scores)
    cands = np.concatenate([[values[0] - 1e-9], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-9]])
    best = {"threshold": float("nan"), "youden_j": -1.0, "tpr": 0.0, "fpr": 0.0}
    for t in cands:
        flag = scores > t
        tpr, fpr = float((flag & wrong).sum() / pos), float((flag & ~wrong).sum() / neg)
        if tpr - fpr > best["youden_j"]:
            best = {"threshold": float(t), "youden_j": tpr - fpr, "tpr": tpr, "fpr": fpr}
    return best


def rates_at(scores: np.ndarray, wrong: np.ndarray, threshold: float) -> dict[str, float]:
    """TPR and FPR of ``scores > threshold`` as a detector of ``wrong``."""
    flag = scores > threshold
    return {"tpr": float((flag & wrong).sum() / max(int(wrong.sum()), 1)),
            "fpr": float((flag & ~wrong).sum() / max(int((~wrong).sum()), 1))}


def organ_correlation(rows: Sequence[dict[str, Any]], m: str) -> float:
    """Spearman rank correlation of the map's mean with the error fraction over each label's largest
    component (the organs themselves: does the map rank a worse organ higher?)."""
    from scipy.stats import spearmanr

    main = [c for c in rows if not c["fragment"]]
    if len(main) < 3:
        return float("nan")
    return float(spearmanr([c[f"mean_{m}"] for c in main], [c["error"] for c in main])[0])


def score_repeat(rows: list[dict[str, Any]], current: float) -> dict[str, Any]:
    """Per map: AUROC, best threshold, rates at ``current``, class means, organ rank correlation."""
    from sklearn.metrics import roc_auc_score

    wrong = np.array([c["error"] > WRONG_FRACTION for c in rows])
    entry: dict[str, Any] = {"components": len(rows), "wrong": int(wrong.sum()),
                             "fragments": int(sum(c["fragment"] for c in rows)),
                             "wrong_fragments": int(sum(c["fragment"] and w for c, w in zip(rows, wrong, strict=True))),
                             "organs_flagged_at_current": int(sum(not c["fragment"] and c["mean_total"] > current
                                                                  for c in rows))}
    for m in MAPS:
        sc = np.array([c[f"mean_{m}"] for c in rows])
        auc = float(roc_auc_score(wrong, sc)) if 0 < wrong.sum() < len(wrong) else float("nan")
        entry[m] = {"auroc": auc, "best": best_threshold(sc, wrong), "at_current": rates_at(sc, wrong, current),
                    "right_mean": float(sc[~wrong].mean()) if (~wrong).any() else float("nan"),
                    "wrong_mean": float(sc[wrong].mean()) if wrong.any() else float("nan"),
                    "organ_spearman": organ_correlation(rows, m)}
    return entry


def _case_rows(pred_dir: Path, data_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for report in sorted(pred_dir.glob("*_report.json")):
        name = report.name[: -len("_report.json")]
        seg = load_volume(pred_dir / f"{name}_seg.nii.gz", dtype=np.int16).array
        ref = load_volume(data_dir / "labelsTr" / f"{name}.nii.gz", dtype=np.int16).array
        maps = {m: load_volume(pred_dir / f"{name}_{m}.nii.gz").array for m in MAPS}
        rows += [{"case": name, **r} for r in component_table(seg, ref, maps)]
    return rows


def run_flag_threshold(
    model: Path, out: Path, repeats: int = 3, cases: int = 2, samples: int | None = None,
    current: float = 0.1, seed: int = 5000, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the measurement (module docstring); writes ``out/flag_threshold.json`` and ``.md``."""
    from tunepp_deploy.data.phantom import write_phantom_dataset
    from tunepp_deploy.data.shift import SHIFTS, write_shifted_dataset
    from tunepp_deploy.evaluation.run import predict_dataset

    result: dict[str, Any] = {"model": str(model), "repeats": repeats, "cases_per_set": cases, "samples": samples,
                              "current_default": current, "wrong_fraction": WRONG_FRACTION, "seed": seed,
                              "sets": ["in-distribution", *SHIFTS], "per_repeat": []}
    with tempfile.TemporaryDirectory(prefix="tunepp_flag_") as tmp:
        for r in range(repeats):
            rows: list[dict[str, Any]] = []
            for kind in ("id", *SHIFTS):
                data = Path(tmp) / f"r{r}_{kind}"
                s = seed + 100 * r
                if kind == "id":
                    write_phantom_dataset(data, cases, seed=s)
                else:
                    write_shifted_dataset(data, cases, kind, seed=s)
                pred = Path(tmp) / f"r{r}_{kind}_pred"
                ran = predict_dataset(model, data, pred, samples=samples, backend="auto", device="cpu")
                if ran.failed:
                    raise TuneppError(f"flag threshold: case {ran.failed[0][0]} failed: {ran.failed[0][1]}")
                rows += [{"set": kind, **c} for c in _case_rows(pred, data)]
            entry = {"repeat": r, **score_repeat(rows, current)}
            entry["rows"] = rows
            result["per_repeat"].append(entry)
            log(f"repeat {r}: {len(rows)} components, {entry['wrong']} wrong; total AUROC "
                f"{entry['total']['auroc']:.3f}, best threshold {entry['total']['best']['threshold']:.4f}")
    result["summary"] = _summary(result)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    write_atomic(out / "flag_threshold.json", lambda t: t.write_text(text))
    md = markdown(result)
    write_atomic(out / "flag_threshold.md", lambda t: t.write_text(md))
    return result


def _spread(values: Sequence[float]) -> list[float]:
    v = [x for x in values if not math.isnan(x)]
    return [float(np.mean(v)), float(np.std(v))] if v else [float("nan"), float("nan")]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    reps = result["per_repeat"]
    return {m: {"auroc": _spread([e[m]["auroc"] for e in reps]),
                "best_threshold": _spread([e[m]["best"]["threshold"] for e in reps]),
                "best_tpr": _spread([e[m]["best"]["tpr"] for e in reps]),
                "best_fpr": _spread([e[m]["best"]["fpr"] for e in reps]),
                "tpr_at_current": _spread([e[m]["at_current"]["tpr"] for e in reps]),
                "fpr_at_current": _spread([e[m]["at_current"]["fpr"] for e in reps]),
                "organ_spearman": _spread([e[m]["organ_spearman"] for e in reps])} for m in MAPS}


def markdown(result: dict[str, Any]) -> str:
    """The tables of ``flag_threshold.md``."""
    f = "{:.3f} ± {:.3f}".format
    lines = ["# Flag threshold: component mean uncertainty as a detector of wrong components", "",
             f"Model `{result['model']}`; {result['repeats']} repeats, each {result['cases_per_set']} phantoms per set "
             f"({', '.join(result['sets'])}); a component is wrong when > {result['wrong_fraction']:.0%} of its voxels "
             f"have another reference label. Current default: {result['current_default']}.", "",
             "| repeat | components | wrong | fragments (wrong) | map | AUROC | best threshold | TPR / FPR there "
             "| TPR / FPR at default | mean right / wrong |", "|---|---:|---:|---|---|---:|---:|---|---|---|"]
    for e in result["per_repeat"]:
        for m in MAPS:
            d = e[m]
            lines.append(f"| {e['repeat']} | {e['components']} | {e['wrong']} | {e['fragments']} "
                         f"({e['wrong_fragments']}) | {m} | {d['auroc']:.3f} | {d['best']['threshold']:.4f} | "
                         f"{d['best']['tpr']:.2f} / {d['best']['fpr']:.2f} | {d['at_current']['tpr']:.2f} / "
                         f"{d['at_current']['fpr']:.2f} | {d['right_mean']:.4f} / {d['wrong_mean']:.4f} |")
    lines += ["", "Over repeats (mean ± sd); organ rho: Spearman of the map's mean with the error fraction over "
              "each label's largest component:", "", "| map | AUROC | best threshold | TPR at best | FPR at best "
              "| TPR at default | FPR at default | organ rho |", "|---|---|---|---|---|---|---|---|"]
    for m, s in result["summary"].items():
        lines.append(f"| {m} | {f(*s['auroc'])} | {f(*s['best_threshold'])} | {f(*s['best_tpr'])} | "
                     f"{f(*s['best_fpr'])} | {f(*s['tpr_at_current'])} | {f(*s['fpr_at_current'])} | "
                     f"{f(*s['organ_spearman'])} |")
    flagged = [e["organs_flagged_at_current"] for e in result["per_repeat"]]
    lines += ["", f"Organs (largest components) flagged at the default: {flagged} per repeat."]
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", type=int, default=2, help="phantoms per set (in-distribution and each shift)")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run_flag_threshold(a.model, a.out, repeats=a.repeats, cases=a.cases, samples=a.samples)


if __name__ == "__main__":
    main()


__all__ = ["best_threshold", "component_table", "markdown", "organ_correlation", "rates_at", "run_flag_threshold",
           "score_repeat"]
