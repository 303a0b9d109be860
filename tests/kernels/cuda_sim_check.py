"""Run by test_kernels_cuda_sim.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (must be set before
numba is imported, so it cannot share the pytest process). Compares numba-cuda with numba on small
volumes and exits non-zero with a message on the first disagreement."""

from __future__ import annotations

import os
import sys

import numpy as np
import scipy.ndimage as ndi
from tunepp_deploy.kernels import (
    available_backends,
    betti_numbers,
    connected_components,
    distance_transform,
    euler_characteristic,
    signed_distance,
)


def main() -> int:
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run me with NUMBA_ENABLE_CUDASIM=1"
    ok, reason = available_backends()["numba-cuda"]
    assert ok, reason
    rng = np.random.default_rng(0)
    f = ndi.gaussian_filter(rng.standard_normal((12, 11, 10)), 1.5)
    masks = {"blobs": f > 0, "noise": rng.random((6, 7, 8)) < 0.5}
    sp = (1.5, 1.0, 0.7)
    for name, m in masks.items():
        a, b = distance_transform(m, sp, backend="numba-cuda"), distance_transform(m, sp, backend="numba")
        assert np.abs(a - b).max() <= 1e-4 * b.max(), f"{name}: EDT differs"
        a = signed_distance(m, sp, backend="numba-cuda")
        assert np.abs(a - signed_distance(m, sp)).max() <= 1e-4 * b.max(), f"{name}: signed EDT differs"
        for conn in (6, 18, 26):
            (la, na), (lb, nb) = connected_components(m, conn, backend="numba-cuda"), connected_components(m, conn)
            assert na == nb and np.array_equal(la, lb), f"{name}: labels differ at connectivity {conn}"
        for conn in (6, 26):
            assert euler_characteristic(m, conn, backend="numba-cuda") == euler_characteristic(m, conn)
        assert betti_numbers(m, backend="numba-cuda") == betti_numbers(m), f"{name}: Betti differ"
    m2 = masks["blobs"][3]
    assert betti_numbers(m2, backend="numba-cuda") == betti_numbers(m2)
    d2 = distance_transform(m2, (2.0, 0.5), backend="numba-cuda")
    assert np.abs(d2 - distance_transform(m2, (2.0, 0.5))).max() < 1e-4 * d2.max()
    shell = np.ones((5, 5, 5), bool)
    shell[2, 2, 2] = False
    assert betti_numbers(shell, backend="numba-cuda") == (1, 0, 1)
    print("numba-cuda (simulator) agrees with numba")
    return 0


if __name__ == "__main__":
    sys.exit(main())
