"""Find (image, label) pairs in the seed's dataset layouts.

* ``imagesTr``: Synapse / BTCV / Medical-Decathlon / nnU-Net style — ``imagesTr/NAME_0000.nii.gz``
  (or ``NAME.nii.gz``, or Synapse's ``imgXXXX.nii.gz``) with ``labelsTr/NAME.nii.gz`` (or
  ``labelXXXX.nii.gz``).
* ``acdc``: ``training/patientXXX/patientXXX_frameYY.nii.gz`` with ``..._frameYY_gt.nii.gz``
  (the 4D ``_4d.nii.gz`` cine files are ignored).

A missing folder or an image without its label is a one-line :class:`DataError` naming the file:
silently dropping cases would change the split without anyone noticing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tunepp_deploy.errors import DataError


@dataclass(frozen=True)
class CasePaths:
    """One training case: its name, image file and label file."""

    name: str
    image: Path
    label: Path


def _strip_nii(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _is_nifti(p: Path) -> bool:
    return p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith(".")


def _first_existing(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _images_tr(root: Path) -> list[CasePaths]:
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (expected {root}/imagesTr and {root}/labelsTr)")
    cases = []
    for img in sorted(p for p in img_dir.iterdir() if _is_nifti(p)):
        stem = _strip_nii(img.name)
        name = re.sub(r"_0000$", "", stem)
        candidates = [name, re.sub(r"^img", "label", name)]
        label = _first_existing(lab_dir / f"{c}{ext}" for c in candidates for ext in (".nii.gz", ".nii"))
        if label is None:
            raise DataError(f"{img}: no label found in {lab_dir} (looked for {candidates[0]}.nii.gz)")
        cases.append(CasePaths(name, img, label))
    return cases


def _acdc(root: Path) -> list[CasePaths]:
    train = root / "training" if (root / "training").is_dir() else root
    patients = sorted(p for p in train.glob("patient*") if p.is_dir())
    if not patients:
        raise DataError(f"{train}: no patientXXX folders found (ACDC layout)")
    cases = []
    for pdir in patients:
        for img in sorted(pdir.glob("*_frame[0-9][0-9].nii*")):
            stem = _strip_nii(img.name)
            label = _first_existing(pdir / f"{stem}_gt{e}" for e in (".nii.gz", ".nii"))
            if label is None:
                raise DataError(f"{img}: no label {stem}_gt.nii.gz next to it")
            cases.append(CasePaths(stem, img, label))
    return cases


def find_cases(root: str | Path, layout: str = "imagesTr") -> list[CasePaths]:
    """List the cases under ``root`` for ``layout`` (``imagesTr`` or ``acdc``), sorted by name."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: dataset folder not found")
    cases = _images_tr(r) if layout == "imagesTr" else _acdc(r)
    if not cases:
        raise DataError(f"{r}: no NIfTI images found for layout '{layout}'")
    return cases


def list_images(path: str | Path) -> list[Path]:
    """Scans to run inference on: one file, or every NIfTI file in a folder (sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and _is_nifti(f))
        if not files:
            raise DataError(f"{p}: no .nii or .nii.gz files in this folder")
        return files
    raise DataError(f"{p}: file or folder not found")


def case_name(path: Path) -> str:
    """Output name of a scan: file name without .nii(.gz) and without a ``_0000`` channel suffix."""
    return re.sub(r"_0000$", "", _strip_nii(path.name))
