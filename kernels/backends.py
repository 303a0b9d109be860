"""Backend registry: which implementations work here, and which one a call should use.

Every backend is a real implementation; a backend that cannot run raises
:class:`BackendUnavailableError` instead of quietly handing the work to another one, so a benchmark
or a deployment never measures something other than what it asked for.

All backends share one small internal interface on C-ordered 3D volumes (2D masks are processed as
a single slice ``(1, H, W)``):

* ``edt3(mask3, spacing3)`` -> float32 distances,
* ``label3(mask3, connectivity, invert=False)`` -> (int32 labels, count),
* ``euler3(mask3, connectivity)`` -> int,
* ``cavities3(mask3, connectivity, planar)`` -> number of components of ``mask3 == 0`` that do
  not touch the volume border (for ``planar`` inputs the two z faces are not a border).

Arrays stay where they came from: CuPy / numba device arrays are processed and returned on the
GPU; NumPy arrays are processed on the CPU unless a GPU backend is named explicitly.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import numpy as np

from tunepp_deploy.errors import DataError, TuneppError

from .validate import is_cuda_array, is_cupy_array

BACKENDS = ("numba", "numba-cuda", "cupy", "scipy")


class BackendUnavailableError(TuneppError, RuntimeError):
    """The requested backend cannot run in this environment (the message says why)."""


def _check_numba() -> tuple[bool, str]:
    try:
        import numba
    except Exception as e:  # pragma: no cover - numba is a hard dependency
        return False, f"numba import failed: {e}"
    return True, f"numba {numba.__version__}, {numba.get_num_threads()} threads"


def _check_scipy() -> tuple[bool, str]:
    try:
        import scipy
    except Exception as e:  # pragma: no cover - scipy is a hard dependency
        return False, f"scipy import failed: {e}"
    return True, f"scipy {scipy.__version__} (reference implementation)"


def _check_numba_cuda() -> tuple[bool, str]:
    try:
        from numba import cuda
    except Exception as e:
        return False, f"numba.cuda import failed: {e}"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True, "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but very slow"
    try:
        if cuda.is_available():
            return True, f"CUDA device: {cuda.get_current_device().name!r}"
        return False, "numba.cuda found no usable CUDA driver/device"
    except Exception as e:
        return False, f"numba.cuda device query failed: {e}"


def _check_cupy() -> tuple[bool, str]:
    try:
        import cupy
    except Exception as e:
        return False, f"cupy is not installed ({type(e).__name__}); pip install cupy-cuda12x or cupy-cuda13x"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"cupy {cupy.__version__} found no CUDA device: {type(e).__name__}: {e}"
    if n < 1:
        return False, f"cupy {cupy.__version__} found no CUDA device"
    return True, f"cupy {cupy.__version__}, {n} device(s)"


_CHECKS = {
    "numba": _check_numba,
    "numba-cuda": _check_numba_cuda,
    "cupy": _check_cupy,
    "scipy": _check_scipy,
}
_MODULES = {
    "numba": "numba_backend",
    "numba-cuda": "numba_cuda_backend",
    "cupy": "cupy_backend",
    "scipy": "scipy_backend",
}
_cache: dict[str, tuple[bool, str]] = {}


def available_backends(refresh: bool = False) -> dict[str, tuple[bool, str]]:
    """Map each backend name to ``(usable, reason)``; probes are cached per process."""
    for name, check in _CHECKS.items():
        if refresh or name not in _cache:
            _cache[name] = check()
    return dict(_cache)


def resolve(backend: str, array: Any) -> str:
    """Turn ``"auto"`` into a concrete backend name for ``array``; validate explicit names."""
    if backend == "auto":
        if is_cupy_array(array):
            return "cupy" if available_backends()["cupy"][0] else "numba-cuda"
        if is_cuda_array(array):
            return "numba-cuda"
        return "numba"
    if backend not in BACKENDS:
        raise DataError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    return backend


def get(backend: str, array: Any = None) -> tuple[str, ModuleType]:
    """Return ``(name, module)`` implementing the backend interface, or raise if unusable."""
    name = resolve(backend, array)
    ok, reason = available_backends()[name]
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    if name in ("numba", "scipy") and is_cuda_array(array):
        raise DataError(f"backend {name!r} runs on the CPU; pass a NumPy array (e.g. cupy.asnumpy(mask))")
    return name, importlib.import_module(f"{__package__}.{_MODULES[name]}")


def cavities_from_labels(labels3: np.ndarray, count: int, planar: bool) -> int:
    """Count labels that do not appear on the border faces of a 3D (or single-slice) label volume."""
    if count == 0:
        return 0
    faces = [labels3[:, 0], labels3[:, -1], labels3[:, :, 0], labels3[:, :, -1]]
    if not planar:
        faces += [labels3[0], labels3[-1]]
    touching = np.zeros(count + 1, bool)
    for f in faces:
        touching[f.ravel()] = True
    touching[0] = False
    return count - int(touching.sum())


def signed_from_edts(d_in: np.ndarray, d_out: np.ndarray, mask3: np.ndarray) -> np.ndarray:
    """Combine inside/outside distances: ``-d_in`` on foreground voxels, ``+d_out`` on background."""
    return np.where(mask3 != 0, -d_in, d_out).astype(np.float32, copy=False)
