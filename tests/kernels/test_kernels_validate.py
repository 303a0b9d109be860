"""Input validation and backend selection."""

from __future__ import annotations

import numpy as np
import pytest
from tunepp_deploy.kernels import (
    BackendUnavailableError,
    available_backends,
    betti_numbers,
    betti_per_label,
    connected_components,
    distance_transform,
    euler_characteristic,
    signed_distance,
)

from tunepp_deploy.errors import DataError


@pytest.mark.parametrize(
    "fn", [distance_transform, signed_distance, connected_components, euler_characteristic, betti_numbers]
)
def test_wrong_dimensionality(fn) -> None:
    for bad in (np.zeros((2, 3, 4, 5)), np.zeros(7)):
        with pytest.raises(ValueError, match=r"must be 2D or 3D") as e:
            fn(bad)
        assert isinstance(e.value, DataError) and "\n" not in str(e.value)


@pytest.mark.parametrize("spacing", [(1.0, np.nan, 1.0), (1.0, np.inf, 1.0), (1.0, 0.0, 1.0), (1.0, -2, 1)])
def test_bad_spacing_values(spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        distance_transform(np.ones((3, 3, 3)), spacing)


def test_wrong_spacing_length() -> None:
    with pytest.raises(ValueError, match="3 values"):
        distance_transform(np.ones((3, 3, 3)), (1.0, 1.0))
    with pytest.raises(ValueError, match="2 values"):
        signed_distance(np.ones((3, 3)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="numbers"):
        distance_transform(np.ones((3, 3)), ("a", 1))
    out = distance_transform(np.eye(3) == 0, 2.0)  # scalar spacing broadcasts like scipy's sampling
    assert out[0, 1] == pytest.approx(2.0)


def test_bad_connectivity_and_backend() -> None:
    with pytest.raises(ValueError, match="connectivity"):
        connected_components(np.ones((3, 3, 3)), 8)
    with pytest.raises(ValueError, match="connectivity"):
        connected_components(np.ones((3, 3)), 6)
    with pytest.raises(ValueError, match="connectivity"):
        euler_characteristic(np.ones((3, 3, 3)), 18)
    with pytest.raises(ValueError, match="unknown backend"):
        distance_transform(np.ones((3, 3)), backend="opencl")


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        betti_per_label(np.full((3, 3, 3), -1))
    with pytest.raises(ValueError, match="integer"):
        betti_per_label(np.full((3, 3, 3), 0.5))
    np.testing.assert_array_equal(betti_per_label(np.ones((3, 3, 3), float)), [[1, 0, 0]])


def test_available_backends_and_no_silent_fallback() -> None:
    info = available_backends()
    assert set(info) == {"numba", "numba-cuda", "cupy", "scipy"}
    for ok, reason in info.values():
        assert isinstance(ok, bool) and reason
    assert info["numba"][0] and info["scipy"][0]
    for name in ("cupy", "numba-cuda"):
        if not info[name][0]:
            with pytest.raises(BackendUnavailableError, match=name):
                distance_transform(np.ones((3, 3)), backend=name)
