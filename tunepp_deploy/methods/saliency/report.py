"""``saliency.json`` and ``saliency.md`` of ``tunepp experiment saliency`` (written atomically).

The JSON is the record (every per-seed number, settings, data, verdict); undefined numbers (an
AUROC with no errors, an sd of one seed) are ``null`` so the file is strict JSON. The Markdown is
the table a reader compares: mean ± sd per map, then the per-seed rows the verdict was counted on.
Each ``w < 1`` row is followed by its **noise control** row (``V_sal`` replaced by uniform noise,
:mod:`.experiment`): a fused map only carries saliency information where it beats that control too,
since any spread-out added term lowers fg-ECE; the header says so, next to the verdict. The verdict's
summary compares each map at its **own best** ``w`` per seed (an oracle ``w`` picked on the test
images, optimistic for both maps alike), so the best-w table lists the chosen ``w`` and values per
seed: the summary can be checked against it line by line.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import DataError

_NAMES = {"fg_ece": "fg-ECE ↓", "auroc": "AUROC ↑", "fg_auroc": "fg-AUROC ↑"}


def _clean(x: Any) -> Any:
    """NaN / inf -> None, tuples -> lists, recursively (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ms(d: dict[str, Any]) -> str:
    """``mean ± sd [± 95% t-interval half-width]`` (the interval only where the summary has one)."""
    if d["mean"] is None:
        return "–"
    ci = d.get("ci95")
    return (_num(d["mean"]) + ("" if d["sd"] is None else f" ± {_num(d['sd'])}")
            + ("" if ci is None else f" [± {_num(ci)}]"))


def _map_name(key: str, noise: bool = False) -> str:
    if noise:
        return "noise control (noise alone)" if float(key) == 0.0 else "noise control"
    if key == "raw":
        return "predictive variance, raw scale (no per-image normalisation)"
    w = float(key)
    if w == 1.0:
        return "predictive variance alone"
    return "saliency variance alone" if w == 0.0 else "fused"


def _best_w_table(body: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The per-seed best-w record the verdict's summary is counted on (none for a body without one)."""
    rec = body.get("best_w")
    if not rec or not rec["grid"]:
        return []
    grid = ", ".join(f"{w:g}" for w in rec["grid"])
    lines = ["", f"## Each map at its own best w < 1 (w = {grid}), per seed: the verdict's best-w comparison", "",
             "Oracle w, chosen on the test images for each map alike (no validation split at this size).", "",
             "| seed | metric | fused best w | fused | noise best w | noise control | "
             "predictive variance alone (w=1) |",
             "|---|---|---|---|---|---|---|"]
    for m, name in _NAMES.items():
        d = rec["metrics"][m]
        for i, r in enumerate(rows):
            fw, nw = d["fused_w"][i], d["noise_w"][i]
            lines.append(f"| {r['seed']} | {name} | {'–' if fw is None else f'{fw:g}'} | {_num(d['fused'][i])} | "
                         f"{'–' if nw is None else f'{nw:g}'} | {_num(d['noise'][i])} | {_num(d['predictive'][i])} |")
    return lines


def render_markdown(body: dict[str, Any]) -> str:
    """The report of one :func:`~.experiment.run_saliency_experiment` result."""
    s, summ, rows = body["settings"], body["summary"], body["per_seed"]
    data = ", ".join(f"{k} {v}" for k, v in body["data"].items() if k != "classes")
    lines = [f"# Saliency-variance fusion, 2D ({body['source']}): {len(rows)} seed(s)", "",
             f"- data: {data}; {body['num_classes']} classes",
             f"- schedule: {s['iters']} iterations (batch {s['batch']}, lr {s['lr']}, widths {list(s['widths'])}), "
             f"S = {s['samples']} MC samples, test fraction {s['test_fraction']:.3g} of the cases/images per seed, "
             f"seeds {', '.join(map(str, s['seeds']))}",
             f"- **Grad-CAM**: target '{body.get('target', 'bottleneck')}', "
             + ("one map per foreground class, V_sal = sum over classes" if body.get("per_class")
                else "one map of the summed foreground score"),
             f"- **fg-ECE pixels**: {body['ece_pixels']}; the map read as confidence 1 - norm(U), 15 bins",
             "- **AUROC**: pixel error (argmax != label) vs U over all test pixels; **fg-AUROC**: over the fg-ECE "
             "pixels",
             f"- normalisation: {body['normalisation']}",
             f"- **noise control** (rows next to each w < 1): {body['noise_control']}. Fused beating predictive "
             "variance alone on fg-ECE is therefore not evidence that saliency helps",
             "- **best-w comparison** (the verdict's summary): comparing fused and noise at the *same* w makes the "
             "answer depend on which w is matched (the two reach their best at different w), so per seed and metric "
             "each map takes its own best w over the same w < 1 grid, and fusion *helps* on a metric only where "
             "fused-best beats both predictive variance alone and noise-best (strict majority of seeds and better "
             "mean). That w is chosen on the test images — an oracle w, optimistic; there is no separate "
             "validation split at this size. The optimism is the same for both maps (same grid, same pixels), "
             "which is why noise-best is a fair control for fused-best; the absolute best-w numbers are not what a "
             "w fixed in advance would get. The matched-w lines stay as detail",
             f"- {body['seconds'] / 60:.1f} min", "", "## Verdict (computed from the per-seed rows below)", ""]
    lines += [f"- {v}" for v in body["verdict"]]
    lines += ["", "## Uncertainty maps, mean ± sd [± 95% t-interval half-width] over seeds", "",
              "| map | w | " + " | ".join(_NAMES.values()) + " |", "|---|---|---|---|---|"]
    for key, d in summ["weights"].items():
        lines.append(f"| {_map_name(key)} | {key} | " + " | ".join(_ms(d[m]) for m in _NAMES) + " |")
        if key in summ["noise_control"]:
            lines.append(f"| {_map_name(key, noise=True)} | {key} | "
                         + " | ".join(_ms(summ["noise_control"][key][m]) for m in _NAMES) + " |")
    lines.append(f"| {_map_name('raw')} | – | " + " | ".join(_ms(summ["predictive_variance_raw"][m]) for m in _NAMES)
                 + " |")
    lines += _best_w_table(body, rows)
    lines += ["", "## Segmentation (argmax of the MC mean), per seed", "",
              "| seed | train / test images (test cases) | pixel accuracy | Dice (mean fg) | fg pixels | "
              "fg error rate | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['train_images']} / {r['test_images']} ({r['test_groups']}) | "
                     f"{_num(r['pixel_accuracy'])} | {_num(r['dice'])} | {r['fg_pixels']} | "
                     f"{_num(r['fg_error_rate'])} | {r['seconds']:.0f} |")
    lines.append(f"| mean ± sd | | {_ms(summ['pixel_accuracy'])} | {_ms(summ['dice'])} | | | |")
    lines += ["", "## Uncertainty maps, per seed", "", "| seed | map | w | " + " | ".join(_NAMES.values()) + " |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        for key, d in r["weights"].items():
            lines.append(f"| {r['seed']} | {_map_name(key)} | {key} | " + " | ".join(_num(d[m]) for m in _NAMES) + " |")
            if key in r["noise_control"]:
                nc = r["noise_control"][key]
                lines.append(f"| {r['seed']} | {_map_name(key, noise=True)} | {key} | "
                             + " | ".join(_num(nc[m]) for m in _NAMES) + " |")
        raw = r["predictive_variance_raw"]
        lines.append(f"| {r['seed']} | {_map_name('raw')} | – | " + " | ".join(_num(raw[m]) for m in _NAMES) + " |")
    return "\n".join(lines) + "\n"


def prepare_out(out: Path) -> None:
    """Create ``out`` and check it is writable *before* the minutes of training, not after."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create output folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK):
        raise DataError(f"{out}: output folder is not writable")


def write_saliency_report(out: Path, body: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/saliency.json`` and ``out/saliency.md`` atomically; returns their paths."""
    clean = _clean(body)
    js, md = out / "saliency.json", out / "saliency.md"
    write_atomic(js, lambda t: t.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n"))
    write_atomic(md, lambda t: t.write_text(render_markdown(clean), encoding="utf-8"))
    return js, md


__all__ = ["prepare_out", "render_markdown", "write_saliency_report"]
