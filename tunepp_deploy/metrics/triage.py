r"""Case-level use of uncertainty: triage of failed cases and out-of-distribution detection.

**Case score**: one number per case, higher = review first. The toolkit uses the mean total
uncertainty over the predicted foreground (the ``triage_score`` of ``tunepp infer``'s report; the
mean over all voxels when nothing is predicted), :func:`case_score`.

**Failure** (configurable): a case fails when its mean foreground Dice is below ``dice_threshold``
(default 0.8) and/or when any label has a non-zero Betti error; either criterion can be switched off.

**Triage curve**: cases are reviewed in decreasing score; after reviewing ``k`` of N cases the
curve is at ``(k / N, failures found / all failures)``. Within a group of equal scores the found
count is its expectation under a random order (as in :mod:`tunepp_deploy.metrics.ranking`), and
between the N + 1 points the curve is linear, so **triage@f** (the seed's "78% of failures at 25%
budget" is triage@0.25) is defined for any budget f, also when f N is not an integer. NaN without
failures. A random order gives triage@f = f on average.

**OOD AUROC**: the AUROC of the case score for separating shifted cases (positives) from
in-distribution ones (negatives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunepp_deploy.metrics.ranking import auroc, tie_expected_cumsum

DEFAULT_DICE_THRESHOLD = 0.8
DEFAULT_BUDGET = 0.25


def case_score(total_uncertainty: np.ndarray, pred: np.ndarray) -> float:
    """Mean total uncertainty over the predicted foreground (all voxels if none)."""
    u = np.asarray(total_uncertainty, np.float64)
    fg = np.asarray(pred) > 0
    return float(u[fg].mean() if fg.any() else u.mean())


def case_failed(
    mean_dice: float, betti_err: np.ndarray | Sequence[int], dice_threshold: float | None = DEFAULT_DICE_THRESHOLD,
    betti: bool = True,
) -> bool:
    """Failure flag: Dice below ``dice_threshold`` (None = not used) or any Betti error (if ``betti``).

    A NaN Dice (no foreground anywhere) never fails on Dice.
    """
    bad_dice = dice_threshold is not None and np.isfinite(mean_dice) and mean_dice < dice_threshold
    bad_topo = betti and bool(np.any(np.asarray(betti_err) > 0))
    return bool(bad_dice or bad_topo)


@dataclass(frozen=True)
class FailureRule:
    """A case fails when its mean foreground Dice is below ``dice`` or its Betti error, ignoring
    predicted components under ``min_voxels`` voxels, exceeds ``betti_tolerance``.

    Not "any Betti error": with that rule every case of a short-trained model fails and a triage
    curve measures nothing (the v1 experiment's 15/15).
    """

    dice: float = 0.8
    betti_tolerance: int = 1
    min_voxels: int = 10

    def failed(self, mean_dice: float, betti_error_small_removed: int) -> bool:
        return bool(mean_dice < self.dice or betti_error_small_removed > self.betti_tolerance)

    def describe(self) -> str:
        return (f"mean foreground Dice < {self.dice} or Betti error (components under {self.min_voxels} voxels "
                f"removed) > {self.betti_tolerance}")


@dataclass(frozen=True)
class TriageCurve:
    """Fraction of cases reviewed (0, 1/N, ..., 1) and the fraction of failures found."""

    reviewed: np.ndarray
    found: np.ndarray
    failures: int

    def at(self, budget: float = DEFAULT_BUDGET) -> float:
        """Failures found at review fraction ``budget`` (linear between cases); NaN without failures."""
        if self.failures == 0:
            return float("nan")
        return float(np.interp(budget, self.reviewed, self.found))


def triage_curve(scores: Sequence[float], failed: Sequence[bool]) -> TriageCurve:
    """Triage curve of case ``scores`` for ``failed`` cases (module docstring)."""
    s = np.asarray(scores, np.float64)
    f = np.asarray(failed, bool)
    if s.shape != f.shape or s.ndim != 1:
        raise ValueError("scores and failed must be 1-D and of equal length")
    n, n_fail = s.size, int(f.sum())
    reviewed = np.arange(n + 1) / max(n, 1)
    if n == 0 or n_fail == 0:
        return TriageCurve(reviewed, np.zeros(n + 1), n_fail)
    order = np.argsort(-s, kind="stable")
    found = tie_expected_cumsum(-s[order], f[order]) / n_fail
    return TriageCurve(reviewed, np.r_[0.0, found], n_fail)


def ood_auroc(in_dist_scores: Sequence[float], shifted_scores: Sequence[float]) -> float:
    """AUROC of the case score for shifted (positive) vs in-distribution (negative) cases."""
    a = np.asarray(in_dist_scores, np.float64)
    b = np.asarray(shifted_scores, np.float64)
    return auroc(np.r_[a, b], np.r_[np.zeros(a.size, bool), np.ones(b.size, bool)])


__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_DICE_THRESHOLD",
    "FailureRule",
    "TriageCurve",
    "case_failed",
    "case_score",
    "ood_auroc",
    "triage_curve",
]
