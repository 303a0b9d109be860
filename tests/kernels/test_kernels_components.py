"""Connected components against cc3d / scipy, and Euler characteristic against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import same_partition, smooth_blobs
from tunepp_deploy.kernels import connected_components, euler_characteristic

RANK = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([6, 18, 26]), st.floats(0.2, 0.8))
def test_ccl_3d_matches_cc3d_and_scipy(seed: int, conn: int, p: float) -> None:
    cc3d = pytest.importorskip("cc3d")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 14, 3))
    mask = rng.random(shape) < p
    labels, n = connected_components(mask, conn)
    ref, n_ref = cc3d.connected_components(mask.astype(np.uint8), connectivity=conn, return_N=True)
    assert labels.dtype == np.int32 and n == n_ref
    assert same_partition(labels, ref)
    sp, n_sp = ndi.label(mask, ndi.generate_binary_structure(3, RANK[conn]))
    assert n == n_sp and np.array_equal(labels, sp)  # documented: scipy's raster numbering


@pytest.mark.parametrize("conn", [4, 8])
def test_ccl_2d(conn: int) -> None:
    for seed in range(5):
        mask = np.random.default_rng(seed).random((37, 41)) < 0.5
        labels, n = connected_components(mask, conn)
        ref, n_ref = ndi.label(mask, ndi.generate_binary_structure(2, RANK[conn]))
        assert n == n_ref and np.array_equal(labels, ref)
        s_labels, s_n = connected_components(mask, conn, backend="scipy")
        assert s_n == n and same_partition(s_labels, labels)


def test_ccl_smooth_volume_and_layouts() -> None:
    cc3d = pytest.importorskip("cc3d")
    mask = smooth_blobs((48, 40, 44), 2.0, seed=5) > 0.1
    for conn in (6, 18, 26):
        labels, n = connected_components(mask, conn)
        ref, n_ref = cc3d.connected_components(mask.astype(np.uint8), connectivity=conn, return_N=True)
        assert n == n_ref and same_partition(labels, ref)
        f_labels, f_n = connected_components(np.asfortranarray(mask), conn)
        assert f_n == n and np.array_equal(f_labels, labels)
    assert connected_components(np.zeros((3, 4, 5)))[1] == 0
    full, n = connected_components(np.ones((3, 4, 5)))
    assert n == 1 and (full == 1).all()


def test_ccl_diagonal_chain_depends_on_connectivity() -> None:
    mask = np.zeros((5, 5, 5), bool)
    for i in range(5):
        mask[i, i, i] = True
    assert connected_components(mask, 26)[1] == 1
    assert connected_components(mask, 18)[1] == 5
    assert connected_components(mask, 6)[1] == 5


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([6, 26]), st.floats(0.2, 0.8))
def test_euler_3d_matches_skimage(seed: int, conn: int, p: float) -> None:
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 13, 3))
    mask = rng.random(shape) < p
    ref = measure.euler_number(mask, connectivity=3 if conn == 26 else 1)
    assert euler_characteristic(mask, conn) == ref
    assert euler_characteristic(mask, conn, backend="scipy") == ref


@pytest.mark.parametrize("conn", [4, 8])
def test_euler_2d_matches_skimage(conn: int) -> None:
    measure = pytest.importorskip("skimage.measure")
    for seed in range(6):
        mask = np.random.default_rng(seed).random((23, 29)) < 0.55
        ref = measure.euler_number(mask, connectivity=1 if conn == 4 else 2)
        assert euler_characteristic(mask, conn) == ref
        assert euler_characteristic(mask, conn, backend="scipy") == ref


def test_euler_lut_properties() -> None:
    from tunepp_deploy.kernels.euler_numba import euler_lut

    for conn in (6, 26):
        lut = euler_lut(conn)
        assert lut[0] == 0
        assert lut[1] == 1 and lut[255] == 0  # one corner voxel; interior block
    # a single voxel has chi = 1 in both, and a smooth volume agrees with skimage
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert euler_characteristic(one, 6) == euler_characteristic(one, 26) == 1
