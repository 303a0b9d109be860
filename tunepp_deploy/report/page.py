"""The triage page ``OUT/index.html``: every case of an output folder, most uncertain first.

Who reads it: the person who decides which cases to check. It is built **from the case reports
only** (``NAME_report.json``, plus the files they list), so ``tunepp report OUT`` rebuilds it at any
time — after a sharded run's last part, after cases were redone, or with ``--truth`` once labels exist.
``tunepp infer`` writes it after every folder run.

One row per readable report, sorted by the report's ``case.triage_score`` (mean total uncertainty over
the predicted foreground), highest first, ties by name: the case, linked to its report; the triage
score; the share of foreground voxels above the flag threshold; the flagged regions; the Betti
numbers per label; with a truth folder (``NAME.nii.gz``, or ``labelsTr/`` of a dataset root) the mean
foreground Dice and the summed Betti error against the truth; and the thumbnail
(:mod:`tunepp_deploy.report.preview`), linked to the full PNG. Reports that cannot be read, and
cases whose preview or truth could not be used, are named on the page instead of failing it.

Static HTML with inline CSS (no script, no server: it opens from the file system and can be copied
with the folder); every name is escaped (``html.escape``) and every link percent-encoded. The page
and each PNG are written atomically (temporary file + rename), so a browser refreshing during a run
never sees half a page.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from tunepp_deploy import __version__
from tunepp_deploy.data.nifti import load_volume, write_atomic
from tunepp_deploy.errors import DataError
from tunepp_deploy.report.preview import ensure_preview

PAGE_NAME = "index.html"
REPORT_SUFFIX = "_report.json"


@dataclass
class CaseRow:
    """One row of the page."""

    name: str
    report_file: str
    triage_score: float
    uncertain_fraction: float | None
    flagged_regions: int | None
    betti: list[tuple[str, list[int]]]
    preview: str | None = None
    dice: float | None = None
    betti_error: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PageResult:
    """What :func:`write_page` wrote: the page, its row count and the reports left out (name, reason)."""

    path: Path
    rows: int
    left_out: list[tuple[str, str]]


def _read(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"not readable JSON ({type(e).__name__})") from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise DataError("not a case report (no name)")
    case = body.get("case")
    if not isinstance(case, dict) or not isinstance(case.get("triage_score"), (int, float)):
        raise DataError("no case.triage_score")
    return body


def _truth_file(truth: Path, name: str) -> Path | None:
    from tunepp_deploy.evaluation.cases import truth_folder

    folder = truth_folder(truth)
    return next((p for e in (".nii.gz", ".nii") if (p := folder / f"{name}{e}").is_file()), None)


def truth_scores(folder: Path, report: dict[str, Any], truth: Path) -> tuple[float | None, int | None, str | None]:
    """``(mean foreground Dice, summed Betti error, note)`` of one case against its truth file."""
    from tunepp_deploy.metrics.overlap import dice_per_class
    from tunepp_deploy.metrics.topology import betti_error_per_label

    name = report["name"]
    t_file = _truth_file(truth, name)
    if t_file is None:
        return None, None, f"no truth {name}.nii.gz"
    seg_name = (report.get("outputs") or {}).get("seg", f"{name}_seg.nii.gz")
    try:
        seg = load_volume(folder / str(seg_name))
        t = load_volume(t_file)
    except DataError as e:
        return None, None, str(e)
    if seg.shape != t.shape:
        return None, None, f"truth grid {t.shape} differs from the segmentation's {seg.shape}"
    classes = report.get("classes") or []
    k = max(len(classes), int(seg.array.max()) + 1, int(t.array.max()) + 1, 2)
    if (t.array != np.rint(t.array)).any() or t.array.min() < 0:
        return None, None, f"truth {t_file.name} is not a label map"
    p, g = seg.array.astype(np.int64), t.array.astype(np.int64)
    dice = dice_per_class(p, g, k)
    mean = float(np.nanmean(dice)) if np.isfinite(dice).any() else None
    return mean, int(betti_error_per_label(p, g, k).sum()), None


def collect_rows(folder: Path, truth: Path | None = None) -> tuple[list[CaseRow], list[tuple[str, str]]]:
    """The rows of every readable report in ``folder`` (sorted, module docstring) and the reports left out."""
    rows, left_out = [], []
    for rf in sorted(folder.glob(f"*{REPORT_SUFFIX}")):
        if rf.name.startswith(".") or not rf.is_file():
            continue
        try:
            rep = _read(rf)
        except DataError as e:
            left_out.append((rf.name, str(e)))
            continue
        case = rep["case"]
        row = CaseRow(
            name=rep["name"], report_file=rf.name, triage_score=float(case["triage_score"]),
            uncertain_fraction=case.get("foreground_fraction_uncertain"),
            flagged_regions=case.get("flagged_regions"),
            betti=[(str(lab.get("name", lab.get("label"))), list(lab.get("betti") or []))
                   for lab in rep.get("labels") or [] if isinstance(lab, dict)],
        )
        try:
            row.preview = ensure_preview(folder, rep, rf).name
        except Exception as e:  # a missing or unreadable map: the row stays, without a thumbnail
            row.notes.append(f"no preview ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})")
        if truth is not None:
            row.dice, row.betti_error, note = truth_scores(folder, rep, truth)
            if note:
                row.notes.append(note)
        rows.append(row)
    rows.sort(key=lambda r: (-r.triage_score, r.name))
    return rows, left_out


def _num(v: float | int | None, fmt: str = "{:.4f}") -> str:
    return "–" if v is None else fmt.format(v)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #f0f0f0; }
tr.case:nth-child(even) { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.note { color: #a33; font-size: 0.9em; }
img { display: block; }
"""


