r"""Topological correctness: Betti error per label, violation share, and the voxels of topological errors.

**Betti error** of label c: ``BE_c = sum_{k=0..2} |b_k(P_c) - b_k(T_c)|`` with ``b0`` components
(26-connected foreground), ``b1`` tunnels and ``b2`` cavities (6-connected background), from
:func:`tunepp_deploy.kernels.betti_per_label` — the standard digital-topology pairing, checked
against GUDHI in the kernel tests. Unlike the audited public code it is per label (not on the union
of all organs), ``b1`` is computed (not hard-coded 0) and ``b2`` counts cavities (not a 0/1 flag).

**Violation**: a case violates topology when ``BE_c > 0`` for any label c; the **violation share**
is the fraction of cases that do.

**Topological-error voxels** (what TAUS scores, :mod:`tunepp_deploy.metrics.taus`): the anomaly map
``A`` of the topology loss (:func:`tunepp_deploy.losses.complexity.anomaly_map`), per class —
spurious predicted components (touching no true voxel of the class), missed true components
(touched by no predicted voxel), the gap voxels of split organs and the bridges of merged ones, and
holes or cavities present in one of prediction/truth but filled in the other (3D cavities and the
2D holes of slices, which catch tunnels). Using the loss's own map means the metric scores exactly
what the topology term is trained to fix. Every such voxel is also a voxel error (pred != truth).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunepp_deploy.kernels import betti_error
from tunepp_deploy.losses.complexity import anomaly_map


def betti_error_per_label(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """``BE_c`` for labels 1..num_classes-1 (int64); :func:`betti_tables` also returns the Betti numbers."""
    return betti_tables(pred, true, num_classes)[0]


def betti_tables(pred: np.ndarray, true: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(BE per label, Betti table of pred [L, 3], Betti table of truth [L, 3])``, L = num_classes - 1."""
    res = betti_error(np.asarray(pred), np.asarray(true), num_labels=num_classes - 1)
    return res.per_label.astype(np.int64), res.betti_pred, res.betti_true


def has_violation(betti_err: np.ndarray) -> bool:
    """True when any label's Betti error is non-zero."""
    return bool(np.any(np.asarray(betti_err) > 0))


def violation_share(per_case_betti_err: Sequence[np.ndarray]) -> float:
    """Fraction of cases with any topological violation (NaN for no cases)."""
    if not per_case_betti_err:
        return float("nan")
    return float(np.mean([has_violation(b) for b in per_case_betti_err]))


def topological_error_mask(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Boolean map of topological-error voxels (module docstring)."""
    return anomaly_map(np.asarray(true), np.asarray(pred), num_classes) > 0


__all__ = ["betti_error_per_label", "betti_tables", "has_violation", "topological_error_mask", "violation_share"]
