"""One CT/MR DICOM series in, as a :class:`~tunepp_deploy.data.nifti.Volume` whose NIfTI affine is the
series' own geometry, so every output of ``tunepp infer`` overlays the series in a viewer.

Reading is done with pydicom (the optional extra ``[dicom]``; imported only when a DICOM folder is
read, so the toolkit works without it) and the geometry is computed here, in a few lines that the tests
check voxel by voxel; docs/dicom.md says why this was preferred to SimpleITK or dicom2nifti. The rules:

* **one series per case**: every DICOM image file directly in the folder (Part-10 files with the
  ``DICM`` preamble, or files named ``*.dcm``; hidden files and subfolders are not looked at) is grouped
  by SeriesInstanceUID; several series need ``series_uid`` (``--series-uid``), and the error lists them.
  Non-image objects (DICOMDIR, structured reports, presentation states) are passed over; a file of an
  image class without Rows/Columns (truncated) is refused;
* **slice order by position**: slices are sorted by the projection of ImagePositionPatient on the slice
  normal (row cosine x column cosine), never by InstanceNumber or file order (both are often wrong);
* **a regular grid or nothing**: one orientation, one pixel spacing and one Rows x Columns for every
  slice; uniform steps along the normal (a missing slice, a gap, two slices at one position or a
  tilted/sheared stack are one-line errors naming the files). Each slice's position may deviate from
  the fitted grid by at most :data:`POSITION_TOL` of the slice step;
* **values**: ``stored * RescaleSlope + RescaleIntercept`` per slice (HU for CT), as float32;
* **geometry**: voxel ``(i, j, k)`` is column ``i``, row ``j`` of the ``k``-th slice in position order,
  and the affine maps it to the DICOM patient coordinate (LPS, mm) with x and y negated (NIfTI is
  RAS): ``diag(-1, -1, 1, 1) @ [X*dc | Y*dr | n*dz | P0]`` with X, Y the row and column cosines of
  ImageOrientationPatient, (dr, dc) = PixelSpacing, n the normal, dz the slice step and P0 the first
  slice's ImagePositionPatient. qform and sform are both set (code 1, scanner), units mm.

The voxel cap of :mod:`tunepp_deploy.data.nifti` is applied from the headers, before any pixel is read.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunepp_deploy.data.nifti import MAX_VOXELS_ENV, Volume, check_geometry, max_voxels
from tunepp_deploy.errors import DataError

#: What to install for DICOM input (named in the error a DICOM folder gives without it).
INSTALL_HINT = "pip install tunepp-deploy[dicom]"
#: NIfTI world (RAS+) from DICOM patient coordinates (LPS+): x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest difference between two slices' direction cosines still read as one orientation (DS values
#: are rounded to 16 characters; 1e-4 is ~0.006 degrees).
ORIENTATION_TOL = 1e-4
#: Largest deviation of a slice from the fitted uniform grid, as a fraction of the slice step, along the
#: normal (a gap or uneven spacing) and across it (a tilted or sheared stack).
POSITION_TOL = 0.01
#: Largest departure of ImageOrientationPatient from two orthogonal unit vectors.
COSINE_TOL = 1e-3


def _is_part10(path: Path) -> bool:
    """A DICOM Part-10 file: 128-byte preamble then ``DICM`` (read without pydicom)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _candidates(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror or e})") from None
    return [p for p in entries if not p.name.startswith(".") and p.is_file()
            and not p.name.endswith((".nii", ".nii.gz"))]


def dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (Part-10 preamble, or a ``.dcm`` name), sorted by name."""
    return [p for p in _candidates(Path(folder)) if p.suffix.lower() == ".dcm" or _is_part10(p)]


def is_dicom_folder(folder: str | Path) -> bool:
    """Whether ``folder`` directly holds at least one DICOM file (stops at the first; no pydicom needed)."""
    f = Path(folder)
    return f.is_dir() and any(p.suffix.lower() == ".dcm" or _is_part10(p) for p in _candidates(f))


def dicom_subfolders(folder: str | Path) -> list[Path]:
    """The non-hidden subfolders of ``folder`` that are DICOM folders (one series each), sorted by name."""
    f = Path(folder)
    try:
        subs = sorted(p for p in f.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{f}: cannot list the folder ({e.strerror or e})") from None
    return [p for p in subs if is_dicom_folder(p)]


def _pydicom(folder: Path) -> Any:
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{folder}: is a DICOM folder; reading DICOM needs the optional extra: "
                        f"{INSTALL_HINT}") from None
    return pydicom


@dataclass(frozen=True)
class _Slice:
    path: Path
    orientation: np.ndarray  # (6,) row cosine X, column cosine Y
    position: np.ndarray  # (3,) LPS mm
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    size: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float


@dataclass(frozen=True)
class SeriesSummary:
    """One series found in a folder, for listing and choosing."""

    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]
    #: The files' headers (no pixels), kept so that reading the chosen series parses each header once.
    headers: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def line(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({self.modality or '?'}{desc}, {len(self.files)} files)"


@dataclass(frozen=True)
class DicomSeries:
    """A series read onto its grid: the volume (float32, rescaled) and what identifies it."""

    volume: Volume
    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]  # in slice (position) order

    def describe(self) -> dict[str, Any]:
        """What a case report records about its DICOM input."""
        return {"series_uid": self.uid, "modality": self.modality, "description": self.description,
                "slices": len(self.files)}


def _one_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0] or type(e).__name__


def _read_header(pydicom: Any, path: Path) -> Any:
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, force=not _is_part10(path))
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, ValueError, struct.error...
        raise DataError(f"{path}: cannot read as DICOM ({_one_line(e)})") from None


def _read_header_and_pixels(pydicom: Any, path: Path) -> Any:
    try:
        return pydicom.dcmread(str(path), force=not _is_part10(path))
    except Exception as e:
        raise DataError(f"{path}: cannot read as DICOM ({_one_line(e)})") from None


def _is_image(ds: Any, path: Path) -> bool:
    """A slice (Rows and Columns), or a non-image object to pass over (DICOMDIR, a report, a presentation
    state: its SOP class is not an image storage class). A file of an image class without Rows, or of no
    class at all, is refused: pydicom reads a truncated file without complaint, as a shorter dataset, and
    dropping a slice silently would change the volume."""
    if "Rows" in ds and "Columns" in ds:
        return True
    meta = getattr(ds, "file_meta", None)
    sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if sop is None or "Image Storage" in getattr(sop, "name", ""):
        raise DataError(f"{path}: DICOM file without image Rows/Columns{f' ({sop.name})' if sop else ''}: "
                        "truncated or incomplete?")
    return False


def list_series(folder: str | Path) -> list[SeriesSummary]:
    """Every image series directly in ``folder`` (headers only), sorted by SeriesInstanceUID.

    No DICOM file, or DICOM files none of which is an image, is a one-line :class:`DataError`.
    """
    f = Path(folder)
    if not f.is_dir():
        raise DataError(f"{f}: DICOM folder not found")
    files = dicom_files(f)
    if not files:
        raise DataError(f"{f}: no DICOM files (*.dcm or files with the DICM preamble) in this folder")
    pydicom = _pydicom(f)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for p in files:
        ds = _read_header(pydicom, p)
        if _is_image(ds, p):
            groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((p, ds))
    if not groups:
        raise DataError(f"{f}: {len(files)} DICOM files but none is an image (no Rows/Columns)")
    out = []
    for uid, members in sorted(groups.items()):
        ds0 = members[0][1]
        out.append(SeriesSummary(uid, str(ds0.get("Modality", "") or ""), str(ds0.get("SeriesDescription", "") or ""),
                                 tuple(p for p, _ in members), tuple(ds for _, ds in members)))
    return out


def choose_series(folder: str | Path, series_uid: str | None = None) -> SeriesSummary:
    """The series to read: the only one, or the one with ``series_uid``; otherwise a one-line error
    listing the series found (UID, modality, description, file count)."""
    found = list_series(folder)
    listing = "; ".join(s.line() for s in found)
    if series_uid is not None:
        match = [s for s in found if s.uid == series_uid]
        if not match:
            raise DataError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found {listing}")
        return match[0]
    if len(found) > 1:
        raise DataError(f"{folder}: holds {len(found)} DICOM series; pick one with --series-uid: {listing}")
    return found[0]


def _floats(ds: Any, tag: str, n: int, path: Path) -> np.ndarray:
    raw = ds.get(tag)
    try:
        vals = np.array([float(v) for v in (raw if raw is not None else [])], dtype=np.float64)
    except (TypeError, ValueError):
        vals = np.array([])
    if vals.shape != (n,) or not np.isfinite(vals).all():
        raise DataError(f"{path}: {tag} is missing or not {n} numbers ({raw!r}); cannot place the slice")
    return vals


def _scalar(ds: Any, tag: str, default: float, path: Path) -> float:
    raw = ds.get(tag)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {tag} {raw!r} is not a number") from None
    if not np.isfinite(v):
        raise DataError(f"{path}: {tag} {raw!r} is not finite")
    return v


def _slice(ds: Any, path: Path) -> _Slice:
    frames = ds.get("NumberOfFrames")
    if frames is not None and str(frames).strip() not in ("", "1"):
        raise DataError(f"{path}: multi-frame (enhanced) DICOM with {frames} frames is not supported; convert the "
                        "series to NIfTI (e.g. dcm2niix) first")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise DataError(f"{path}: {spp} samples per pixel (colour); a CT/MR series has one")
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if not (spacing > 0).all():
        raise DataError(f"{path}: PixelSpacing {tuple(spacing)} is not positive")
    slope = _scalar(ds, "RescaleSlope", 1.0, path)
    if slope == 0.0:
        raise DataError(f"{path}: RescaleSlope is 0 (every value would be the intercept)")
    return _Slice(path, _floats(ds, "ImageOrientationPatient", 6, path), _floats(ds, "ImagePositionPatient", 3, path),
                  (float(spacing[0]), float(spacing[1])), (int(ds.Rows), int(ds.Columns)), slope,
                  _scalar(ds, "RescaleIntercept", 0.0, path))


def stack_geometry(
    orientation: np.ndarray, positions: np.ndarray, pixel_spacing: Sequence[float], names: Sequence[str], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Slice order and NIfTI (RAS) affine of a stack of slices sharing one orientation and pixel spacing.

    ``orientation``: ImageOrientationPatient (row cosine X, column cosine Y); ``positions``: (n, 3)
    ImagePositionPatient (LPS, mm) in any order; ``pixel_spacing``: (between rows, between columns).
    Returns ``(order, affine)``: ``positions[order]`` ascend along the normal ``X x Y``. A stack that
    is not a uniform grid (module docstring) is a one-line :class:`DataError` naming ``names``.
    """
    x, y = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64)
    if abs(np.linalg.norm(x) - 1) > COSINE_TOL or abs(np.linalg.norm(y) - 1) > COSINE_TOL or abs(x @ y) > COSINE_TOL:
        raise DataError(f"{where}: ImageOrientationPatient {tuple(orientation)} is not two orthogonal unit vectors")
    normal = np.cross(x, y)
    normal /= np.linalg.norm(normal)
    pos = np.asarray(positions, dtype=np.float64)
    n = pos.shape[0]
    if n < 2:
        raise DataError(f"{where}: a 3D series needs at least 2 slices, found {n}")
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    same = int(np.argmin(steps))
    if steps[same] <= 1e-6 * max(1.0, float(np.abs(along).max())):
        a, b = names[order[same]], names[order[same + 1]]
        raise DataError(f"{where}: slices {a} and {b} are at the same position ({along[order[same]]:.3f} mm along the "
                        "normal): several acquisitions, echoes or phases in one series? Split them into folders")
    dz = float((along[order[-1]] - along[order[0]]) / (n - 1))
    p0 = pos[order[0]]
    expected = p0 + np.outer(np.arange(n), normal * dz)
    dev = pos[order] - expected
    dev_along = dev @ normal
    dev_across = np.linalg.norm(dev - np.outer(dev_along, normal), axis=1)
    median = float(np.median(steps))
    if np.abs(dev_along).max() > POSITION_TOL * dz:
        k = int(np.argmax(np.abs(steps - median)))
        a, b = names[order[k]], names[order[k + 1]]
        raise DataError(f"{where}: slice spacing is not uniform: {steps[k]:.4g} mm between {a} and {b}, against "
                        f"{median:.4g} mm elsewhere (a missing slice or a gap?)")
    if dev_across.max() > POSITION_TOL * dz:
        k = int(np.argmax(dev_across))
        raise DataError(f"{where}: slice {names[order[k]]} is {dev_across[k]:.3g} mm off the stack's axis (gantry tilt "
                        "or a sheared stack); resample the series to an orthogonal grid first")
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    lps = np.eye(4)
    lps[:3, 0] = x * dc
    lps[:3, 1] = y * dr
    lps[:3, 2] = normal * dz
    lps[:3, 3] = p0
    return order, LPS_TO_RAS @ lps


