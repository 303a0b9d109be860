"""The triage page ``index.html`` and ``tunepp report``: one row per case, sorted by triage score, escaped
names, truth columns, previews, unreadable reports named, one-line errors, and a real-browser screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app

SHAPE = (24, 20, 12)
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])
#: name -> triage score; names with characters HTML and URLs must escape.
CASES = {"b_mid": 0.2, "a&<low>": 0.05, "c high": 0.6}


def _save(arr: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))


def _case(out: Path, scans: Path, name: str, score: float, seed: int) -> np.ndarray:
    """Outputs and a report of one case as ``tunepp infer`` writes them: a ball plus a detached fragment
    (flagged ``not_largest``), a total map, the scan the report names as its input."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    seg = np.zeros(SHAPE, np.uint8)
    seg[(((g - [10, 10, 6]) / [6, 5, 4]) ** 2).sum(-1) <= 1] = 1
    seg[19:22, 2:5, 5:8] = 1
    total = (score * rng.random(SHAPE)).astype(np.float32)
    scan = (100 * seg + 20 * rng.normal(size=SHAPE)).astype(np.float32)
    _save(scan, scans / f"{name}.nii.gz")
    _save(seg, out / f"{name}_seg.nii.gz")
    _save(total, out / f"{name}_total.nii.gz")
    comps = [{"voxels": int((seg == 1).sum()) - 27, "centroid_voxel": [10.0, 10.0, 6.0], "flagged": False},
             {"voxels": 27, "centroid_voxel": [20.0, 3.0, 6.0], "flagged": True, "reasons": ["not_largest"]}]
    report = {"name": name, "input": str(scans / f"{name}.nii.gz"), "classes": ["background", "ball"],
              "flag_map": "total", "outputs": {"seg": f"{name}_seg.nii.gz", "total": f"{name}_total.nii.gz"},
              "case": {"triage_score": score, "foreground_fraction_uncertain": 0.5, "flagged_regions": 1},
              "labels": [{"label": 1, "name": "ball", "betti": [2, 0, 0], "components": comps}]}
    (out / f"{name}_report.json").write_text(json.dumps(report))
    return seg


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    out, scans, gt = tmp_path / "out", tmp_path / "scans", tmp_path / "gt"
    for d in (out, scans, gt):
        d.mkdir()
    for i, (name, score) in enumerate(CASES.items()):
        seg = _case(out, scans, name, score, i)
        truth = seg.copy()
        truth[19:22, 2:5, 5:8] = 0  # the truth has no fragment: Betti error 1, Dice below 1
        _save(truth, gt / f"{name}.nii.gz")
    return out, gt


class _Rows(HTMLParser):
    """The ``data-name`` of every case row and the table's header cells."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.head: list[str] = []
        self._th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "case":
            self.names.append(str(a["data-name"]))
        self._th = tag == "th"

    def handle_data(self, data: str) -> None:
        if self._th:
            self.head.append(data)
            self._th = False


def _parse(page: Path) -> _Rows:
    p = _Rows()
    p.feed(page.read_text())
    return p


def _report(*args: str):
    return CliRunner().invoke(app, ["report", *args])


def test_one_row_per_case_sorted_by_triage_score(folder: tuple[Path, Path]) -> None:
    out, _ = folder
    res = _report(str(out))
    assert res.exit_code == 0, res.output
    rows = _parse(out / "index.html")
    assert rows.names == ["c high", "b_mid", "a&<low>"]
    assert "Dice" not in rows.head
    text = (out / "index.html").read_text()
    assert "a&amp;&lt;low&gt;" in text and 'href="a%26%3Clow%3E_report.json"' in text and "<script" not in text
    for name in CASES:
        png = out / f"{name}_preview.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_truth_adds_dice_and_betti_error(folder: tuple[Path, Path]) -> None:
    out, gt = folder
    res = _report(str(out), "--truth", str(gt))
    assert res.exit_code == 0, res.output
    rows = _parse(out / "index.html")
    assert {"Dice", "Betti error"} <= set(rows.head) and len(rows.names) == 3
    from tunepp_deploy.report.page import collect_rows

    got, _ = collect_rows(out, gt)
    assert all(r.betti_error == 1 and 0.9 < (r.dice or 0) < 1.0 for r in got), got


def test_unreadable_report_is_named_not_fatal(folder: tuple[Path, Path]) -> None:
    out, _ = folder
    (out / "zz_report.json").write_text("{trunc")
    (out / "b_mid_total.nii.gz").unlink()  # its preview cannot be drawn: the row stays, with a note
    (out / "b_mid_preview.png").unlink(missing_ok=True)
    res = _report(str(out))
    assert res.exit_code == 0, res.output
    assert "1 unreadable report(s)" in res.output
    text = (out / "index.html").read_text()
    assert _parse(out / "index.html").names == ["c high", "b_mid", "a&<low>"]
    assert "zz_report.json" in text and "no preview" in text


def test_preview_is_redrawn_when_its_report_is_newer(folder: tuple[Path, Path]) -> None:
    import os

    out, _ = folder
    assert _report(str(out)).exit_code == 0
    png = out / "b_mid_preview.png"
    os.utime(png, ns=(1, 1))
    assert _report(str(out)).exit_code == 0
    assert png.stat().st_mtime_ns > 1


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_report_command_errors_are_one_line(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "nothing"
    if kind == "empty":
        target.mkdir()
    res = _report(str(target))
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert not (target / "index.html").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_renders_in_headless_chromium(folder: tuple[Path, Path], tmp_path: Path) -> None:
    """A real browser draws the page: the screenshot is not blank (pixel variance) and shows the thumbnails."""
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium); the page is not rendered here")
    out, gt = folder
    assert _report(str(out), "--truth", str(gt)).exit_code == 0
    shot = tmp_path / "page.png"
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1200,900", (out / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(str(shot))[..., :3]
    assert img.shape[:2] == (900, 1200)
    assert img.std() > 0.05, "blank screenshot"
    # the thumbnails put colour on the page (the rest is black text on white)
    saturation = img.max(-1) - img.min(-1)
    assert (saturation > 0.3).mean() > 0.01
    # the DOM the browser built (not our HTML text): one case row per case, in triage order
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    rows = _Rows()
    rows.feed(dom.stdout)
    assert sorted(rows.names) == sorted(CASES), dom.stderr[-2000:]
    assert rows.names == sorted(CASES, key=CASES.__getitem__, reverse=True)
    print(f"headless Chromium: screenshot {shot} ({img.shape[1]}x{img.shape[0]}), {len(rows.names)} case rows")
