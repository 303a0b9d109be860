"""Shift transforms: what they change and what they keep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tunepp_deploy.kernels import betti_numbers

from tunepp_deploy.data.phantom import generate_case
from tunepp_deploy.data.shift import add_noise, intensity_shift, unseen_shape, write_shifted_dataset


def _case(seed: int = 0):
    return generate_case(np.random.default_rng([seed, 0]))


def test_noise_and_intensity_keep_labels() -> None:
    c = _case()
    n = add_noise(c, np.random.default_rng(1))
    assert np.array_equal(n.labels, c.labels) and 50 < float(np.std(n.image - c.image)) < 70
    s = intensity_shift(c)
    air = c.image < -500
    assert np.array_equal(s.image[air], c.image[air])
    assert np.allclose(s.image[~air], c.image[~air] * 1.15 + 60.0, atol=1e-3)


def test_unseen_shape_opens_a_tunnel_in_the_solid_organ() -> None:
    c = _case(2)
    s = unseen_shape(c)
    assert (s.labels == 1).sum() < (c.labels == 1).sum()
    assert np.array_equal(s.labels[s.labels != 1] > 1, c.labels[s.labels != 1] > 1)  # other organs untouched
    assert betti_numbers(s.labels == 1)[1] >= 1  # the ball became a ring
    assert s.betti["solid"][1] >= 1
    removed = (c.labels == 1) & (s.labels == 0)
    assert s.image[removed].mean() < c.image[removed].mean() - 20  # the image shows the tunnel


def test_write_shifted_dataset(tmp_path: Path) -> None:
    out = write_shifted_dataset(tmp_path / "s", 1, "shape", shape=(40, 40, 32))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["shift"] == "shape" and "shape_000" in meta["cases"]
    assert (out / "imagesTr" / "shape_000_0000.nii.gz").is_file() and (out / "labelsTr" / "shape_000.nii.gz").is_file()
