"""Topology report for a NIfTI segmentation: the library side of ``tunepp topo``.

Kept apart from the CLI so it can be called (and tested) without typer: it reads the file with
nibabel, checks that it is a 3D integer mask, computes per-label Betti numbers, Euler
characteristics and voxel counts, and optionally writes the EDT of the foreground with the
input's affine and header. Every user mistake becomes a one-line :class:`DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunepp_deploy.errors import DataError

from .api import distance_transform
from .backends import resolve
from .betti import betti_numbers, betti_per_label


@dataclass
class LabelTopology:
    """Topology of one label (or of the whole foreground, ``label = None``)."""

    label: int | None
    voxels: int
    betti: tuple[int, int, int]

    @property
    def euler(self) -> int:
        b0, b1, b2 = self.betti
        return b0 - b1 + b2

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "voxels": self.voxels, "betti": list(self.betti), "euler": self.euler}


@dataclass
class TopologyReport:
    """Everything ``tunepp topo`` prints."""

    path: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    backend: str
    labels: list[LabelTopology] = field(default_factory=list)
    foreground: LabelTopology | None = None
    edt_out: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "backend": self.backend,
            "labels": [t.as_dict() for t in self.labels],
            "foreground": self.foreground.as_dict() if self.foreground else None,
            "edt_out": self.edt_out,
        }


#: Largest label id accepted (int32, the kernels' label type); ids are remapped to 1..L internally.
MAX_LABEL_ID = int(np.iinfo(np.int32).max)


def load_mask(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], Any]:
    """Read a 3D integer-valued NIfTI mask; return ``(labels, spacing, nibabel image)``.

    Float images are accepted when every value is a non-negative integer (masks saved as float are
    common); anything else is not a mask and is refused rather than thresholded silently. The header
    is checked before the voxels are read (:func:`tunepp_deploy.data.nifti.open_nifti`: voxel cap,
    size against the file, spacing, affine), so a mask whose EDT could not be written is refused
    before any compute. ``labels`` keep the file's ids and voxel type; :func:`compact_labels` makes them
    dense int32.
    """
    from tunepp_deploy.data.nifti import open_nifti

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    img = open_nifti(p)
    if len(img.shape) != 3:
        raise DataError(f"{p}: expected a 3D mask, got a {len(img.shape)}D image of shape {tuple(img.shape)}")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{p}: cannot read as NIfTI ({type(e).__name__}: {detail})") from None
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise DataError(f"{p}: NaN or Inf voxels are not labels")
        if np.any(data != np.round(data)):
            raise DataError(f"{p}: float image with non-integer values is not a mask (expected 0/1 or label ids)")
    elif data.dtype.kind not in "iub":
        raise DataError(f"{p}: unsupported voxel type {data.dtype} for a mask")
    if data.size and data.min() < 0:
        raise DataError(f"{p}: negative values are not labels (minimum {data.min()})")
    if data.size and data.max() > MAX_LABEL_ID:
        raise DataError(f"{p}: label id {data.max():.0f} is above {MAX_LABEL_ID}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.asarray(data), zooms, img  # type: ignore[return-value]


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dense int32 labels, ids)``: label ``ids[j]`` becomes ``j + 1``, background stays 0.

    The per-label kernels size their tables by the largest id (``betti_per_label`` allocates one row
    and one bounding box per id up to it), so a mask holding the single id 2,000,000,000 would ask
    for tens of GiB; dense ids make the cost follow the labels present.
    """
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if not len(ids) or int(ids[-1]) == len(ids):  # already 1..L (the common case): no remap pass
        return np.ascontiguousarray(labels, dtype=np.int32), ids
    table = np.concatenate([[0], ids])
    return np.searchsorted(table, labels).astype(np.int32), ids


def save_like(data: np.ndarray, like: Any, out: str | Path) -> Path:
    """Save ``data`` as float32 NIfTI with ``like``'s affine and header, atomically (temp + rename);
    an unwritable folder or a full disk is one :class:`DataError` and leaves no file."""
    import nibabel as nib

    from tunepp_deploy.data.nifti import write_atomic

    out = Path(out)
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    img = type(like)(np.asarray(data, np.float32), like.affine, header)
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    write_atomic(out, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)
    return out


def topology_report(path: str | Path, edt_out: str | Path | None = None, backend: str = "auto") -> TopologyReport:
    """Compute the per-label topology of a NIfTI mask and optionally write the foreground EDT.

    ``edt_out`` is checked (name, folder writable) before the mask is read, so a bad path costs nothing.
    """
    from tunepp_deploy.data.nifti import check_output_file

    if edt_out is not None:
        check_output_file(edt_out, (".nii", ".nii.gz"), "EDT output")
    raw, spacing, img = load_mask(path)
    labels, ids = compact_labels(raw)
    del raw
    name = resolve(backend, labels)
    report = TopologyReport(path=str(path), shape=tuple(int(s) for s in labels.shape), spacing=spacing, backend=name)
    if len(ids):
        table = betti_per_label(labels, num_labels=len(ids), backend=name)
        counts = np.bincount(labels.ravel(), minlength=len(ids) + 1)
        for j, i in enumerate(ids, start=1):
            report.labels.append(LabelTopology(int(i), int(counts[j]), tuple(int(b) for b in table[j - 1])))
    fg = labels != 0
    if len(ids) > 1:
        report.foreground = LabelTopology(None, int(fg.sum()), betti_numbers(fg, backend=name))  # type: ignore[arg-type]
    if edt_out is not None:
        dist = distance_transform(fg, spacing, backend=name)
        report.edt_out = str(save_like(dist, img, edt_out))
    return report
