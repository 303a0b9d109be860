"""CUDA C sources compile for Jetson Orin (sm_87) and Hopper (sm_90); CuPy backend on a real GPU."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from tunepp_deploy.kernels import available_backends

SOURCES = ("edt.cu", "ccl.cu", "euler.cu")


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None
    )


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_cu_sources_compile(source: str, arch: str, tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found in PATH or /usr/local/cuda/bin")
    src = resources.files("tunepp_deploy.kernels").joinpath(source)
    assert src.is_file(), f"{source} is not shipped with the package"
    out = tmp_path / f"{source}.{arch}.cubin"
    proc = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-Werror", "all-warnings", "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size > 0


def _need_cupy() -> None:
    ok, reason = available_backends()["cupy"]
    if not ok:
        pytest.skip(f"cupy backend unavailable: {reason}")


@pytest.mark.gpu
def test_cupy_backend_matches_numba() -> None:
    _need_cupy()
    import cupy
    from tunepp_deploy.kernels import (
        betti_numbers,
        connected_components,
        distance_transform,
        euler_characteristic,
        signed_distance,
    )

    rng = np.random.default_rng(0)
    import scipy.ndimage as ndi

    mask = ndi.gaussian_filter(rng.standard_normal((40, 37, 33)), 2.0) > 0
    dev = cupy.asarray(mask)
    sp = (2.0, 0.7, 1.1)
    d = distance_transform(dev, sp)
    assert isinstance(d, cupy.ndarray)
    ref = distance_transform(mask, sp)
    assert float(abs(d.get() - ref).max()) <= 1e-4 * float(ref.max())
    assert float(abs(signed_distance(dev, sp).get() - signed_distance(mask, sp)).max()) <= 1e-4 * float(ref.max())
    for conn in (6, 18, 26):
        (la, na), (lb, nb) = connected_components(dev, conn), connected_components(mask, conn)
        assert na == nb and np.array_equal(la.get(), lb)
    for conn in (6, 26):
        assert euler_characteristic(dev, conn) == euler_characteristic(mask, conn)
    assert betti_numbers(dev) == betti_numbers(mask)
    assert betti_numbers(dev[5]) == betti_numbers(mask[5])


@pytest.mark.gpu
def test_numba_cuda_on_device() -> None:
    ok, reason = available_backends()["numba-cuda"]
    if not ok:
        pytest.skip(f"numba-cuda backend unavailable: {reason}")
    from tunepp_deploy.kernels import betti_numbers, distance_transform

    mask = np.random.default_rng(1).random((30, 31, 32)) < 0.6
    assert betti_numbers(mask, backend="numba-cuda") == betti_numbers(mask)
    np.testing.assert_allclose(distance_transform(mask, backend="numba-cuda"), distance_transform(mask), rtol=1e-5)
