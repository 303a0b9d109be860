"""Reading and writing NIfTI volumes without losing geometry.

Every map the toolkit writes must overlay its scan in any viewer, so arrays are kept in the file's
own voxel order (no reorientation) and written back with the source affine, qform/sform codes and
zooms. Writes go to a temporary file in the destination folder and are renamed into place, so an
interrupted run never leaves a half-written ``.nii.gz`` that a resumed batch would mistake for done.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
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


#: Default voxel cap: 1024**3 / 4 = 268,435,456 voxels (1 GiB as float32, a 645^3 volume; the largest
#: CT series are ~512 x 512 x 1000 = 262M). A header claiming more is refused before any voxel is read,
#: so a corrupt or hostile header (4000^3) cannot make the loader allocate gigabytes.
DEFAULT_MAX_VOXELS = 1024**3 // 4
#: Environment variable that overrides :data:`DEFAULT_MAX_VOXELS` (a positive integer).
MAX_VOXELS_ENV = "TUNEPP_MAX_VOXELS"
#: An affine whose 3x3 part has ``|det| / prod(column norms)`` below this is treated as singular: the
#: ratio is 1 for orthogonal axes (any spacing) and tends to 0 as two axes become parallel, so it does
#: not depend on the voxel size the way a bare determinant does.
SINGULAR_RATIO = 1e-6


def max_voxels(override: int | None = None) -> int:
    """The voxel cap in force: ``override``, else ``$TUNEPP_MAX_VOXELS``, else :data:`DEFAULT_MAX_VOXELS`."""
    if override is not None:
        cap = int(override)
    else:
        raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_VOXELS
        try:
            cap = int(float(raw))  # "268435456" or "2.7e8"
        except (ValueError, OverflowError):
            raise DataError(f"{MAX_VOXELS_ENV}={raw!r} is not a whole number of voxels") from None
    if cap <= 0:
        raise DataError(f"voxel cap must be positive, got {cap} ({MAX_VOXELS_ENV})")
    return cap


def check_geometry(affine: np.ndarray, zooms: tuple[float, ...], where: str | Path) -> None:
    """Refuse a grid that cannot be written back or resampled: non-finite or non-positive voxel sizes,
    a non-finite affine, or one whose axes are (nearly) degenerate. nibabel would only fail on such a
    header when the results are written, after the whole compute."""
    z = [float(v) for v in zooms[:3]]
    if not all(math.isfinite(v) and v > 0 for v in z):
        raise DataError(f"{where}: voxel sizes {tuple(z)} in the header are not finite and positive")
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise DataError(f"{where}: the affine (voxel-to-world matrix) has NaN or Inf entries")
    m = a[:3, :3]
    norms = float(np.prod(np.linalg.norm(m, axis=0)))
    if norms == 0.0 or abs(float(np.linalg.det(m))) / norms < SINGULAR_RATIO:
        raise DataError(f"{where}: the affine (voxel-to-world matrix) is singular: the image has no valid geometry")


def check_header(img: nib.Nifti1Image | nib.Nifti2Image, path: Path, cap: int | None = None) -> None:
    """Checks on the header alone, before any voxel is read (so nothing large is allocated).

    Zero-size axes; more voxels than the cap (:func:`max_voxels`); for an uncompressed ``.nii`` a data
    block that would run past the end of the file (``vox_offset + voxels * itemsize``: a truncated file or
    a header claiming a larger image). A ``.nii.gz`` cannot be sized without decompressing it, so there
    only the cap protects, and a truncated stream is caught by the read. Then :func:`check_geometry`.
    """
    shape = tuple(int(s) for s in img.shape)
    if 0 in shape:
        raise DataError(f"{path}: image has a zero-size axis {shape}")
    voxels = math.prod(shape)
    limit = max_voxels(cap)
    if voxels > limit:
        raise DataError(f"{path}: header claims {' x '.join(map(str, shape))} = {voxels:,} voxels, above the cap "
                        f"of {limit:,} (set {MAX_VOXELS_ENV} to raise it)")
    if path.name.lower().endswith(".nii"):  # uncompressed: the file holds every byte the header promises
        needed = int(img.header.get_data_offset()) + voxels * img.header.get_data_dtype().itemsize
        size = path.stat().st_size
        if needed > size:
            raise DataError(f"{path}: header describes {needed:,} bytes but the file has {size:,} "
                            "(truncated file or corrupt header)")
    check_geometry(img.affine, img.header.get_zooms(), path)


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fix log lines ("setting 0 dims to 1"): they would be extra lines on the
    user's stderr, and every problem they fix silently is either checked here or harmless."""
    logger = nib.imageglobals.logger
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _stored_pixdim(path: Path) -> np.ndarray | None:
    """``pixdim`` as stored in the file, before nibabel's load-time fixes (it turns a zero voxel size
    into 1, which would make the spacing disagree with the affine); None when the header is unreadable
    (``nib.load`` then words the error)."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as f:
            block = f.read(nib.Nifti2Header.sizeof_hdr)
        for cls in (nib.Nifti1Header, nib.Nifti2Header):
            if len(block) >= cls.sizeof_hdr and cls.may_contain_header(block):
                return np.asarray(cls(block[: cls.sizeof_hdr], check=False)["pixdim"], dtype=np.float64)
    except Exception:  # corrupt or foreign: reported by nib.load
        return None
    return None


def open_nifti(path: str | Path, cap: int | None = None) -> nib.Nifti1Image | nib.Nifti2Image:
    """``nib.load`` of a NIfTI file with every header check done (:func:`check_header`); no voxel is read.

    The one way the toolkit opens an image, so scans, masks, label maps and probability files all get
    the same refusals, in one line naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a NIfTI file")
    pixdim = _stored_pixdim(p)
    if pixdim is not None and np.any(pixdim[1:4] == 0):
        raise DataError(f"{p}: voxel sizes {tuple(float(v) for v in pixdim[1:4])} in the header include zero")
    try:
        with _quiet_nibabel():
            img = nib.load(str(p))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{p}: cannot read as NIfTI ({msg})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{p}: not a NIfTI image ({type(img).__name__})")
    check_header(img, p, cap)
    return img


