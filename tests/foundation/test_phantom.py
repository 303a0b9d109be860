"""Phantoms: designed Betti numbers confirmed by GUDHI (independent of our kernels and generator)."""

from __future__ import annotations

import json
from pathlib import Path

import gudhi
import nibabel as nib
import numpy as np
import pytest

from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.data.phantom import PHANTOM_CLASSES, generate_case, write_phantom_dataset


def _gudhi_betti(mask: np.ndarray) -> tuple[int, int, int]:
    """Betti numbers of a voxel set with GUDHI's cubical complex on top-dimensional cells.

    Voxels are closed unit cubes, so two voxels sharing a corner are connected (26-connectivity
    of the foreground) and the complement's components are 6-connected: the standard pair.
    """
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = np.pad(mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], 1)
    cc = gudhi.CubicalComplex(top_dimensional_cells=np.where(crop, 0.0, 1.0))
    cc.compute_persistence()
    b = cc.persistent_betti_numbers(0.0, 0.0)
    return tuple(int(x) for x in [*list(b), 0, 0, 0][:3])  # type: ignore[return-value]


@pytest.mark.parametrize("i", range(8))
def test_designed_betti_match_gudhi(i: int) -> None:
    case = generate_case(np.random.default_rng([123, i]))
    for lab, name in enumerate(PHANTOM_CLASSES[1:], start=1):
        assert _gudhi_betti(case.labels == lab) == case.betti[name], (i, name)


def test_hu_and_geometry() -> None:
    case = generate_case(np.random.default_rng(5))
    assert case.image.dtype == np.float32 and case.image.shape == case.labels.shape
    assert case.image.min() < -800  # air around the body
    organ_means = [case.image[case.labels == k].mean() for k in range(1, 5)]
    assert all(m > 0 for m in organ_means)
    np.testing.assert_allclose(np.diag(case.affine)[:3], case.spacing)
    assert case.spacing[2] != case.spacing[0]  # anisotropic


def test_dataset_written_in_seed_layout(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "ph", cases=3, seed=7)
    cases = find_cases(root)
    assert [c.name for c in cases] == ["phantom_000", "phantom_001", "phantom_002"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["classes"] == list(PHANTOM_CLASSES)
    img = nib.load(str(cases[0].image))
    lab = nib.load(str(cases[0].label))
    np.testing.assert_allclose(img.affine, lab.affine)
    labels = np.asanyarray(lab.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert meta["cases"]["phantom_000"]["betti"]["torus"] == [1, 1, 0]
    # same seed, same case: case i depends only on (seed, i)
    again = write_phantom_dataset(tmp_path / "ph2", cases=1, seed=7)
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(again / "labelsTr/phantom_000.nii.gz")).dataobj), labels)


@pytest.mark.parametrize("i", range(5))
def test_contact_phantoms_touch_and_keep_their_designed_topology(i: int) -> None:
    """``contact=True``: the solid and hollow organs share a surface (so the topology loss's junction
    weights J are non-zero there, never on the default phantoms) and GUDHI confirms every designed
    Betti number."""
    from scipy import ndimage

    from tunepp_deploy.losses.complexity import boundary_junction_maps

    case = generate_case(np.random.default_rng([321, i]), contact=True)
    for lab, name in enumerate(PHANTOM_CLASSES[1:], start=1):
        assert _gudhi_betti(case.labels == lab) == case.betti[name], (i, name)
    assert (ndimage.binary_dilation(case.labels == 1, np.ones((3, 3, 3))) & (case.labels == 3)).sum() >= 10
    _, j = boundary_junction_maps(case.labels, 2.0)
    _, j_apart = boundary_junction_maps(generate_case(np.random.default_rng([321, i])).labels, 2.0)
    assert (j > 0.5).sum() > 100 and (j_apart > 0.5).sum() == 0
