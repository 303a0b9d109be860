"""DICOM series in (tunepp_deploy.data.dicom): geometry, values, series choice, refusals, and ``tunepp infer``.

Series are written here with pydicom from a known RAS affine and known stored values; the oracle for the
geometry is the DICOM definition itself, evaluated on the files as written (each pixel's patient position
``IPP + X*dc*col + Y*dr*row``, LPS -> RAS by negating x and y), never the reader's own code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.data.layout import case_name, case_names, list_images
from tunepp_deploy.errors import DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pydicom.valuerep import DSfloat  # noqa: E402

from tunepp_deploy.data.dicom import INSTALL_HINT, read_series  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FLIP = np.array([-1.0, -1.0, 1.0])


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing: Sequence[float] = (0.7, 0.9, 2.5), angles=(20.0, -15.0, 30.0),
                   origin=(-40.5, 12.25, 103.0)) -> np.ndarray:
    """RAS affine of a right-handed oblique grid (in LPS the slice axis is row x column cosine)."""
    lps = np.eye(4)
    lps[:3, :3] = _rotation(*angles) * np.asarray(spacing)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _ds(values: Sequence[float]) -> list[DSfloat]:
    return [DSfloat(float(v), auto_format=True) for v in values]


def write_series(folder: Path, stored: np.ndarray, affine: np.ndarray, slopes: Sequence[float],
                 intercepts: Sequence[float], rng: np.random.Generator, series_uid: str | None = None,
                 prefix: str = "IM", description: str = "test") -> list[Path]:
    """Write ``stored[i, j, k]`` (column i, row j, slice k; int16) as one CT series on ``affine`` (RAS), one
    file per slice, in shuffled order, with shuffled file names and a non-monotone InstanceNumber."""
    folder.mkdir(parents=True, exist_ok=True)
    n = stored.shape[2]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    x, y = lps[:3, 0], lps[:3, 1]
    iop = [*(x / np.linalg.norm(x)), *(y / np.linalg.norm(y))]
    ps = [np.linalg.norm(y), np.linalg.norm(x)]  # (between rows, between columns)
    series = series_uid or generate_uid()
    study = generate_uid()
    names = rng.permutation(n)
    instances = rng.permutation(n) + 1
    paths = []
    for k in rng.permutation(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "CT", description, int(instances[k])
        ds.ImagePositionPatient = _ds(lps[:3, 3] + k * lps[:3, 2])
        ds.ImageOrientationPatient = _ds(iop)
        ds.PixelSpacing = _ds(ps)
        ds.RescaleSlope, ds.RescaleIntercept = _ds([slopes[k]])[0], _ds([intercepts[k]])[0]
        ds.set_pixel_data(np.ascontiguousarray(stored[:, :, k].T.astype(np.int16)), "MONOCHROME2", 16)
        p = folder / f"{prefix}{names[k]:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def oracle_check(vol_affine: np.ndarray, vol_array: np.ndarray, files: Sequence[Path]) -> float:
    """Map every pixel of every file to the volume through the affine; assert it lands on a voxel holding its
    rescaled value and that the files cover the grid exactly once. Returns the max position error (mm)."""
    inv = np.linalg.inv(vol_affine)
    seen = np.zeros(vol_array.shape, dtype=np.int32)
    worst = 0.0
    for f in files:
        ds = pydicom.dcmread(f)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        rows, cols = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        lps = ipp + iop[:3] * dc * cols[..., None] + iop[3:] * dr * rows[..., None]
        ras = lps * FLIP
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(ijk).astype(int)
        assert (idx >= 0).all() and (idx < vol_array.shape).all()
        centres = idx @ vol_affine[:3, :3].T + vol_affine[:3, 3]
        worst = max(worst, float(np.linalg.norm(centres - ras, axis=-1).max()))
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        got = vol_array[idx[..., 0], idx[..., 1], idx[..., 2]]
        np.testing.assert_array_equal(got, hu.astype(np.float32))
        np.add.at(seen, (idx[..., 0], idx[..., 1], idx[..., 2]), 1)
    assert (seen == 1).all()
    return worst


def _stored(rng: np.random.Generator, shape=(12, 10, 7)) -> np.ndarray:
    return rng.integers(-1000, 3000, size=shape).astype(np.int16)


def test_oblique_shuffled_rescaled_series_matches_dicom_geometry(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(11)
    stored = _stored(rng)
    aff = oblique_affine()
    slopes = [0.5, 1.0, 0.25, 2.0, 0.5, 1.5, 0.75]  # per-slice rescale, as some scanners write
    intercepts = [-1024.0, -1000.5, -1024.25, 0.0, 7.5, -3.0, -1024.0]
    files = write_series(tmp_path / "ct", stored, aff, slopes, intercepts, rng)
    assert sorted(files) != files  # file order is not slice order
    s = read_series(tmp_path / "ct")
    worst = oracle_check(s.volume.affine, s.volume.array, files)
    with capsys.disabled():
        print(f"\nDICOM oblique series: max |affine voxel centre - DICOM patient position| = {worst:.3g} mm")
    assert worst < 1e-3
    # against the source grid too: same voxel order and affine as written, values stored * slope + intercept
    np.testing.assert_allclose(s.volume.affine, aff, atol=1e-9)
    expected = stored.astype(np.float64) * np.array(slopes) + np.array(intercepts)
    np.testing.assert_array_equal(s.volume.array, expected.astype(np.float32))
    assert s.volume.spacing == pytest.approx((0.7, 0.9, 2.5), abs=1e-6)  # header zooms are float32
    hdr = s.volume.header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), aff, atol=1e-6)
    assert s.describe()["slices"] == 7 and s.modality == "CT"


def test_output_written_through_save_volume_keeps_the_geometry(tmp_path: Path) -> None:
    from tunepp_deploy.data.nifti import load_volume, save_volume

    rng = np.random.default_rng(3)
    files = write_series(tmp_path / "ct", _stored(rng), oblique_affine(), [1.0] * 7, [-1024.0] * 7, rng)
    s = read_series(tmp_path / "ct")
    out = save_volume((s.volume.array > 0).astype(np.uint8), s.volume, tmp_path / "seg.nii.gz")
    back = load_volume(out)
    assert oracle_check(back.affine, s.volume.array, files) < 1e-3  # the seg overlays the series
    np.testing.assert_allclose(nib.load(out).get_qform(), s.volume.affine, atol=1e-6)


def test_two_series_need_a_uid(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a, b = _stored(rng, (8, 6, 4)), _stored(rng, (9, 7, 5))
    write_series(tmp_path / "mixed", a, oblique_affine(), [1.0] * 4, [0.0] * 4, rng, series_uid="1.2.826.0.1.1",
                 prefix="A")
    write_series(tmp_path / "mixed", b, np.diag([1.0, 1.0, 3.0, 1.0]), [1.0] * 5, [-1024.0] * 5, rng,
                 series_uid="1.2.826.0.1.2", prefix="B")
    with pytest.raises(DataError, match=r"holds 2 DICOM series; pick one with --series-uid") as e:
        read_series(tmp_path / "mixed")
    assert "1.2.826.0.1.1" in str(e.value) and "1.2.826.0.1.2" in str(e.value) and "\n" not in str(e.value)
    s = read_series(tmp_path / "mixed", "1.2.826.0.1.2")
    assert s.uid == "1.2.826.0.1.2" and s.volume.shape == (9, 7, 5)
    np.testing.assert_array_equal(s.volume.array, b.astype(np.float32) - 1024)
    np.testing.assert_allclose(s.volume.affine, np.diag([1.0, 1.0, 3.0, 1.0]), atol=1e-9)
    with pytest.raises(DataError, match=r"no series with SeriesInstanceUID 9\.9"):
        read_series(tmp_path / "mixed", "9.9")


def _series(tmp_path: Path, seed: int = 0, n: int = 6) -> tuple[Path, list[Path]]:
    rng = np.random.default_rng(seed)
    folder = tmp_path / "s"
    return folder, write_series(folder, _stored(rng, (8, 6, n)), oblique_affine(), [1.0] * n, [0.0] * n, rng)


def _by_position(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


def _edit(path: Path, **tags: object) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)


def test_missing_slice_is_a_gap(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    _by_position(files)[2].unlink()
    with pytest.raises(DataError, match=r"slice spacing is not uniform: 5 mm between .* against 2\.5 mm"):
        read_series(folder)


def test_uneven_spacing_beyond_tolerance_refused_within_accepted(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    f = _by_position(files)[3]
    ipp = np.array([float(v) for v in pydicom.dcmread(f).ImagePositionPatient])
    normal = np.cross(*(np.array([float(v) for v in pydicom.dcmread(f).ImageOrientationPatient]).reshape(2, 3)))
    _edit(f, ImagePositionPatient=_ds(ipp + 0.005 * normal))  # 0.2% of the 2.5 mm step: scanner rounding
    read_series(folder)
    _edit(f, ImagePositionPatient=_ds(ipp + 0.4 * normal))
    with pytest.raises(DataError, match="slice spacing is not uniform"):
        read_series(folder)


def test_mixed_orientations(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    _edit(files[1], ImageOrientationPatient=_ds([1, 0, 0, 0, 1, 0]))
    with pytest.raises(DataError, match=rf"mixed orientations: ImageOrientationPatient .* in {files[1].name}$"):
        read_series(folder)


def test_mixed_dimensions(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.set_pixel_data(np.zeros((5, 8), dtype=np.int16), "MONOCHROME2", 16)
    ds.save_as(files[2], enforce_file_format=True)
    odd = rf"mixed image sizes: 6 x 8 \(Rows x Columns\) in .*, 5 x 8 .* in {files[2].name}$"
    with pytest.raises(DataError, match=odd):
        read_series(folder)


def test_duplicate_position_and_tilt(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    order = _by_position(files)
    ipp1 = [float(v) for v in pydicom.dcmread(order[1]).ImagePositionPatient]
    ipp2 = np.array([float(v) for v in pydicom.dcmread(order[2]).ImagePositionPatient])
    _edit(order[2], ImagePositionPatient=_ds(ipp1))
    with pytest.raises(DataError, match="at the same position"):
        read_series(folder)
    iop = np.array([float(v) for v in pydicom.dcmread(order[2]).ImageOrientationPatient])
    _edit(order[2], ImagePositionPatient=_ds(ipp2 + 1.0 * iop[:3]))  # 1 mm sideways: not on the stack's axis
    with pytest.raises(DataError, match="off the stack's axis"):
        read_series(folder)


def test_missing_position_and_single_slice(tmp_path: Path) -> None:
    folder, files = _series(tmp_path, n=2)
    ds = pydicom.dcmread(files[0])
    del ds.ImagePositionPatient
    ds.save_as(files[0], enforce_file_format=True)
    with pytest.raises(DataError, match="ImagePositionPatient is missing"):
        read_series(folder)
    files[0].unlink()
    with pytest.raises(DataError, match="needs at least 2 slices"):
        read_series(folder)


def test_non_image_objects_are_passed_over(tmp_path: Path) -> None:
    from pydicom.uid import BasicTextSRStorage

    folder, files = _series(tmp_path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = Dataset()
    sr.file_meta = meta
    sr.SOPClassUID, sr.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    sr.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
    sr.save_as(folder / "report.dcm", enforce_file_format=True)
    assert read_series(folder).volume.shape == (8, 6, 6)


def test_no_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("not a scan")
    with pytest.raises(DataError, match=r"no DICOM files"):
        read_series(tmp_path / "d")
    (tmp_path / "d" / "broken.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match=r"broken\.dcm: DICOM file without image Rows/Columns: truncated"):
        read_series(tmp_path / "d")
    folder, files = _series(tmp_path)
    for cut, needle in ((300, r"DICOM file without image Rows/Columns \(CT Image Storage\)"), (-20, "cannot decode")):
        data = files[0].read_bytes()
        files[0].write_bytes(data[:cut])  # a truncated slice: header, or pixel data
        with pytest.raises(DataError, match=rf"{files[0].name}: {needle}") as e:
            read_series(folder)
        assert "\n" not in str(e.value)
        files[0].write_bytes(data)
    (tmp_path / "e" / "sub").mkdir(parents=True)
    (tmp_path / "e" / "sub" / "notes.txt").write_text("not a scan")
    with pytest.raises(DataError, match=r"no \.nii or \.nii\.gz files \(nor DICOM series\)"):
        list_images(tmp_path / "e")  # a folder of non-DICOM folders


def test_layout_lists_dicom_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for name in ("p2", "p1"):
        write_series(tmp_path / "root" / name, _stored(rng, (6, 5, 3)), oblique_affine(), [1.0] * 3, [0.0] * 3, rng)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "root" / "n_0000.nii.gz")
    (tmp_path / "root" / "empty").mkdir()
    root = tmp_path / "root"
    images = list_images(root)
    assert [p.name for p in images] == ["n_0000.nii.gz", "p1", "p2"]
    assert case_names(images) == ["n", "p1", "p2"]
    assert list_images(root / "p1") == [root / "p1"] and case_name(root / "p1" / ".") == "p1"
    # -o equal to -i: the case's own outputs next to the DICOM files are not scans; a foreign NIfTI is refused
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), root / "p1" / "p1_seg.nii.gz")
    assert list_images(root / "p1", root / "p1") == [root / "p1"]
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), root / "p1" / "other.nii.gz")
    with pytest.raises(DataError, match="holds DICOM files and NIfTI scans"):
        list_images(root / "p1")


def test_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = _series(tmp_path)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(DataError, match=r"is a DICOM folder; reading DICOM needs the optional extra") as e:
        read_series(folder)
    assert INSTALL_HINT in str(e.value) and "\n" not in str(e.value)
    assert list_images(folder) == [folder]  # detection needs no pydicom
    code = ("import sys; sys.modules['pydicom'] = None\n"
            "import tunepp_deploy.cli.app, tunepp_deploy.data.dicom, tunepp_deploy.data.layout\n"
            "print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ---- tunepp infer end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random phantom-config TUNE++ checkpoint (as tests/infer/conftest.py makes)."""
    from tunepp_deploy.config import load_config
    from tunepp_deploy.model import build_network
    from tunepp_deploy.train.checkpoint import save_checkpoint

    cfg = load_config(REPO / "configs" / "phantom.yaml")
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", net, cfg, epoch=0)


