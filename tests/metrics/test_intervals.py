"""tunepp_deploy.metrics.intervals against scipy's own t-interval, and the "no interval" cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tunepp_deploy.metrics.intervals import format_mean_ci, mean_ci95, t_half_width


@pytest.mark.parametrize("n", [2, 3, 5, 12, 40])
def test_half_width_matches_scipy_t_interval(n: int) -> None:
    v = np.random.default_rng(n).normal(3.0, 0.7, n)
    lo, hi = stats.t.interval(0.95, n - 1, loc=v.mean(), scale=stats.sem(v))
    mean, half, count = mean_ci95(list(v))
    assert count == n and mean == pytest.approx(v.mean(), rel=1e-12)
    assert half == pytest.approx((hi - lo) / 2, rel=1e-10)


def test_non_finite_and_missing_values_are_dropped() -> None:
    v = [1.0, None, float("nan"), 2.0, float("inf"), 4.0]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean([1, 2, 4]), scale=stats.sem([1, 2, 4]))
    assert mean_ci95(v) == pytest.approx((7 / 3, (hi - lo) / 2, 3))


def test_fewer_than_two_values_have_no_interval() -> None:
    assert t_half_width([5.0]) is None and t_half_width([]) is None
    mean, half, n = mean_ci95([None, 5.0])
    assert (mean, half, n) == (5.0, None, 1)
    assert math.isnan(mean_ci95([])[0])
    assert format_mean_ci(5.0, None, 1) == "5.000 (n = 1, no interval)"
    assert format_mean_ci(float("nan"), None, 0) == "n/a"
    assert format_mean_ci(1.23456, 0.0123, 3, ".2f") == "1.23 ± 0.01"
