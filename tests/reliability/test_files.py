"""Hostile scan files against the real CLI: each is refused at load, in one line, before any model
work, leaving nothing behind (issue 12: validated case before compute, header size vs file, voxel cap)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import corpus
import nibabel as nib
import numpy as np
import pytest
from corpus import (
    SCAN_CASES,
    assert_cli_error,
    assert_one_line_error,
    cli,
    hostile_scan,
    label_map,
    run_tunepp,
    tree,
    write_nifti,
)

from tunepp_deploy.data.nifti import DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV, load_volume, max_voxels
from tunepp_deploy.errors import DataError

tiny_model = corpus.tiny_model  # the fixture (no shared conftest)
FAST = ("--samples", "2", "--device", "cpu")


@pytest.mark.parametrize("kind", list(SCAN_CASES))
def test_infer_refuses_hostile_scan_in_one_line(tmp_path: Path, tiny_model, kind: str) -> None:
    scan = hostile_scan(tmp_path / "in", kind)
    out = tmp_path / "out"
    res = cli("infer", "-i", scan, "-o", out, "-m", tiny_model.ckpt, *FAST)
    assert_cli_error(res, contains=SCAN_CASES[kind])
    assert tree(out) == []


@pytest.mark.parametrize("kind", list(SCAN_CASES))
def test_topo_refuses_hostile_mask_in_one_line(tmp_path: Path, kind: str) -> None:
    mask = hostile_scan(tmp_path / "in", kind)
    edt = tmp_path / "edt" / "edt.nii.gz"
    word = {"nan_voxels": "NaN", "inf_voxels": "NaN"}.get(kind, SCAN_CASES[kind])
    assert_cli_error(cli("topo", mask, "--edt-out", edt), contains=word)
    assert tree(tmp_path / "edt") == []


@pytest.mark.parametrize("kind", ["claims_4000_cubed_nii", "claims_1000_cubed_gz"])
def test_header_claims_allocate_nothing(tmp_path: Path, kind: str) -> None:
    """4000^3 used to be a MemoryError traceback and 1000^3 allocated 4.1 GB before failing."""
    scan = hostile_scan(tmp_path, kind)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="cap"):
            load_volume(scan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing a header"


def test_voxel_cap_is_stated_and_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEFAULT_MAX_VOXELS == 1024**3 // 4 and max_voxels() == DEFAULT_MAX_VOXELS
    scan = write_nifti(tmp_path / "s.nii.gz", np.zeros((16, 16, 16), np.float32))
    assert load_volume(scan).shape == (16, 16, 16)
    with pytest.raises(DataError, match="cap of 1,000"):
        load_volume(scan, cap=1000)
    monkeypatch.setenv(MAX_VOXELS_ENV, "4095")
    with pytest.raises(DataError, match=MAX_VOXELS_ENV):
        load_volume(scan)
    monkeypatch.setenv(MAX_VOXELS_ENV, "4096")
    assert load_volume(scan).shape == (16, 16, 16)
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(DataError, match="whole number"):
        load_volume(scan)


def test_header_size_against_file_size(tmp_path: Path) -> None:
    """An uncompressed file shorter than its header says is refused before reading (not a short read)."""
    scan = hostile_scan(tmp_path, "truncated_nii")
    with pytest.raises(DataError, match=r"header describes [\d,]+ bytes but the file has [\d,]+"):
        load_volume(scan)


def test_good_oblique_scan_still_loads(tmp_path: Path) -> None:
    """The geometry checks refuse degenerate affines, not oblique or anisotropic ones."""
    a, b = np.deg2rad(25.0), np.deg2rad(-12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.3, 0.9, 6.0])
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), aff)
    nib.save(img, str(tmp_path / "oblique.nii.gz"))
    vol = load_volume(tmp_path / "oblique.nii.gz")
    np.testing.assert_allclose(vol.spacing, (0.3, 0.9, 6.0), rtol=1e-5)


def test_process_exit_code_and_stderr_of_a_hostile_header(tmp_path: Path, tiny_model) -> None:
    """The honest check: the installed ``tunepp`` in its own process, exit code 2 and one stderr line."""
    scan = hostile_scan(tmp_path / "in", "claims_4000_cubed_nii")
    proc = run_tunepp("infer", "-i", scan, "-o", tmp_path / "out", "-m", tiny_model.ckpt, *FAST)
    assert_one_line_error(proc.returncode, proc.stderr, contains="cap")
    assert tree(tmp_path / "out") == []


def test_label_map_given_as_scan_runs(tmp_path: Path, tiny_model) -> None:
    """A label map is a valid 3D image: inference runs on it (garbage in, but finite maps out, exit 0)."""
    scan = write_nifti(tmp_path / "in" / "labels_0000.nii.gz", label_map())
    out = tmp_path / "out"
    res = cli("infer", "-i", scan, "-o", out, "-m", tiny_model.ckpt, *FAST)
    assert res.exit_code == 0, res.output
    total = nib.load(str(out / "labels_total.nii.gz")).get_fdata()
    assert np.isfinite(total).all()


@pytest.mark.parametrize("name", ["with space.nii.gz", "ünïcødé_0000.nii.gz", "-dash.nii.gz", "a.b.c.nii"])
def test_odd_names_work(tmp_path: Path, name: str) -> None:
    mask = write_nifti(tmp_path / name, label_map())
    res = cli("topo", "--json", "--", mask) if name.startswith("-") else cli("topo", "--json", mask)
    assert res.exit_code == 0, res.output
    assert '"label": 2' in res.stdout


def test_float_segmentation_with_fractions_is_refused_by_evaluate(tmp_path: Path) -> None:
    """A probability map passed as a segmentation used to be rounded silently."""
    truth = label_map().astype(np.float32)
    write_nifti(tmp_path / "gt" / "case.nii.gz", truth)
    write_nifti(tmp_path / "pred" / "case_seg.nii.gz", truth * 0.4)
    out = tmp_path / "report"
    res = cli("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "-o", out)
    assert_cli_error(res, contains="non-integer")
    assert tree(out) == []