def _infer(inp: Path, out: Path, model: Path, *extra: str):
    return CliRunner().invoke(app, ["infer", "-i", str(inp), "-o", str(out), "--model", str(model), "--samples", "2",
                                    "--backend", "torch", "--device", "cpu", "--threads", "1", *extra])


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_infer_on_dicom_equals_infer_on_the_equivalent_nifti(tmp_path: Path, ckpt: Path) -> None:
    from tunepp_deploy.data.phantom import generate_case

    spacing = (1.8, 2.2, 2.5)
    hu = generate_case(np.random.default_rng(4), shape=(30, 26, 18), spacing=spacing).image
    slope, intercept = 0.5, -1024.0
    stored = np.rint((np.clip(hu, -1024, 3000) - intercept) / slope).astype(np.int16)
    aff = oblique_affine(spacing)
    rng = np.random.default_rng(9)
    files = write_series(tmp_path / "ct_case", stored, aff, [slope] * 18, [intercept] * 18, rng)
    nii = tmp_path / "nii" / "ct_case.nii.gz"
    nii.parent.mkdir()
    img = nib.Nifti1Image((stored.astype(np.float64) * slope + intercept).astype(np.float32), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, nii)

    res = _infer(tmp_path / "ct_case", tmp_path / "out_dcm", ckpt)
    assert res.exit_code == 0, res.output
    res = _infer(nii, tmp_path / "out_nii", ckpt)
    assert res.exit_code == 0, res.output
    seg_d = nib.load(tmp_path / "out_dcm" / "ct_case_seg.nii.gz")
    seg_n = nib.load(tmp_path / "out_nii" / "ct_case_seg.nii.gz")
    labels = np.asarray(seg_d.dataobj)
    assert labels.dtype == np.uint8 and labels.shape == (30, 26, 18)
    np.testing.assert_array_equal(labels, np.asarray(seg_n.dataobj))  # bit-identical
    assert len(np.unique(labels)) > 1  # a prediction, not a constant
    np.testing.assert_allclose(seg_d.affine, seg_n.affine, atol=1e-6)
    # the output overlays the series: its affine is the DICOM geometry, voxel for voxel
    assert oracle_check(seg_d.affine, read_series(tmp_path / "ct_case").volume.array, files) < 1e-3
    report = json.loads((tmp_path / "out_dcm" / "ct_case_report.json").read_text())
    assert report["dicom"]["slices"] == 18 and report["dicom"]["modality"] == "CT"
    assert report["input_shape"] == [30, 26, 18]
    for m in ("total", "epistemic", "aleatoric"):
        np.testing.assert_allclose(nib.load(tmp_path / "out_dcm" / f"ct_case_{m}.nii.gz").affine, seg_d.affine)


