"""Topology report for a NIfTI segmentation: the library side of ``tunepp topo``.

Kept apart from the CLI so it can be called (and tested) without typer: it reads the file with
nibabel, checks that it is a 3D integer mask, computes per-label Betti numbers, Euler
characteristics and voxel counts, and optionally writes the EDT of the foreground with the
input's affine and header. Every user mistake becomes a one-line :class:`DataError`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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


def load_mask(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], Any]:
    """Read a 3D integer-valued NIfTI mask; return ``(int32 labels, spacing, nibabel image)``.

    Float images are accepted when every value is a non-negative integer (masks saved as float are
    common); anything else is not a mask and is refused rather than thresholded silently.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{p}: cannot read as NIfTI ({type(e).__name__}: {detail})") from None
    if data.ndim != 3:
        raise DataError(f"{p}: expected a 3D mask, got a {data.ndim}D image of shape {data.shape}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise DataError(f"{p}: float image with non-integer values is not a mask (expected 0/1 or label ids)")
    elif data.dtype.kind not in "iub":
        raise DataError(f"{p}: unsupported voxel type {data.dtype} for a mask")
    if data.size and data.min() < 0:
        raise DataError(f"{p}: negative values are not labels (minimum {data.min()})")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{p}: header voxel sizes {zooms} are not finite and positive")
    return np.ascontiguousarray(data, dtype=np.int32), zooms, img  # type: ignore[return-value]


def save_like(data: np.ndarray, like: Any, out: str | Path) -> Path:
    """Save ``data`` as float32 NIfTI with ``like``'s affine and header, atomically (temp + rename)."""
    import nibabel as nib

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    img = type(like)(np.asarray(data, np.float32), like.affine, header)
    suffix = "".join(out.suffixes[-2:]) if out.name.endswith(".nii.gz") else out.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix or ".nii", dir=out.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


def topology_report(path: str | Path, edt_out: str | Path | None = None, backend: str = "auto") -> TopologyReport:
    """Compute the per-label topology of a NIfTI mask and optionally write the foreground EDT."""
    labels, spacing, img = load_mask(path)
    name = resolve(backend, labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    report = TopologyReport(path=str(path), shape=tuple(int(s) for s in labels.shape), spacing=spacing, backend=name)
    if len(ids):
        table = betti_per_label(labels, num_labels=int(ids.max()), backend=name)
        counts = np.bincount(labels.ravel(), minlength=int(ids.max()) + 1)
        for i in ids:
            report.labels.append(LabelTopology(int(i), int(counts[i]), tuple(int(b) for b in table[i - 1])))
    fg = labels != 0
    if len(ids) > 1:
        report.foreground = LabelTopology(None, int(fg.sum()), betti_numbers(fg, backend=name))  # type: ignore[arg-type]
    if edt_out is not None:
        dist = distance_transform(fg, spacing, backend=name)
        report.edt_out = str(save_like(dist, img, edt_out))
    return report
