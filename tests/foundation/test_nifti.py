"""NIfTI I/O keeps geometry; bad files are one-line errors; writes are atomic."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tunepp_deploy.data.nifti import load_volume, save_volume, write_atomic
from tunepp_deploy.errors import DataError


def _oblique_affine() -> np.ndarray:
    a, b = np.deg2rad(17.0), np.deg2rad(-9.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.7, 1.3, 3.1])
    aff[:3, 3] = [-101.5, 33.25, 12.0]
    return aff


def _write(path: Path, arr: np.ndarray, aff: np.ndarray) -> Path:
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=2)
    nib.save(img, str(path))
    return path


def test_round_trip_oblique_anisotropic(tmp_path: Path) -> None:
    aff = _oblique_affine()
    arr = np.random.default_rng(0).normal(size=(13, 11, 7)).astype(np.float32)
    src = load_volume(_write(tmp_path / "scan.nii.gz", arr, aff))
    np.testing.assert_allclose(src.spacing, [0.7, 1.3, 3.1], rtol=1e-5)
    out = save_volume(arr * 2, src, tmp_path / "out" / "map.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    np.testing.assert_allclose(back.header.get_zooms(), src.header.get_zooms(), rtol=1e-6)
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), arr * 2)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["map.nii.gz"]  # no temp files left


def test_float_map_over_integer_header(tmp_path: Path) -> None:
    lab = np.zeros((4, 4, 4), dtype=np.uint8)
    src = load_volume(_write(tmp_path / "lab.nii.gz", lab, np.eye(4)))
    vals = np.full((4, 4, 4), 0.125, dtype=np.float32)
    out = save_volume(vals, src, tmp_path / "u.nii.gz")
    np.testing.assert_array_equal(nib.load(str(out)).get_fdata(dtype=np.float32), vals)


def test_shape_mismatch_refused(tmp_path: Path) -> None:
    src = load_volume(_write(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4)))
    with pytest.raises(DataError, match="does not match"):
        save_volume(np.zeros((4, 4, 5), np.float32), src, tmp_path / "b.nii.gz")
    assert not (tmp_path / "b.nii.gz").exists()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_volume(tmp_path / "missing.nii.gz")
    txt = tmp_path / "notes.nii.gz"
    txt.write_text("hello")
    with pytest.raises(DataError, match="cannot read"):
        load_volume(txt)
    good = _write(tmp_path / "g.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    trunc = tmp_path / "t.nii.gz"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="cannot read"):
        load_volume(trunc)
    with pytest.raises(DataError, match="expected a 3D image"):
        load_volume(_write(tmp_path / "2d.nii.gz", np.ones((8, 8), np.float32), np.eye(4)))
    with pytest.raises(DataError, match="expected a 3D image"):
        load_volume(_write(tmp_path / "4d.nii.gz", np.ones((4, 4, 4, 3), np.float32), np.eye(4)))
    nan = np.ones((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        load_volume(_write(tmp_path / "nan.nii.gz", nan, np.eye(4)))
    with pytest.raises(DataError, match="zero-size"):
        load_volume(_write(tmp_path / "z.nii.gz", np.ones((4, 0, 4), np.float32), np.eye(4)))


def test_4d_singleton_squeezed(tmp_path: Path) -> None:
    v = load_volume(_write(tmp_path / "s.nii.gz", np.ones((5, 6, 7, 1), np.float32), np.eye(4)))
    assert v.shape == (5, 6, 7)


def test_gzip_of_garbage(tmp_path: Path) -> None:
    p = tmp_path / "g.nii.gz"
    p.write_bytes(gzip.compress(b"\x00" * 500))
    with pytest.raises(DataError):
        load_volume(p)


def test_atomic_write_gets_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; outputs must be as readable as ``open(path, "w")`` would make them."""
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic = tmp_path / "atomic.txt"
        write_atomic(atomic, lambda t: t.write_text("x"))
        assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