def render_page(folder: Path, rows: list[CaseRow], left_out: list[tuple[str, str]], truth: Path | None) -> str:
    """The HTML of the page (module docstring)."""
    e = html.escape
    head = ["#", "case", "triage score", "uncertain fg", "flagged", "Betti (b0, b1, b2) per label"]
    if truth is not None:
        head += ["Dice", "Betti error"]
    head += ["preview", "notes"]
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tunepp triage: {e(folder.name)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>Triage: {e(str(folder))}</h1>",
        f"<p>{len(rows)} cases, most uncertain first (triage score = mean total uncertainty over the predicted "
        "foreground). Flagged: components whose mean total uncertainty exceeds the threshold or that are not "
        "their label's largest, and uncertain cavities; outlined in yellow in the previews."
        + (f" Truth: {e(str(truth))}." if truth is not None else "") + "</p>",
        '<table id="cases"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>",
    ]
    for i, r in enumerate(rows, 1):
        betti = "<br>".join(f"{e(n)}: {e(', '.join(str(int(b)) for b in bs))}" for n, bs in r.betti) or "–"
        cells = [
            f'<td class="num">{i}</td>',
            f'<td><a href="{quote(r.report_file)}">{e(r.name)}</a></td>',
            f'<td class="num">{_num(r.triage_score)}</td>',
            f'<td class="num">{_num(r.uncertain_fraction, "{:.1%}")}</td>',
            f'<td class="num">{_num(r.flagged_regions, "{:d}")}</td>',
            f"<td>{betti}</td>",
        ]
        if truth is not None:
            cells += [f'<td class="num">{_num(r.dice)}</td>', f'<td class="num">{_num(r.betti_error, "{:d}")}</td>']
        if r.preview:
            src = quote(r.preview)
            cells.append(f'<td><a href="{src}"><img src="{src}" alt="{e(r.name)} preview" width="384"></a></td>')
        else:
            cells.append("<td>–</td>")
        cells.append(f'<td class="note">{e("; ".join(r.notes))}</td>')
        out.append(f'<tr class="case" data-name="{e(r.name)}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if left_out:
        out.append("<h2>Reports not shown</h2><ul>")
        out += [f"<li>{e(n)}: {e(why)}</li>" for n, why in left_out]
        out.append("</ul>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.append(f"<p><small>tunepp-deploy {e(__version__)}, {stamp}; rebuild with "
               f"<code>tunepp report {e(str(folder))}</code>.</small></p></body></html>")
    return "\n".join(out) + "\n"


def write_page(folder: Path, truth: Path | None = None) -> PageResult:
    """Build ``folder/index.html`` from the case reports there (module docstring), atomically."""
    if not folder.is_dir():
        raise DataError(f"{folder}: output folder not found")
    if truth is not None and not truth.is_dir():
        raise DataError(f"{truth}: truth folder not found")
    rows, left_out = collect_rows(folder, truth)
    text = render_page(folder, rows, left_out, truth)
    path = folder / PAGE_NAME
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".html")
    return PageResult(path, len(rows), left_out)


__all__ = ["PAGE_NAME", "CaseRow", "PageResult", "collect_rows", "render_page", "truth_scores", "write_page"]
