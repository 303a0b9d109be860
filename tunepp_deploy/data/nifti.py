"""Reading and writing NIfTI volumes without losing geometry.

Every map the toolkit writes must overlay its scan in any viewer, so arrays are kept in the file's
own voxel order (no reorientation) and written back with the source affine, qform/sform codes and
zooms. Writes go to a temporary file in the destination folder and are renamed into place, so an
interrupted run never leaves a half-written ``.nii.gz`` that a resumed batch would mistake for done.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tunepp_deploy.errors import DataError


@dataclass(frozen=True)
class Volume:
    """A 3D scan or label map with the geometry needed to write results back onto its grid."""

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the array's three axes, from the header zooms."""
        z = self.header.get_zooms()[:3]
        return (float(z[0]), float(z[1]), float(z[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


def load_volume(path: str | Path, *, dtype: type = np.float32, allow_nonfinite: bool = False) -> Volume:
    """Load a 3D NIfTI file; any problem becomes a one-line :class:`DataError` naming the file.

    A 4D file whose fourth axis has length 1 is squeezed (common for exported scans); any other
    dimensionality is refused, as are zero-size axes and, unless ``allow_nonfinite``, NaN/Inf voxels
    (they would silently poison intensity normalisation and every probability downstream).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(p))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"{p}: not a NIfTI image ({type(img).__name__})")
        if 0 in img.shape:
            raise DataError(f"{p}: image has a zero-size axis {tuple(img.shape)}")
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{p}: cannot read as NIfTI ({msg})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{p}: expected a 3D image, got {data.ndim}D with shape {tuple(data.shape)}")
    if min(data.shape) == 0:
        raise DataError(f"{p}: image has a zero-size axis {tuple(data.shape)}")
    arr = np.asarray(data, dtype=dtype)
    if not allow_nonfinite and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise DataError(f"{p}: {n} voxels are NaN or Inf")
    header = img.header.copy()
    return Volume(array=arr, affine=np.asarray(img.affine, dtype=np.float64), header=header, path=p)


def _nifti_suffix(path: Path) -> str:
    name = path.name
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    raise DataError(f"{path}: output name must end in .nii or .nii.gz")


def save_volume(array: np.ndarray, reference: Volume, path: str | Path, dtype: type | None = None) -> Path:
    """Write ``array`` on ``reference``'s grid (same affine, codes, zooms) atomically.

    The header is copied from the reference so sform/qform codes and the axis units survive; the
    data type and scaling are reset for the new content (a float map written with a label map's
    integer header would otherwise be truncated).
    """
    p = Path(path)
    suffix = _nifti_suffix(p)
    arr = np.asarray(array if dtype is None else array.astype(dtype, copy=False))
    if arr.shape != reference.shape:
        raise DataError(f"{p}: array shape {arr.shape} does not match the reference grid {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(arr.dtype)
    header.set_data_shape(arr.shape)
    img = nib.Nifti1Image(arr, reference.affine, header=header)
    sform, scode = reference.header.get_sform(coded=True)
    qform, qcode = reference.header.get_qform(coded=True)
    img.set_sform(reference.affine if sform is None else sform, code=int(scode) if scode else 1)
    img.set_qform(reference.affine if qform is None else qform, code=int(qcode) if qcode else 1)
    img.header.set_slope_inter(1.0, 0.0)
    write_atomic(p, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)
    return p


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, writer: Callable[[Path], object], suffix: str = "") -> None:
    """Run ``writer(tmp_path)`` then rename onto ``path``; clean up the temporary file on failure.

    The temporary file lives in the destination folder so the final ``os.replace`` is an atomic
    rename on the same file system. A full disk or unwritable folder surfaces as one DataError.
    ``mkstemp`` creates the file owner-only (0600); the result gets the mode a plain ``open`` would
    give (0666 minus the umask), so maps and models written on a shared server stay readable.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{path.parent}: cannot create output folder ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise DataError(f"{path.parent}: output folder is not writable")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:
        raise DataError(f"{path.parent}: output folder is not writable ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

