"""Public distance, labelling and Euler functions; they validate, pick a backend and dispatch.

Conventions shared by all backends (documented once here):

* A mask is any array whose non-zero entries are foreground (bool, uint8, int or float; any memory
  order or strides). 2D and 3D only.
* ``spacing`` is the physical voxel size per axis in array axis order (``None`` = 1, a scalar is
  broadcast), exactly like ``scipy.ndimage.distance_transform_edt(sampling=...)``.
* Results live where the input lives: NumPy in, NumPy out; CuPy in, CuPy out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backends
from .validate import (
    EULER_CONNECTIVITIES,
    as_3d,
    as_mask,
    check_connectivity,
    check_ndim,
    check_spacing,
    is_cuda_array,
)

# 2D connectivities run on one slice of the 3D kernels: in-plane, 26 (or 18) reduces to 8, 6 to 4.
_TO3D = {4: 6, 8: 26, 6: 6, 18: 18, 26: 26}


def _prepare(mask: Any, backend: str) -> tuple[Any, Any, int]:
    """Validate ``mask``, resolve the backend, and return ``(module, mask3, ndim)``."""
    shape = tuple(getattr(mask, "shape", np.shape(mask)))
    ndim = check_ndim(shape)
    _, mod = backends.get(backend, mask)
    if hasattr(mod, "as_mask3"):
        mask3 = mod.as_mask3(mask)
    else:
        if is_cuda_array(mask):  # pragma: no cover - guarded in backends.get
            raise AssertionError("device array reached a CPU backend")
        mask3 = as_3d(as_mask(mask))
    return mod, mask3, ndim


def _spacing3(spacing: Any, ndim: int) -> tuple[float, float, float]:
    s = check_spacing(spacing, ndim)
    return (1.0, *s) if ndim == 2 else s  # type: ignore[return-value]


def _squeeze(out: Any, ndim: int) -> Any:
    return out[0] if ndim == 2 else out


def distance_transform(mask: Any, spacing: Any = None, backend: str = "auto") -> Any:
    """Exact Euclidean distance from each foreground voxel to the nearest zero voxel (float32).

    Matches ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)`` wherever the mask has
    at least one zero voxel; zero voxels get 0. Difference: if the mask has *no* zero voxel the
    distance is undefined and every voxel gets ``inf`` (scipy returns distances to a phantom point
    just outside the array, which depends on the array's corner and means nothing).
    """
    mod, mask3, ndim = _prepare(mask, backend)
    sp = _spacing3(spacing, ndim)
    return _squeeze(mod.edt3(mask3, sp), ndim)


def signed_distance(mask: Any, spacing: Any = None, backend: str = "auto") -> Any:
    """Signed Euclidean distance (float32): negative inside, positive outside.

    Convention: a foreground voxel gets ``-distance to the nearest background voxel`` and a
    background voxel ``+distance to the nearest foreground voxel``, so no voxel is 0 (the zero level
    set lies between voxel centres, on neither side) and ``|value| >= min(spacing)``. This is the
    map used by boundary-distance losses (``sum(softmax * sdf)``). An all-background mask is
    ``+inf`` everywhere and an all-foreground mask ``-inf`` everywhere: clamp if you need finite
    values.
    """
    mod, mask3, ndim = _prepare(mask, backend)
    sp = _spacing3(spacing, ndim)
    return _squeeze(mod.signed3(mask3, sp), ndim)


def connected_components(mask: Any, connectivity: int = 26, backend: str = "auto") -> tuple[Any, int]:
    """Label connected foreground components; return ``(int32 labels, count)``.

    Connectivity is 6, 18 or 26 in 3D and 4 or 8 in 2D (pass 8 for the usual 2D default). Labels
    are 1..count, numbered in raster order of each component's first voxel (the numbering of
    ``scipy.ndimage.label``); background is 0.
    """
    shape = tuple(getattr(mask, "shape", np.shape(mask)))
    ndim = check_ndim(shape)
    if ndim == 2 and connectivity == 26:
        connectivity = 8
    conn = check_connectivity(connectivity, ndim)
    mod, mask3, ndim = _prepare(mask, backend)
    labels, count = mod.label3(mask3, _TO3D[conn])
    return _squeeze(labels, ndim), int(count)


def euler_characteristic(mask: Any, connectivity: int = 26, backend: str = "auto") -> int:
    """Euler characteristic of the foreground (26 or 6 in 3D, 8 or 4 in 2D).

    Same values as ``skimage.measure.euler_number`` (connectivity 3 = 26 and 1 = 6 in 3D,
    2 = 8 and 1 = 4 in 2D). Computed from a 2x2x2 configuration table, see ``euler_numba``.
    """
    shape = tuple(getattr(mask, "shape", np.shape(mask)))
    ndim = check_ndim(shape)
    if ndim == 2 and connectivity == 26:
        connectivity = 8
    conn = check_connectivity(connectivity, ndim, EULER_CONNECTIVITIES)
    mod, mask3, _ = _prepare(mask, backend)
    return int(mod.euler3(mask3, _TO3D[conn]))
