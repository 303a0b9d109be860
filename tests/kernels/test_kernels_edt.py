"""Exact EDT against scipy.ndimage.distance_transform_edt, plus edge cases and signed distance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tunepp_deploy.kernels import distance_transform, signed_distance

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def mask_and_spacing(draw: st.DrawFn, ndim: int) -> tuple[np.ndarray, tuple[float, ...]]:
    side = 24 if ndim == 2 else 11
    shape = tuple(draw(st.integers(1, side)) for _ in range(ndim))
    p = draw(st.sampled_from([0.02, 0.2, 0.5, 0.8]))
    seed = draw(st.integers(0, 2**31))
    mask = np.random.default_rng(seed).random(shape) < p  # p = chance of a zero voxel
    mask = ~mask
    if mask.all():
        mask.flat[draw(st.integers(0, mask.size - 1))] = False
    spacing = tuple(draw(st.floats(0.25, 4.0)) for _ in range(ndim))
    return mask, spacing


def _check(mask: np.ndarray, spacing: tuple[float, ...]) -> None:
    ours = distance_transform(mask, spacing)
    ref = ndi.distance_transform_edt(mask, sampling=spacing)
    assert ours.dtype == np.float32 and ours.shape == mask.shape
    tol = 1e-4 * max(float(ref.max()), 1.0)
    assert np.abs(ours - ref).max() <= tol


@SETTINGS
@given(mask_and_spacing(2))
def test_edt_2d_matches_scipy(case: tuple[np.ndarray, tuple[float, ...]]) -> None:
    _check(*case)


@SETTINGS
@given(mask_and_spacing(3))
def test_edt_3d_matches_scipy(case: tuple[np.ndarray, tuple[float, ...]]) -> None:
    _check(*case)


@SETTINGS
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
              elements=st.integers(0, 1)))
def test_edt_arbitrary_patterns(mask: np.ndarray) -> None:
    if mask.all():
        assert np.isinf(distance_transform(mask)).all()
    else:
        _check(mask, (1.0, 1.0, 1.0))


def test_edt_smooth_volume_anisotropic_and_scipy_backend() -> None:
    from kernel_helpers import smooth_blobs

    mask = smooth_blobs((40, 48, 56), 3.0, seed=3) > 0.0
    sp = (2.5, 0.8, 1.1)
    ref = ndi.distance_transform_edt(mask, sampling=sp)
    for backend in ("numba", "scipy"):
        out = distance_transform(mask, sp, backend=backend)
        assert np.abs(out - ref).max() <= 1e-4 * ref.max()


def test_edt_edge_cases() -> None:
    assert not distance_transform(np.zeros((4, 5, 6))).any()
    full = distance_transform(np.ones((4, 5, 6), bool))
    assert np.isinf(full).all()  # documented: no zero voxel -> undefined -> inf
    assert np.isinf(distance_transform(np.ones((3, 3)), backend="scipy")).all()
    line = np.ones((1, 1, 7), np.uint8)
    line[0, 0, 3] = 0
    np.testing.assert_allclose(distance_transform(line, (1, 1, 2))[0, 0], [6, 4, 2, 0, 2, 4, 6])
    thin = np.zeros((9, 9, 9), bool)
    thin[4, :, 4] = True  # one-voxel-thick rod
    np.testing.assert_allclose(distance_transform(thin), ndi.distance_transform_edt(thin))
    assert distance_transform(np.zeros((0, 4, 4))).shape == (0, 4, 4)


def test_edt_dtypes_and_layouts_agree() -> None:
    from kernel_helpers import smooth_blobs

    f = smooth_blobs((14, 15, 16), 2.0, seed=1)
    base = distance_transform(f > 0)
    for variant in (
        (f > 0).astype(np.uint8),
        (f > 0).astype(np.int64) * 7,
        np.where(f > 0, 0.5, 0.0),
        np.asfortranarray(f > 0),
    ):
        np.testing.assert_array_equal(distance_transform(variant), base)
    big = np.zeros((28, 15, 32), bool)
    big[::2, :, ::2] = f > 0
    view = big[::2, :, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(distance_transform(view), base)
    t = np.ascontiguousarray((f > 0).transpose(2, 0, 1))
    np.testing.assert_array_equal(distance_transform((f > 0).transpose(2, 0, 1)), distance_transform(t))


@pytest.mark.parametrize("backend", ["numba", "scipy"])
def test_signed_distance_convention(backend: str) -> None:
    from kernel_helpers import smooth_blobs

    mask = smooth_blobs((20, 22, 24), 2.5, seed=2) > 0.2
    sp = (1.5, 1.0, 0.7)
    sd = signed_distance(mask, sp, backend=backend)
    d_in = ndi.distance_transform_edt(mask, sampling=sp)
    d_out = ndi.distance_transform_edt(~mask, sampling=sp)
    np.testing.assert_allclose(sd, np.where(mask, -d_in, d_out), rtol=1e-5, atol=1e-5)
    assert (sd[mask] < 0).all() and (sd[~mask] > 0).all()
    assert np.isposinf(signed_distance(np.zeros((3, 3)), backend=backend)).all()
    assert np.isneginf(signed_distance(np.ones((3, 3)), backend=backend)).all()
