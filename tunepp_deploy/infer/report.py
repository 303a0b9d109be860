"""The per-case JSON report: what was segmented, its topology, and where the model is unsure.

What a reader needs to triage a case without opening the maps:

* per label: volume (ml), Betti numbers ``(b0 components, b1 tunnels, b2 cavities)`` from the
  topology kernels, mean total / epistemic / aleatoric uncertainty inside it;
* per label, every connected component (26-connectivity, the kernels' foreground convention) and
  every enclosed cavity (6-connected background not reaching the border) with size, centroid in
  voxel and world (scanner mm, the input's affine) coordinates and mean total uncertainty. A
  component is **flagged** when its mean total uncertainty exceeds ``flag_threshold`` or when it
  is not its label's largest component (a detached fragment — the failure TUNE++ is about); a
  cavity when its surrounding uncertainty (the cavity voxels themselves) exceeds the threshold;
* a case-level **triage score**: mean total uncertainty over the predicted foreground (all
  non-background voxels) — background is easy and would dilute the score — plus the fraction of
  foreground voxels above the threshold.

All statistics are computed on the input grid (after resampling back), so voxel sizes and world
coordinates refer to the file the user gave.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from tunepp_deploy.kernels import betti_per_label, connected_components

#: Components/cavities listed per label (largest first); the counts are always complete.
MAX_LISTED = 50


def _world(affine: np.ndarray, ijk: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in (affine[:3, :3] @ ijk + affine[:3, 3])]


def _mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    return round(float(values[mask].mean()), 6) if mask.any() else None


def _regions(
    labels: np.ndarray, count: int, total: np.ndarray, affine: np.ndarray, voxel_ml: float, offset: np.ndarray
) -> list[dict[str, Any]]:
    """Size, centroid and mean uncertainty of regions 1..count of ``labels`` (a crop at ``offset``)."""
    if count == 0:
        return []
    idx = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(total), labels, idx)
    means = ndimage.mean(total, labels, idx)
    centroids = ndimage.center_of_mass(np.ones_like(total), labels, idx)
    out = []
    for n, m, c in zip(sizes, means, centroids, strict=True):
        ijk = np.asarray(c) + offset
        out.append({
            "voxels": int(n),
            "volume_ml": round(float(n) * voxel_ml, 4),
            "centroid_voxel": [round(float(v), 2) for v in ijk],
            "centroid_world_mm": _world(affine, ijk),
            "mean_total": round(float(m), 6),
        })
    return out


def _label_entry(
    seg: np.ndarray, label: int, name: str, maps: dict[str, np.ndarray], betti: np.ndarray, affine: np.ndarray,
    voxel_ml: float, threshold: float,
) -> dict[str, Any]:
    mask = seg == label
    entry: dict[str, Any] = {
        "label": label,
        "name": name,
        "voxels": int(mask.sum()),
        "volume_ml": round(float(mask.sum()) * voxel_ml, 4),
        "betti": [int(b) for b in betti],
        **{f"mean_{k}": _mean(v, mask) for k, v in maps.items()},
        "components": [],
        "cavities": [],
    }
    if not mask.any():
        entry["n_components"] = entry["n_cavities"] = 0
        return entry
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    # one voxel of margin so that background touching the box edge counts as outside
    lo = np.array([max(s.start - 1, 0) for s in box])
    hi = np.array([min(s.stop + 1, n) for s, n in zip(box, seg.shape, strict=True)])
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    m, tot = mask[crop], maps["total"][crop]

    comp, n_comp = connected_components(m, connectivity=26)
    comps = _regions(np.asarray(comp), n_comp, tot, affine, voxel_ml, lo)
    largest = max(range(len(comps)), key=lambda i: comps[i]["voxels"])
    for i, c in enumerate(comps):
        reasons = []
        if c["mean_total"] > threshold:
            reasons.append("uncertain")
        if i != largest:
            reasons.append("not_largest")
        c["flagged"] = bool(reasons)
        c["reasons"] = reasons

    # the padding ring is one 6-connected background component: the outside; all others are cavities
    bg_full, n_bg = connected_components(np.pad(~m, 1, constant_values=True), connectivity=6)
    bg_full = np.asarray(bg_full)
    outside = int(bg_full[0, 0, 0])
    bg = bg_full[1:-1, 1:-1, 1:-1]
    enclosed = [v for v in range(1, n_bg + 1) if v != outside]
    relabel = np.zeros(n_bg + 1, np.int32)
    relabel[enclosed] = np.arange(1, len(enclosed) + 1)
    cavs = _regions(relabel[bg], len(enclosed), tot, affine, voxel_ml, lo)
    for c in cavs:
        c["flagged"] = c["mean_total"] > threshold
        c["reasons"] = ["uncertain"] if c["flagged"] else []

    entry["n_components"], entry["n_cavities"] = len(comps), len(cavs)
    entry["components"] = sorted(comps, key=lambda c: -c["voxels"])[:MAX_LISTED]
    entry["cavities"] = sorted(cavs, key=lambda c: -c["voxels"])[:MAX_LISTED]
    return entry


def build_report(
    seg: np.ndarray,
    maps: dict[str, np.ndarray],
    classes: list[str],
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    flag_threshold: float,
) -> dict[str, Any]:
    """Labels, topology, flagged regions and the triage score (module docstring).

    ``maps`` holds ``total``, ``epistemic`` and ``aleatoric`` (and optionally more) on ``seg``'s grid.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    betti = betti_per_label(seg, num_labels=len(classes) - 1)
    labels = [
        _label_entry(seg, i, classes[i], maps, betti[i - 1], affine, voxel_ml, flag_threshold)
        for i in range(1, len(classes))
    ]
    fg = seg > 0
    total = maps["total"]
    case = {
        "triage_score": _mean(total, fg) or 0.0,
        "foreground_fraction_uncertain": round(float((total[fg] > flag_threshold).mean()), 6) if fg.any() else 0.0,
        "max_total_uncertainty": round(float(total.max()), 6),
        **{f"foreground_mean_{k}": _mean(v, fg) for k, v in maps.items() if k != "total"},
        "flagged_regions": sum(
            sum(1 for r in lab[kind] if r["flagged"]) for lab in labels for kind in ("components", "cavities")
        ),
        "flag_threshold": flag_threshold,
    }
    return {"case": case, "labels": labels}


__all__ = ["MAX_LISTED", "build_report"]
