"""The 95% Student-t interval of a mean, shared by every study summary and benchmark table.

Seeds and repeats are few (1-5), so the normal 1.96 would understate the interval by up to 6x
(t_{0.975,1} = 12.7); below two finite values there is no interval at all, and the tables must say
so rather than print ``± 0.000`` (which reads as "no spread").
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def finite_values(values: Iterable[float | None]) -> np.ndarray:
    """The finite entries of ``values`` as float64 (None, NaN and inf dropped: a metric a run lacks)."""
    return np.asarray([float(x) for x in values if x is not None and math.isfinite(float(x))], np.float64)


def _half_width(v: np.ndarray) -> float | None:
    from scipy.stats import t

    if v.size < 2:
        return None
    return float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def t_half_width(values: Iterable[float | None]) -> float | None:
    """Half-width ``t_{0.975, n-1} sd / sqrt(n)`` over the finite ``values``; None below two of them."""
    return _half_width(finite_values(values))


def mean_ci95(values: Iterable[float | None]) -> tuple[float, float | None, int]:
    """``(mean, half-width or None, n)`` over the finite ``values`` (mean NaN when there are none)."""
    v = finite_values(values)
    mean = float(v.mean()) if v.size else float("nan")
    return mean, _half_width(v), int(v.size)


def format_mean_ci(mean: float | None, half: float | None, n: int, spec: str = ".3f") -> str:
    """``"1.234 ± 0.010"``; ``"1.234 (n = 1, no interval)"`` below two values; ``"n/a"`` with none."""
    if mean is None or n == 0 or not math.isfinite(mean):
        return "n/a"
    if half is None or not math.isfinite(half) or n < 2:
        return f"{mean:{spec}} (n = {n}, no interval)"
    return f"{mean:{spec}} ± {half:{spec}}"