def load_volume(
    path: str | Path, *, dtype: type = np.float32, allow_nonfinite: bool = False, cap: int | None = None
) -> Volume:
    """Load a 3D NIfTI file; any problem becomes a one-line :class:`DataError` naming the file.

    A 4D file whose fourth axis has length 1 is squeezed (common for exported scans); any other
    dimensionality is refused, as are zero-size axes and, unless ``allow_nonfinite``, NaN/Inf voxels
    (they would silently poison intensity normalisation and every probability downstream). The header
    is checked before the voxels are read (:func:`check_header`: voxel cap ``cap`` or
    ``$TUNEPP_MAX_VOXELS``, size against the file, spacing and affine), so a case that could not be
    written back is refused here rather than after its compute.
    """
    p = Path(path)
    img = open_nifti(p, cap)
    shape = tuple(int(s) for s in img.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise DataError(f"{p}: expected a 3D image, got {len(shape)}D with shape {shape}")
    try:
        with _quiet_nibabel():
            data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise DataError(f"{p}: not enough memory to read {shape} voxels") from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
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


def check_output_folder(folder: str | Path) -> None:
    """Prove that files can be created in ``folder`` before any long work, without creating anything.

    A folder that does not exist yet is judged by its nearest existing ancestor (where it would be
    created); a path that exists as a file, or an ancestor that is a file, is refused. Writability is
    proved with a uniquely named probe file (``mkstemp``), not ``os.access``: root passes every
    permission check, yet cannot create files in ``/proc`` or on a read-only mount.
    """
    f = Path(folder)
    if f.exists() and not f.is_dir():
        raise DataError(f"{f}: exists and is not a folder")
    base = f
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise DataError(f"{f}: cannot create output folder ({base} is not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tunepp_probe.", dir=base)
    except OSError as e:
        raise DataError(f"{f}: output folder is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | Path, suffixes: tuple[str, ...] = (), what: str = "output") -> Path:
    """Refuse an output file path before the work that produces it: a name without one of ``suffixes``,
    a folder or a non-regular file at the path, or a folder that cannot take it (:func:`check_output_folder`)."""
    p = Path(path)
    if suffixes and not p.name.endswith(suffixes):
        raise DataError(f"{p}: {what} name must end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a file name for the {what}")
    if p.exists() and not p.is_file():
        raise DataError(f"{p}: exists and is not a regular file")
    check_output_folder(p.parent)
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