def test_infer_cli_series_choice_and_errors(tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    write_series(tmp_path / "two", _stored(rng, (16, 14, 8)), oblique_affine((2.0, 2.0, 2.5)), [1.0] * 8,
                 [-1024.0] * 8, rng, series_uid="1.2.3.4.1", prefix="A")
    write_series(tmp_path / "two", _stored(rng, (14, 12, 6)), np.diag([2.0, 2.0, 2.5, 1.0]), [1.0] * 6,
                 [-1024.0] * 6, rng, series_uid="1.2.3.4.2", prefix="B")
    _one_line_error(_infer(tmp_path / "two", tmp_path / "o1", ckpt), "1.2.3.4.1", "1.2.3.4.2", "--series-uid")
    assert not (tmp_path / "o1").exists()  # refused before the model was opened or a folder made
    res = _infer(tmp_path / "two", tmp_path / "o2", ckpt, "--series-uid", "1.2.3.4.2")
    assert res.exit_code == 0, res.output
    seg = nib.load(tmp_path / "o2" / "two_seg.nii.gz")
    assert seg.shape == (14, 12, 6)
    np.testing.assert_allclose(seg.affine, np.diag([2.0, 2.0, 2.5, 1.0]), atol=1e-9)
    assert json.loads((tmp_path / "o2" / "two_report.json").read_text())["dicom"]["series_uid"] == "1.2.3.4.2"
    _one_line_error(_infer(tmp_path / "two", tmp_path / "o3", ckpt, "--series-uid", "7.7"), "no series")
    # the same folder and -o with the other series: not "complete", a one-line refusal unless --overwrite
    _one_line_error(_infer(tmp_path / "two", tmp_path / "o2", ckpt, "--series-uid", "1.2.3.4.1"),
                    "made from DICOM series 1.2.3.4.2, not 1.2.3.4.1", "--overwrite")
    res = _infer(tmp_path / "two", tmp_path / "o2", ckpt, "--series-uid", "1.2.3.4.1", "--overwrite")
    assert res.exit_code == 0, res.output
    assert nib.load(tmp_path / "o2" / "two_seg.nii.gz").shape == (16, 14, 8)
    assert json.loads((tmp_path / "o2" / "two_report.json").read_text())["dicom"]["series_uid"] == "1.2.3.4.1"
    res = _infer(tmp_path / "two", tmp_path / "o2", ckpt, "--series-uid", "1.2.3.4.1")  # same series: resumes
    assert res.exit_code == 0 and "skipped two" in res.output, res.output
    (tmp_path / "empty").mkdir()
    _one_line_error(_infer(tmp_path / "empty", tmp_path / "o4", ckpt), "no .nii or .nii.gz files")
    nii = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), nii)
    _one_line_error(_infer(nii, tmp_path / "o5", ckpt, "--series-uid", "1.2"), "--series-uid picks a series")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    _one_line_error(_infer(tmp_path / "two", tmp_path / "o6", ckpt), INSTALL_HINT)
