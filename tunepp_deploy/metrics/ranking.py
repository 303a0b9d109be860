r"""How well an uncertainty score ranks errors: AUROC, AUPRC, risk-coverage, AURC and E-AURC.

Inputs are flat arrays: ``score`` (higher = more uncertain) and ``error`` (bool, True = the voxel or
case is wrong). Ties in ``score`` are handled so that no result depends on the order of equal
scores (the tests compare with scikit-learn, which uses the same conventions for AUROC/AUPRC).

**AUROC** = P(score of a random error > score of a random correct item) + 1/2 P(tie)
(the Mann-Whitney U statistic over n_pos * n_neg pairs), computed from mid-ranks:
``(sum of the mid-ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``.
Undefined (NaN) when either class is empty.

**AUPRC** (average precision) = sum_t (R_t - R_{t-1}) P_t over the distinct score thresholds t in
decreasing order, where P_t and R_t are precision and recall of "score >= t" — the step-wise
(not trapezoidal) area, ``sklearn.metrics.average_precision_score``'s definition. Its chance level
is the error rate. NaN without positives.

**Risk-coverage** (selective prediction, Geifman & El-Yaniv 2017): keep the ``k`` most confident
items (lowest score); coverage ``k / N``, risk = errors among them / k. Items with equal score
cannot be told apart, so inside a tie group of size ``g`` holding ``e`` errors the risk at a
partial count is its expectation under a random order of the group:
``risk(k) = (E_a + (k - a) e / g) / k`` for ``a < k <= a + g`` (``E_a`` errors before the group).

**AURC** = (1/N) sum_{k=1..N} risk(k): the mean risk over all coverages (lower is better).
**E-AURC** = AURC - AURC*, where AURC* is the AURC of an oracle score that ranks every error last:
``risk*(k) = max(0, k - (N - E)) / k`` — so E-AURC removes the part that only reflects the error
rate, and 0 means a perfect ranking. Values are fractions (not x100 or x1000).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def _flat(score: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score, dtype=np.float64).ravel()
    e = np.asarray(error).ravel().astype(bool)
    if s.shape != e.shape:
        raise ValueError(f"score has {s.size} items but error has {e.size}")
    if not np.isfinite(s).all():
        raise ValueError("score contains NaN or Inf")
    return s, e


def auroc(score: np.ndarray, error: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for detecting ``error`` (module docstring); NaN if undefined."""
    s, e = _flat(score, error)
    n_pos = int(e.sum())
    n_neg = e.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    u = ranks[e].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(score: np.ndarray, error: np.ndarray) -> float:
    """Average precision of ``score`` for ``error`` (step-wise, over distinct thresholds); NaN if no errors."""
    s, e = _flat(score, error)
    n_pos = int(e.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted, e_sorted = s[order], e[order]
    tp = np.cumsum(e_sorted)
    # the last index of each tie group is where "score >= t" is evaluated
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    tp_t = tp[last].astype(np.float64)
    precision = tp_t / (last + 1)
    recall = tp_t / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float((d_recall * precision).sum())


@dataclass(frozen=True)
class RiskCoverage:
    """Risk at every coverage ``k / N`` (k = 1..N) plus AURC and E-AURC (module docstring)."""

    coverage: np.ndarray
    risk: np.ndarray
    aurc: float
    eaurc: float
    error_rate: float

    def subsample(self, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """At most ``points`` evenly spaced (coverage, risk) pairs, for plots and JSON."""
        n = self.coverage.size
        idx = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(np.int64))
        return self.coverage[idx], self.risk[idx]


def tie_expected_cumsum(s_sorted: np.ndarray, e_sorted: np.ndarray) -> np.ndarray:
    """Expected cumulative error count at k = 1..N when each tie group is in random order."""
    n = s_sorted.size
    starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
    ends = np.r_[starts[1:], n]
    group_err = np.add.reduceat(e_sorted.astype(np.float64), starts)
    group_size = (ends - starts).astype(np.float64)
    before = np.r_[0.0, np.cumsum(group_err)[:-1]]
    gid = np.repeat(np.arange(starts.size), ends - starts)
    k = np.arange(1, n + 1, dtype=np.float64)
    return before[gid] + (k - starts[gid]) * group_err[gid] / group_size[gid]


def risk_coverage(score: np.ndarray, error: np.ndarray) -> RiskCoverage:
    """Risk-coverage curve of ``score`` (keep lowest scores first), AURC and E-AURC."""
    s, e = _flat(score, error)
    n = s.size
    if n == 0:
        raise ValueError("risk_coverage needs at least one item")
    order = np.argsort(s, kind="stable")
    cum_err = tie_expected_cumsum(s[order], e[order])
    k = np.arange(1, n + 1, dtype=np.float64)
    risk = cum_err / k
    n_err = int(e.sum())
    optimal = np.maximum(0.0, k - (n - n_err)) / k
    aurc = float(risk.mean())
    return RiskCoverage(k / n, risk, aurc, aurc - float(optimal.mean()), n_err / n)


__all__ = ["RiskCoverage", "auprc", "auroc", "risk_coverage", "tie_expected_cumsum"]
