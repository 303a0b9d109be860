"""``tunepp topo`` through a small typer app around the command (the main app wires it itself)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import typer
from tunepp_deploy.kernels.report import topology_report
from typer.testing import CliRunner

from tunepp_deploy.cli.topo_cmd import topo
from tunepp_deploy.errors import DataError


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    a.command("topo")(topo)

    @a.command("noop")
    def _noop() -> None:  # a second command keeps "topo" as a sub-command, as in the real app
        pass

    return a


def _save(data: np.ndarray, path: Path, zooms: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Path:
    affine = np.diag([*zooms[:3], 1.0])
    affine[:3, 3] = (10.0, -5.0, 3.0)
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


def _labels() -> np.ndarray:
    lab = np.zeros((24, 22, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 1
    lab[4:8, 4:8, 4:8] = 0  # label 1: hollow cube (1, 0, 1)
    z, y, x = np.mgrid[0:24, 0:22, 0:20]
    ring = (np.sqrt((y - 14.0) ** 2 + (x - 12.0) ** 2) - 4.5) ** 2 + (z - 16.0) ** 2 < 2.0**2
    lab[ring] = 2  # label 2: solid torus (1, 1, 0)
    return lab


def test_topo_table_json_and_edt(app: typer.Typer, tmp_path: Path) -> None:
    src = _save(_labels(), tmp_path / "mask.nii.gz", (1.5, 0.8, 2.0))
    res = CliRunner().invoke(app, ["topo", str(src), "--json", "--edt-out", str(tmp_path / "edt.nii.gz")])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    by = {r["label"]: r for r in rep["labels"]}
    assert by[1]["betti"] == [1, 0, 1] and by[1]["euler"] == 2 and by[1]["voxels"] == 8**3 - 4**3
    assert by[2]["betti"] == [1, 1, 0] and by[2]["euler"] == 0
    assert rep["foreground"]["betti"] == [2, 1, 1]
    out = nib.load(str(tmp_path / "edt.nii.gz"))
    np.testing.assert_array_equal(out.affine, nib.load(str(src)).affine)
    assert out.header.get_zooms()[:3] == pytest.approx((1.5, 0.8, 2.0))
    ref = ndi.distance_transform_edt(_labels() != 0, sampling=(1.5, 0.8, 2.0))
    np.testing.assert_allclose(np.asanyarray(out.dataobj), ref, rtol=1e-5, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp file renamed away
    res = CliRunner().invoke(app, ["topo", str(src), "--backend", "scipy"])
    assert res.exit_code == 0 and "euler" in res.stdout


def test_topo_user_errors_exit_2(app: typer.Typer, tmp_path: Path) -> None:
    four = _save(np.zeros((4, 4, 4, 2), np.uint8), tmp_path / "four.nii.gz", (1.0, 1.0, 1.0, 1.0))
    flt = _save(np.random.default_rng(0).random((5, 5, 5)).astype(np.float32), tmp_path / "prob.nii.gz")
    bad = tmp_path / "junk.nii.gz"
    bad.write_bytes(b"not a nifti")
    for path, msg in ((four, "3D"), (flt, "not a mask"), (bad, "cannot read"), (tmp_path / "missing.nii", "no such")):
        res = CliRunner().invoke(app, ["topo", str(path)])
        assert res.exit_code == 2, (path, res.output)
        assert msg in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["topo", str(flt), "--backend", "nope"])
    assert res.exit_code == 2


def test_report_library_float_mask_ok(tmp_path: Path) -> None:
    src = _save((_labels() > 0).astype(np.float32), tmp_path / "m.nii")
    rep = topology_report(src)
    assert [t.betti for t in rep.labels] == [(2, 1, 1)] and rep.foreground is None
    with pytest.raises(DataError):
        topology_report(_save(np.full((3, 3, 3), -1, np.int16), tmp_path / "neg.nii"))
