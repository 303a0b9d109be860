"""Write the comparison as compare.json, compare.md (one table) and compare.png (bar plots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tunepp_deploy.data.nifti import write_atomic

COLUMNS = [("dice", "Dice"), ("betti_error", "Betti err"), ("ece", "ECE"), ("ece_fg", "ECE fg"),
           ("auroc", "AUROC"), ("aurc", "AURC"), ("triage_at_25", "triage@25%"), ("samples", "S"),
           ("latency_torch_s", "torch s/vol"), ("latency_ort_s", "ORT s/vol")]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    j = out / "compare.json"
    write_atomic(j, lambda t: t.write_text(json.dumps(results, indent=2, default=float)))
    lines = ["# Method comparison on phantoms", "",
             f"Train cases {results['train_cases']}, test cases {len(results['test_cases'])}, "
             f"{results['epochs']} epochs ({results['iters']} iterations), {results['threads']} thread(s). "
             "Uncertainty: epistemic variance (MC methods), ranking map (SegWithU). ECE fg: union of predicted "
             "and true foreground. Latency: one whole test volume incl. all S samples, median.", "",
             "| method | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in results["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k)) for k, _ in COLUMNS) + " |")
    md = out / "compare.md"
    write_atomic(md, lambda t: t.write_text("\n".join(lines) + "\n"))
    names = list(results["methods"])
    keys = ["dice", "ece_fg", "auroc", "aurc"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for ax, k in zip(axes, keys, strict=True):
        ax.bar(names, [results["methods"][n][k] for n in names], color=["C0", "C1", "C2", "C3"][: len(names)])
        ax.set_title(k)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    png = out / "compare.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [j, md, png]


__all__ = ["write_report"]
