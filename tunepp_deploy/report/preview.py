"""One thumbnail per case, ``NAME_preview.png``: what a reader looks at before opening the maps.

Two panels of one axial slice (the last voxel axis): the scan in grey with the segmentation laid over
it, and the total uncertainty (the method's flag map where it has no ``total``); on both, the flagged
components of the case report are outlined in yellow. The slice goes through the centroid of the
largest flagged component, so the thumbnail shows what made the case rank high; without flags, the
slice with the most foreground.

Everything is read from the case report and the files it lists (``outputs``), plus the scan named
by its ``input`` when that file still exists on the same grid (otherwise the left panel shows the
segmentation alone). Flagged components are found again by labelling the segmentation with the
report's 26-connectivity and matching each report entry by voxel count and centroid. Matplotlib's
object API is used (no pyplot: no global figure state, no display needed); the PNG is written
atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from tunepp_deploy.data.nifti import load_volume, write_atomic

#: Width x height of a thumbnail in inches at :data:`DPI` (two square panels and their titles).
SIZE_IN = (6.4, 3.4)
DPI = 80
#: Segmentation overlay colours per label (cycled), RGBA.
LABEL_COLOURS = ((0.90, 0.25, 0.20, 0.45), (0.20, 0.55, 0.95, 0.45), (0.20, 0.80, 0.35, 0.45),
                 (0.95, 0.65, 0.10, 0.45), (0.70, 0.35, 0.90, 0.45), (0.10, 0.80, 0.80, 0.45))


def preview_path(folder: Path, name: str) -> Path:
    """``NAME_preview.png`` next to the case report."""
    return folder / f"{name}_preview.png"


def uncertainty_key(report: dict[str, Any]) -> str | None:
    """The map shown: ``total`` when the case has one, else the report's ``flag_map``."""
    outputs = report.get("outputs") or {}
    if "total" in outputs:
        return "total"
    flag = report.get("flag_map")
    return flag if isinstance(flag, str) and flag in outputs else None


def flagged_masks(seg: np.ndarray, report: dict[str, Any]) -> list[tuple[np.ndarray, list[float], int]]:
    """``(mask, centroid_voxel, voxels)`` of every flagged component the report lists, found again in ``seg``."""
    found = []
    structure = np.ones((3, 3, 3), bool)
    for lab in report.get("labels") or []:
        flagged = [c for c in lab.get("components") or [] if c.get("flagged")]
        if not flagged:
            continue
        comp, n = ndimage.label(seg == int(lab["label"]), structure=structure)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(np.ones(seg.shape), comp, idx)
        centres = np.asarray(ndimage.center_of_mass(np.ones(seg.shape), comp, idx)).reshape(n, 3)
        for c in flagged:
            same = np.nonzero(sizes == c["voxels"])[0]
            if not len(same):
                continue
            dist = np.linalg.norm(centres[same] - np.asarray(c["centroid_voxel"], float), axis=1)
            found.append((comp == idx[same[int(dist.argmin())]], list(c["centroid_voxel"]), int(c["voxels"])))
    return found


def pick_slice(seg: np.ndarray, flagged: list[tuple[np.ndarray, list[float], int]]) -> int:
    """The axial slice shown (module docstring)."""
    if flagged:
        _, centre, _ = max(flagged, key=lambda f: f[2])
        return int(np.clip(round(centre[2]), 0, seg.shape[2] - 1))
    per_slice = (seg > 0).sum((0, 1))
    return int(per_slice.argmax()) if per_slice.any() else seg.shape[2] // 2


def _scan(report: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray | None:
    src = report.get("input")
    if not isinstance(src, str) or not Path(src).is_file():
        return None
    try:
        vol = load_volume(Path(src))
    except Exception:  # a scan moved, replaced or unreadable: the preview goes on without it
        return None
    return vol.array if vol.shape == shape else None


def render_preview(folder: Path, report: dict[str, Any]) -> Path:
    """Draw and write ``NAME_preview.png`` for one case report (module docstring); returns its path.

    Raises :class:`~tunepp_deploy.errors.DataError` when the segmentation cannot be read.
    """
    from matplotlib.figure import Figure

    name = str(report["name"])
    outputs = report.get("outputs") or {}
    seg = load_volume(folder / str(outputs.get("seg", f"{name}_seg.nii.gz"))).array.astype(np.int64)
    key = uncertainty_key(report)
    unc = load_volume(folder / str(outputs[key])).array if key else None
    flagged = flagged_masks(seg, report)
    k = pick_slice(seg, flagged)
    scan = _scan(report, seg.shape)

    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    left, right = fig.subplots(1, 2)
    if scan is not None:
        sl = scan[:, :, k].T
        lo, hi = np.percentile(sl, [1, 99]) if sl.size else (0, 1)
        left.imshow(sl, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
    else:
        left.imshow(np.zeros(seg.shape[:2]).T, cmap="gray", vmin=0, vmax=1, origin="lower")
    overlay = np.zeros((*seg.shape[:2], 4))
    s = seg[:, :, k]
    for lab in range(1, int(s.max()) + 1 if s.size else 1):
        overlay[s == lab] = LABEL_COLOURS[(lab - 1) % len(LABEL_COLOURS)]
    left.imshow(overlay.transpose(1, 0, 2), origin="lower", interpolation="nearest")
    left.set_title(f"scan + segmentation (z={k})" if scan is not None else f"segmentation (z={k}; scan not found)",
                   fontsize=8)
    if unc is not None:
        shown = right.imshow(unc[:, :, k].T, cmap="magma", origin="lower", vmin=0.0,
                             vmax=max(float(unc.max()), 1e-6))
        fig.colorbar(shown, ax=right, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        right.set_title(f"{key} uncertainty", fontsize=8)
    else:
        right.set_title("no uncertainty map", fontsize=8)
    for mask, _, _ in flagged:
        m = mask[:, :, k]
        if m.any():
            for ax in (left, right):
                ax.contour(m.T.astype(float), levels=[0.5], colors="yellow", linewidths=1.0, origin="lower")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    out = preview_path(folder, name)
    write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI), suffix=".png")
    return out


def ensure_preview(folder: Path, report: dict[str, Any], report_file: Path) -> Path:
    """The case's preview, drawn again only when missing or older than its report (a redone case)."""
    out = preview_path(folder, str(report["name"]))
    if out.is_file() and out.stat().st_mtime_ns >= report_file.stat().st_mtime_ns:
        return out
    return render_preview(folder, report)


__all__ = ["ensure_preview", "flagged_masks", "pick_slice", "preview_path", "render_preview", "uncertainty_key"]