def _same(slices: Sequence[_Slice], where: str) -> None:
    """One orientation, pixel spacing and image size for every slice, else a one-line error naming a file
    of the most common value and the first file that differs from it (the odd one out)."""

    def check(key: Any, what: str, show: Any) -> None:
        keys = [key(s) for s in slices]
        common = Counter(keys).most_common(1)[0][0]
        ref = slices[keys.index(common)]
        odd = next((s for s, k in zip(slices, keys, strict=True) if k != common), None)
        if odd is not None:
            raise DataError(f"{where}: mixed {what}: {show(ref)} in {ref.path.name}, {show(odd)} in {odd.path.name}")

    digits = int(-np.log10(ORIENTATION_TOL))
    check(lambda s: tuple(np.round(s.orientation, digits)), "orientations",
          lambda s: f"ImageOrientationPatient {tuple(float(v) for v in s.orientation)}")
    check(lambda s: s.size, "image sizes", lambda s: f"{s.size[0]} x {s.size[1]} (Rows x Columns)")
    check(lambda s: tuple(np.round(s.spacing, 4)), "pixel spacings", lambda s: f"PixelSpacing {s.spacing}")


def _header(affine: np.ndarray, shape: tuple[int, int, int]) -> Any:
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype=np.float32), affine)
    hdr = img.header
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_xyzt_units("mm")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_zooms(tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)))
    return hdr


