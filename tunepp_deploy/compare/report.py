"""Write the comparison as compare.json (everything), compare.md (one table + notes) and compare.png.

The plot answers the deployment question the table cannot show at a glance — what a better error
ranking costs: AUROC of each uncertainty map against whole-volume latency, one point per method and
backend (torch o, ONNX Runtime s); next to it Dice, probability ECE fg and uncertainty-map ECE fg.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from tunepp_deploy.data.nifti import write_atomic

COLUMNS = [("samples", "S"), ("dice", "Dice"), ("iou", "IoU"), ("betti_error", "Betti err"),
           ("betti_error_small_removed", "Betti err, <10 vox removed"), ("ece", "ECE"),
           ("ece_fg", "ECE fg"), ("u_ece_fg", "U-ECE fg"), ("auroc", "AUROC"), ("aurc", "AURC"),
           ("auroc_msp", "AUROC max-softmax"), ("triage_at_25", "triage@25%"), ("latency_torch_s", "torch s/vol"),
           ("latency_ort_s", "ORT s/vol"), ("train_seconds", "train s")]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):  # 4 significant digits: AURC and ECE of a good model are far below 0.01
        return "nan" if v != v else f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _training_line(results: dict[str, Any]) -> str:
    t = results.get("training", {})
    parts = []
    tp = t.get("tunepp", {})
    parts.append(f"TUNE++ loaded from `{tp['loaded']}`" if "loaded" in tp else
                 f"TUNE++ {tp.get('epochs')} epochs ({tp.get('iters')} iterations, last.pt)")
    h = t.get("head", {})
    parts.append(f"SegWithU head loaded from `{h['loaded']}`" if "loaded" in h else
                 f"SegWithU head {h.get('iters_run')}/{h.get('iters_max')} iterations, best validation loss at "
                 f"{h.get('best_iter')}{' (stopped early)' if h.get('stopped_early') else ''}")
    v = t.get("vi", {})
    parts.append(f"variational {v.get('arch')} loaded from `{v['loaded']}`" if "loaded" in v else
                 f"variational {v.get('arch')} {v.get('iters')} iterations")
    return "; ".join(parts) + "."


def markdown(results: dict[str, Any]) -> str:
    """compare.md: the table, then what each map is and how the numbers were taken."""
    shapes = {tuple(s) for s in results["volume_shapes"]}
    lines = ["# Uncertainty methods compared on one phantom split", "",
             "| method | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in results["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k)) for k, _ in COLUMNS) + " |")
    lines += ["", f"Config `{results['config']}`: {results['train_cases']} training and {len(results['test_cases'])} "
              f"test volumes of {' / '.join('x'.join(map(str, s)) for s in sorted(shapes))} voxels (model grid), "
              f"window {'x'.join(map(str, results['window']))}, overlap {results['overlap']}, "
              f"{results['threads']} thread(s). " + _training_line(results), "",
              "Uncertainty maps:", ""]
    lines += [f"- `{name}`: {note}" for name, note in results["notes"].items()]
    lines += ["", "- **ECE / ECE fg**: top-label ECE of the mean probabilities over all voxels / over the union of "
              "predicted and true foreground. **U-ECE fg**: the saliency seed's calibration of the *uncertainty map* "
              "(ECE of 1 - norm(U) for argmax correctness over the same foreground union). AUROC / AURC: the map "
              "ranking voxel errors near the foreground (predicted and true foreground dilated by 2 voxels; over "
              "all voxels in compare.json's auroc_all); AUROC max-softmax: the same ranking by the method's own "
              "1 - max p (a single-map baseline). triage@25%: share of the failed cases (mean Dice < 0.8, or Betti "
              "error > 1 once predicted components under 10 voxels are removed: the fidelity v2 rule) found by "
              "reviewing the 25% most uncertain cases (case score: mean U over the predicted "
              "foreground); failed test cases per row: " + ", ".join(
                  f"{n} {r.get('failed_cases')}/{len(results['test_cases'])}" for n, r in results["methods"].items())
              + " — with few test cases it stays near the budget whatever the map.",
              f"- **Latency**: one whole test volume (`{results['latency_volume']}`) in, all maps out, all S samples, "
              "median of the repeats. The saliency rows are torch only: Grad-CAM needs autograd (a backward per "
              "sample and window), which ONNX Runtime does not have; `saliency_sal_only` comes from the same run as "
              "`saliency_fusion`. `ort_max_abs_diff` in compare.json: ORT vs torch probabilities, same samples.",
              "- **train s**: `-` = loaded; the saliency rows train nothing of their own (the backbone's time).", ""]
    if "saliency_fusion" in results["maps"]:
        m = results["maps"]["saliency_fusion"]
        lines += ["Saliency run, each map of the same samples (AUROC / U-ECE fg): "
                  + ", ".join(f"{k} {_fmt(v['auroc'])} / {_fmt(v['u_ece_fg'])}" for k, v in m.items()) + ".", ""]
    lines += ["Models: " + ", ".join(f"{k} `{v}`" for k, v in results["models"].items())
              + " (pass them back with --backbone / --head / --vi to rerun without training).", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    names = list(results["methods"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for i, n in enumerate(names):
        row = results["methods"][n]
        if row["auroc"] != row["auroc"]:
            continue
        for key, marker in (("latency_torch_s", "o"), ("latency_ort_s", "s")):
            if row.get(key) is not None:
                ax.scatter(row[key], row["auroc"], marker=marker, color=f"C{i}", s=50,
                           label=n if key == "latency_torch_s" else None)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("s per whole volume (o torch, \u25a0 ONNX Runtime)")
    ax.set_ylabel("voxel-error AUROC")
    ax.legend(fontsize=7)
    ax.set_title("error ranking vs latency")
    keys = [("dice", "Dice"), ("ece_fg", "ECE fg"), ("u_ece_fg", "U-ECE fg")]
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        bx.bar(x + i * width, [results["methods"][n][k] for k, _ in keys], width, label=n, color=f"C{i}")
    bx.set_xticks(x + 0.4 - width / 2, [h for _, h in keys])
    bx.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda t: fig.savefig(t, dpi=100, format="png"), suffix=".png")
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, md, png = out / "compare.json", out / "compare.md", out / "compare.png"
    write_atomic(j, lambda t: t.write_text(json.dumps(results, indent=2, default=float)))
    text = markdown(results)
    write_atomic(md, lambda t: t.write_text(text))
    plot(results, png)
    return [j, md, png]


__all__ = ["COLUMNS", "markdown", "plot", "write_report"]
