"""Topology kernels: exact EDT, connected components, Euler characteristic and Betti numbers.

Backends: ``numba`` (CPU, default for NumPy arrays), ``numba-cuda`` and ``cupy`` (GPU, default for
device arrays) and ``scipy`` (reference). See :func:`available_backends` for what works here.
"""

from __future__ import annotations

from .api import connected_components, distance_transform, euler_characteristic, signed_distance
from .backends import BACKENDS, BackendUnavailableError, available_backends
from .betti import BettiError, betti_error, betti_numbers, betti_per_label

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "BettiError",
    "available_backends",
    "betti_error",
    "betti_numbers",
    "betti_per_label",
    "connected_components",
    "distance_transform",
    "euler_characteristic",
    "signed_distance",
]
