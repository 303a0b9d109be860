"""Betti numbers of binary and multi-label segmentations, and the Betti-number error.

Definitions (the standard digital-topology pairing, so that Alexander duality holds):

* 3D: foreground 26-connected, background 6-connected.
  ``b0`` = foreground components; ``b2`` = background components enclosed by the foreground,
  i.e. components of the background that do not touch the border (equivalently: pad with
  background and drop the one outside component); ``chi`` = Euler characteristic of the union of
  closed foreground cubes; ``b1 = b0 + b2 - chi`` (``chi = b0 - b1 + b2``).
* 2D: foreground 8-connected, background 4-connected; ``b0`` = components, ``b1`` = holes.

These agree with the persistent homology of the cubical complex of closed foreground voxels (what
GUDHI computes from top-dimensional cells), which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from . import backends
from .api import _prepare
from .validate import as_labels, is_cuda_array


def _betti3(mod: Any, mask3: Any, ndim: int) -> tuple[int, ...]:
    b0 = mod.count3(mask3, 26)
    if ndim == 2:
        b1 = mod.cavities3(mask3, 6, True)
        return (int(b0), int(b1))
    b2 = mod.cavities3(mask3, 6, False)
    chi = mod.euler3(mask3, 26)
    return (int(b0), int(b0) + int(b2) - int(chi), int(b2))


def betti_numbers(mask: Any, backend: str = "auto") -> tuple[int, ...]:
    """Return ``(b0, b1, b2)`` of a 3D mask or ``(b0, b1)`` of a 2D mask (see module docstring)."""
    mod, mask3, ndim = _prepare(mask, backend)
    return _betti3(mod, mask3, ndim)


def betti_per_label(labels: Any, num_labels: int | None = None, backend: str = "auto") -> np.ndarray:
    """Betti numbers of each label of a multi-label segmentation, as an int64 array ``(L, k)``.

    Row ``i`` holds label ``i + 1`` (labels ``1..L``; background 0 has no row), ``k`` is 3 in 3D
    and 2 in 2D. ``L`` defaults to the largest label present; labels that are absent get zeros,
    so ``num_labels`` lets two volumes with different label sets share a layout. Labels above
    ``num_labels`` are ignored.

    On the CPU each label is cut to its bounding box first (``scipy.ndimage.find_objects``); a
    crop loses nothing because outside the box the label is background and cavities are defined
    by not touching the border. GPU arrays are processed whole, one label at a time.
    """
    if is_cuda_array(labels):
        return _betti_per_label_device(labels, num_labels, backend)
    lab = as_labels(labels)
    ndim = lab.ndim
    L = int(lab.max(initial=0)) if num_labels is None else int(num_labels)
    out = np.zeros((max(L, 0), 3 if ndim == 3 else 2), np.int64)
    if L <= 0:
        return out
    _name, mod = backends.get(backend, lab)
    boxes = ndi.find_objects(lab, max_label=L)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        crop = (lab[box] == i + 1).view(np.uint8)
        crop3 = crop[None] if ndim == 2 else crop
        out[i] = _betti3(mod, np.ascontiguousarray(crop3), ndim)
    return out


def _betti_per_label_device(labels: Any, num_labels: int | None, backend: str) -> np.ndarray:
    name, mod = backends.get(backend, labels)
    ndim = len(labels.shape)
    L = int(mod.max_label(labels)) if num_labels is None else int(num_labels)
    out = np.zeros((max(L, 0), 3 if ndim == 3 else 2), np.int64)
    for i in range(L):
        mask = mod.equal_mask(labels, i + 1)
        out[i] = betti_numbers(mask, backend=name)
    return out


@dataclass(frozen=True)
class BettiError:
    """Per-label topology error between a prediction and a reference.

    ``per_label[i]`` is ``sum_k |b_k(pred) - b_k(true)|`` for label ``i + 1``; ``mean`` averages
    it over the labels ``1..L`` (0.0 when ``L == 0``). The Betti tables are kept for reporting.
    """

    per_label: np.ndarray
    mean: float
    betti_pred: np.ndarray
    betti_true: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (plain lists and floats)."""
        return {
            "per_label": self.per_label.tolist(),
            "mean": self.mean,
            "betti_pred": self.betti_pred.tolist(),
            "betti_true": self.betti_true.tolist(),
        }


def betti_error(pred_labels: Any, true_labels: Any, num_labels: int | None = None,
                backend: str = "auto") -> BettiError:
    """Compare the per-label Betti numbers of two segmentations of the same shape.

    ``L`` defaults to the largest label in either volume, so a label missing from one side
    counts as an error of its full Betti numbers.
    """
    p_shape = tuple(getattr(pred_labels, "shape", np.shape(pred_labels)))
    t_shape = tuple(getattr(true_labels, "shape", np.shape(true_labels)))
    if p_shape != t_shape:
        from tunepp_deploy.errors import DataError

        raise DataError(f"pred and true label volumes differ in shape: {p_shape} vs {t_shape}")
    if num_labels is None:
        bp = betti_per_label(pred_labels, None, backend)
        bt = betti_per_label(true_labels, None, backend)
        L = max(len(bp), len(bt))
        bp = _grow(bp, L)
        bt = _grow(bt, L)
    else:
        bp = betti_per_label(pred_labels, num_labels, backend)
        bt = betti_per_label(true_labels, num_labels, backend)
    per = np.abs(bp - bt).sum(axis=1)
    return BettiError(per_label=per, mean=float(per.mean()) if len(per) else 0.0, betti_pred=bp, betti_true=bt)


def _grow(table: np.ndarray, L: int) -> np.ndarray:
    if len(table) == L:
        return table
    out = np.zeros((L, table.shape[1]), table.dtype)
    out[: len(table)] = table
    return out
