r"""Topology post-processing baseline: what connected-component and cavity rules alone can fix.

A topology-aware network is only worth its extra training cost if it beats the cheap fix applied
after any network. This module is that fix, driven by prior Betti numbers ``(b0, b1, b2)`` per
label (the phantoms' designed values, :func:`betti_prior_from_dataset`):

1. **Components** (``b0``): keep the ``b0`` largest 26-connected components of the label; the
   other voxels become background 0. Ties in size keep the component met first in raster order,
   so the result is deterministic.
2. **Cavities** (``b2``): a cavity of label c that can be filled without touching another organ is
   a 6-connected piece of background that reaches neither the volume border nor any voxel of a
   label other than c. Of those pieces the ``b2`` largest are kept and the rest are set to c
   (``b2 == 0``: all are filled). Only background voxels change; a cavity that holds another
   organ is left alone, because filling around that organ would not remove the cavity and
   overwriting the organ is not this baseline's call.
3. **Tunnels** (``b1``): not touched. Closing a spurious tunnel means adding a spanning surface
   (a minimum cut), and opening a missing one means removing voxels; either can destroy a correct
   boundary, and no conservative rule does it from the prior alone. The baseline therefore never
   changes b1 except as a side effect of steps 1-2 (a removed fragment takes its tunnels along; a
   filled torus-shaped cavity takes the tunnel it caused).

Missing structure is not invented: a label predicted with fewer components, or a hollow organ
predicted solid, stays as it is. Steps run in the order 1, 2 over all labels, so fragments removed
in step 1 can become part of a cavity that step 2 fills. :func:`remove_small_components` is the
separate size filter used to report "Betti error without components under k voxels".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from tunepp_deploy.errors import DataError
from tunepp_deploy.kernels import connected_components


def _check_seg(seg: np.ndarray, num_classes: int) -> np.ndarray:
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise DataError(f"topology post-processing needs a 3-D label volume, got shape {seg.shape}")
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        raise DataError(f"topology post-processing needs integer labels, got dtype {seg.dtype}")
    if int(num_classes) < 1:
        raise DataError(f"topology post-processing: num_classes must be >= 1, got {num_classes}")
    if seg.size and (int(seg.min()) < 0 or int(seg.max()) >= num_classes):
        raise DataError(
            f"topology post-processing: labels span {int(seg.min())}..{int(seg.max())}, outside 0..{num_classes - 1}"
        )
    return seg


def _label_components(seg: np.ndarray, num_classes: int) -> list[tuple[int, tuple[slice, ...], np.ndarray, np.ndarray]]:
    """Per present label: ``(label, bounding box, component ids in the box, voxel count per id)``."""
    out = []
    boxes = ndi.find_objects(seg.astype(np.int64, copy=False), max_label=num_classes - 1)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        lab, n = connected_components(seg[box] == i + 1, 26)
        lab = np.asarray(lab)
        out.append((i + 1, box, lab, np.bincount(lab.ravel(), minlength=n + 1)))
    return out


def remove_small_components(seg: np.ndarray, num_classes: int, min_voxels: int) -> np.ndarray:
    """Set to background every 26-connected component of each label with fewer than ``min_voxels``.

    Labels ``1..num_classes-1`` are treated separately (a component of one label is a maximal
    26-connected set of voxels of that label). Returns a new array of ``seg``'s dtype.
    """
    seg = _check_seg(seg, num_classes)
    if int(min_voxels) != min_voxels or min_voxels < 0:
        raise DataError(f"remove_small_components: min_voxels must be a non-negative integer, got {min_voxels}")
    out = seg.copy()
    for _c, box, lab, sizes in _label_components(seg, num_classes):
        small = sizes < min_voxels
        small[0] = False
        if small.any():
            out[box][small[lab]] = 0
    return out


def keep_largest_components(seg: np.ndarray, num_classes: int, counts: Mapping[int, int]) -> np.ndarray:
    """Keep the ``counts[c]`` largest 26-connected components of each label c in ``counts``.

    Other voxels of c become background; labels not in ``counts`` are untouched. Equal sizes keep
    the component that comes first in raster order of its first voxel.
    """
    seg = _check_seg(seg, num_classes)
    out = seg.copy()
    for c, box, lab, sizes in _label_components(seg, num_classes):
        if c not in counts:
            continue
        keep_n = int(counts[c])
        n = sizes.size - 1
        if n <= keep_n:
            continue
        order = np.argsort(-sizes[1:], kind="stable") + 1  # largest first, raster order on ties
        drop = np.zeros(n + 1, bool)
        drop[order[keep_n:]] = True
        out[box][drop[lab]] = 0
    return out


def fill_enclosed_background(seg: np.ndarray, num_classes: int, keep: Mapping[int, int]) -> np.ndarray:
    """For each label c in ``keep``, fill all but the ``keep[c]`` largest background pieces enclosed by c.

    A piece is a 6-connected component of background (0) that touches neither the volume border
    nor any voxel of a label other than c (module docstring, step 2). Filled voxels become c; no
    voxel of a label is ever changed.
    """
    seg = _check_seg(seg, num_classes)
    out = seg.copy()
    if not keep:
        return out
    lab, n = connected_components(seg == 0, 6)
    lab = np.asarray(lab, np.int64)
    if n == 0:
        return out
    border = np.zeros(n + 1, bool)
    for ax in range(3):
        for end in (0, -1):
            border[np.unique(np.take(lab, end, axis=ax))] = True
    # Which labels each background piece touches across a face (pieces are maximal, so every
    # face neighbour outside a piece is a labelled voxel).
    codes = []
    K = int(num_classes)
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        for a, b in ((tuple(lo), tuple(hi)), (tuple(hi), tuple(lo))):
            pa, sb = lab[a], seg[b]
            m = (pa > 0) & (sb > 0)
            codes.append(np.unique(pa[m] * K + sb[m].astype(np.int64)))
    pairs = np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)
    piece, neighbour = pairs // K, pairs % K
    n_labels = np.bincount(piece, minlength=n + 1)
    only = np.zeros(n + 1, np.int64)
    only[piece] = neighbour  # meaningful where n_labels == 1
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    fill = np.zeros(n + 1, np.int64)
    for c, k in keep.items():
        cand = np.nonzero((n_labels == 1) & (only == c) & ~border)[0]
        cand = cand[cand > 0]
        if cand.size <= int(k):
            continue
        order = cand[np.argsort(-sizes[cand], kind="stable")]
        fill[order[int(k) :]] = c
    if fill.any():
        target = fill[lab]
        sel = target > 0
        out[sel] = target[sel].astype(out.dtype)
    return out


def _check_prior(betti_prior: Mapping[int, Sequence[int]], num_classes: int) -> dict[int, tuple[int, int, int]]:
    prior: dict[int, tuple[int, int, int]] = {}
    for c, b in betti_prior.items():
        if int(c) != c or not 1 <= int(c) < num_classes:
            raise DataError(f"betti prior: label {c!r} is outside 1..{num_classes - 1}")
        vals = tuple(int(v) for v in b)
        if len(vals) != 3 or min(vals) < 0:
            raise DataError(f"betti prior of label {c}: need three non-negative counts (b0, b1, b2), got {b!r}")
        prior[int(c)] = vals  # type: ignore[assignment]
    return prior


def topology_postprocess(seg: np.ndarray, num_classes: int,
                         betti_prior: Mapping[int, tuple[int, int, int]]) -> np.ndarray:
    """The post-processing baseline (module docstring): keep ``b0`` components, fill extra cavities.

    Labels without a prior are left untouched. Returns a new array of ``seg``'s dtype.
    """
    prior = _check_prior(betti_prior, num_classes)
    out = keep_largest_components(seg, num_classes, {c: b[0] for c, b in prior.items()})
    return fill_enclosed_background(out, num_classes, {c: b[2] for c, b in prior.items()})


def betti_prior_from_dataset(dataset_json_path_or_dict: str | Path | Mapping[str, Any], case_name: str,
                             classes: Sequence[str] | None = None) -> dict[int, tuple[int, int, int]]:
    """Designed Betti numbers of one case: ``{label: (b0, b1, b2)}`` from ``cases[NAME]['betti']``.

    ``classes[i]`` names label i (index 0, the background, is skipped); ``None`` takes the
    dataset's own ``classes`` list. The argument may be the parsed dataset.json, its path, or the
    dataset folder that holds it. Every named foreground class must have an entry.
    """
    if isinstance(dataset_json_path_or_dict, Mapping):
        meta: Mapping[str, Any] = dataset_json_path_or_dict
        where = "dataset dict"
    else:
        path = Path(dataset_json_path_or_dict)
        if path.is_dir():
            path = path / "dataset.json"
        where = str(path)
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DataError(f"{where}: no such dataset.json") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if classes is None:
        classes = meta.get("classes")
        if not isinstance(classes, list):
            raise DataError(f"{where}: no 'classes' list; pass classes= explicitly")
    case = (meta.get("cases") or {}).get(case_name)
    if not isinstance(case, Mapping) or not isinstance(case.get("betti"), Mapping):
        raise DataError(f"{where}: case {case_name!r} has no 'betti' entry")
    betti = case["betti"]
    prior: dict[int, tuple[int, int, int]] = {}
    for label, name in enumerate(classes):
        if label == 0:
            continue
        if name not in betti:
            raise DataError(f"{where}: case {case_name!r} has no Betti numbers for class {name!r}")
        vals = tuple(int(v) for v in betti[name])
        if len(vals) != 3:
            raise DataError(f"{where}: case {case_name!r} class {name!r}: expected [b0, b1, b2], got {betti[name]!r}")
        prior[label] = vals  # type: ignore[assignment]
    return prior


__all__ = [
    "betti_prior_from_dataset",
    "fill_enclosed_background",
    "keep_largest_components",
    "remove_small_components",
    "topology_postprocess",
]
