"""CPU backend (numba, parallel): the default for NumPy arrays."""

from __future__ import annotations

import numpy as np

from .backends import cavities_from_labels, signed_from_edts
from .ccl_numba import label3
from .edt_numba import edt3 as _edt3
from .euler_numba import euler3

__all__ = ["cavities3", "count3", "edt3", "euler3", "label3", "signed3"]


def edt3(mask3: np.ndarray, spacing3: tuple[float, float, float]) -> np.ndarray:
    return _edt3(mask3, spacing3)


def cavities3(mask3: np.ndarray, connectivity: int, planar: bool) -> int:
    labels, count = label3(mask3, connectivity, invert=True)
    return cavities_from_labels(labels, count, planar)


def signed3(mask3: np.ndarray, spacing3: tuple[float, float, float]) -> np.ndarray:
    return signed_from_edts(edt3(mask3, spacing3), edt3(1 - mask3, spacing3), mask3)


def count3(mask3: np.ndarray, connectivity: int) -> int:
    return label3(mask3, connectivity)[1]