def _pixels(pydicom: Any, s: _Slice) -> np.ndarray:
    ds = _read_header_and_pixels(pydicom, s.path)
    try:
        arr = ds.pixel_array
    except Exception as e:  # compressed without a decoder plugin, truncated pixel data, ...
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = f", transfer syntax {ts.name}" if ts is not None else ""
        raise DataError(f"{s.path}: cannot decode the pixel data ({_one_line(e)}{syntax}); compressed series need "
                        "pydicom's decoder plugins (pylibjpeg) or a conversion to NIfTI") from None
    if arr.shape != s.size:
        raise DataError(f"{s.path}: pixel data is {arr.shape}, the header says {s.size} (Rows x Columns)")
    return arr


def read_series(folder: str | Path, series_uid: str | None = None, *, cap: int | None = None,
                pixels: bool = True) -> DicomSeries:
    """Read the series in ``folder`` (:func:`choose_series`) onto its grid (module docstring).

    ``pixels=False`` checks everything the headers can tell (series choice, orientation, spacing, sizes,
    the voxel cap) and returns a volume of the right shape and geometry without reading any pixel (the
    CLI uses it to refuse a bad series before loading the model). Any problem: one-line :class:`DataError`.
    """
    f = Path(folder)
    chosen = choose_series(f, series_uid)
    pydicom = _pydicom(f)
    where = f"{f} (series {chosen.uid})" if chosen.uid else str(f)
    slices = [_slice(ds, p) for p, ds in zip(chosen.files, chosen.headers, strict=True)]
    _same(slices, where)
    order, affine = stack_geometry(slices[0].orientation, np.stack([s.position for s in slices]),
                                   slices[0].spacing, [s.path.name for s in slices], where)
    rows, cols = slices[0].size
    shape = (cols, rows, len(slices))
    voxels = cols * rows * len(slices)
    limit = max_voxels(cap)
    if voxels > limit:
        raise DataError(f"{where}: {cols} x {rows} x {len(slices)} = {voxels:,} voxels, above the cap of {limit:,} "
                        f"(set {MAX_VOXELS_ENV} to raise it)")
    header = _header(affine, shape)
    check_geometry(affine, header.get_zooms(), where)
    ordered = [slices[i] for i in order]
    if pixels:
        array = np.empty(shape, dtype=np.float32)
        for k, s in enumerate(ordered):
            hu = _pixels(pydicom, s).astype(np.float64) * s.slope + s.intercept
            array[:, :, k] = hu.T  # (Rows, Columns) -> (column i, row j)
    else:
        array = np.zeros((1, 1, 1), dtype=np.float32)
        array = np.broadcast_to(array, shape)
    vol = Volume(array=array, affine=affine, header=header, path=f)
    return DicomSeries(vol, chosen.uid, chosen.modality, chosen.description, tuple(s.path for s in ordered))


def check_report_series(report: str | Path, uid: str) -> None:
    """Refuse to resume a case whose report was made from another series of the same folder.

    Resume knows a case by its name, the folder's; without this, rerunning with another
    ``--series-uid`` into the same output folder would skip the case as complete and keep the first
    series' outputs. A missing or unreadable report is left to the resume logic.
    """
    import json

    r = Path(report)
    try:
        made = json.loads(r.read_text()).get("dicom", {}).get("series_uid")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(made, str) and made != uid:
        raise DataError(f"{r}: made from DICOM series {made}, not {uid}; rerun with --overwrite to redo it, or use "
                        "another -o")


def dicom_case_name(folder: str | Path) -> str:
    """Case name of a DICOM folder: its own name, as given (``.`` and ``..`` resolved without following links)."""
    return Path(os.path.abspath(folder)).name


__all__ = [
    "INSTALL_HINT",
    "LPS_TO_RAS",
    "DicomSeries",
    "SeriesSummary",
    "check_report_series",
    "choose_series",
    "dicom_case_name",
    "dicom_files",
    "dicom_subfolders",
    "is_dicom_folder",
    "list_series",
    "read_series",
    "stack_geometry",
]
