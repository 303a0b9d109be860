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


#: Suffixes of the files ``tunepp infer`` writes next to a case (``NAME_<suffix>.nii.gz``): the
#: segmentation, the 4D probabilities and every method's maps (TUNE++ / variational, SegWithU, saliency).
#: With ``-o`` equal to ``-i`` these are the tool's own outputs, not scans (tests check every predictor's
#: map names are here).
OUTPUT_SUFFIXES = ("seg", "probs", "aleatoric", "epistemic", "total", "temperature", "calibration", "ranking",
                   "fused", "saliency_variance", "predictive_variance")


def _is_own_output(f: Path, cases: set[str], folder: Path) -> bool:
    """``X_<suffix>.nii(.gz)`` where ``X`` is another scan's case name or has a ``X_report.json`` here."""
    stem = _strip_nii(f.name)
    for suffix in OUTPUT_SUFFIXES:
        base = stem.removesuffix(f"_{suffix}")
        if base != stem and base and (base in cases or (folder / f"{base}_report.json").exists()):
            return True
    return False


def list_images(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Scans to run inference on: one file, a DICOM folder (one series: the folder is the scan), or every
    NIfTI file and every DICOM subfolder in a folder (sorted).

    Hidden files are never scans (the tool's own temporary and lock files are hidden). A dangling
    symbolic link with a NIfTI name is listed, so the batch reports it as a failed case by name instead
    of skipping it without a word. When ``out_dir`` is the folder itself (``-o`` equal to ``-i``), the
    tool's own outputs (:data:`OUTPUT_SUFFIXES` of a listed case, or of a case with a report there) are
    left out, so a rerun does not feed them back as scans. A folder holding DICOM files and NIfTI scans
    other than its own outputs is refused (which one is the scan?). Detecting DICOM needs no pydicom.
    """
    from tunepp_deploy.data import dicom

    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if _is_nifti(f) and (f.is_file() or (f.is_symlink() and not f.exists())))
        if dicom.is_dicom_folder(p):
            scans = [f for f in files if not _is_own_output(f, {dicom.dicom_case_name(p)}, p)]
            if scans:
                raise DataError(f"{p}: holds DICOM files and NIfTI scans ({scans[0].name}); put the DICOM series "
                                "in a folder of its own")
            return [p]
        series = dicom.dicom_subfolders(p)
        if out_dir is not None and _same_folder(p, Path(out_dir)):
            cases = {case_stem(f) for f in files} | {s.name for s in series}
            files = [f for f in files if not _is_own_output(f, cases, p)]
        if not files and not series:
            raise DataError(f"{p}: no .nii or .nii.gz files (nor DICOM series) in this folder")
        return sorted([*files, *series], key=lambda f: f.name)
    raise DataError(f"{p}: file or folder not found")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def case_stem(path: Path) -> str:
    """File name without .nii(.gz) and without a ``_0000`` channel suffix (unchecked: see :func:`case_name`)."""
    return re.sub(r"_0000$", "", _strip_nii(path.name))


def case_name(path: Path) -> str:
    """Output name of a scan: file name without .nii(.gz) and without a ``_0000`` channel suffix; for a
    DICOM series folder, the folder's name unchanged.

    An empty name (``.nii.gz``, ``_0000.nii.gz``) or a hidden one (``..nii.gz`` -> ``.``) is a one-line
    :class:`DataError`: its outputs would be hidden files (``._seg.nii.gz``) or clash with the tool's own.
    """
    if path.is_dir():  # a DICOM series folder: its own name (tunepp_deploy.data.dicom.dicom_case_name)
        from tunepp_deploy.data.dicom import dicom_case_name

        name = dicom_case_name(path)
    else:
        name = case_stem(path)
    if not name or name.startswith("."):
        raise DataError(f"{path}: its case name '{name}' is empty or hidden; rename the scan (e.g. case.nii.gz)")
    return name


def case_names(images: Iterable[Path]) -> list[str]:
    """The case name of every scan, checked before any work: invalid names (:func:`case_name`) and scans
    whose names map to the same case (``case.nii``, ``case.nii.gz``, ``case_0000.nii.gz``, which would
    overwrite each other's outputs) are one-line :class:`DataError` s."""
    seen: dict[str, list[Path]] = {}
    names = []
    for im in images:
        n = case_name(im)
        seen.setdefault(n, []).append(im)
        names.append(n)
    clashes = {n: ps for n, ps in seen.items() if len(ps) > 1}
    if clashes:
        n, ps = next(iter(clashes.items()))
        more = f" (and {len(clashes) - 1} more cases)" if len(clashes) > 1 else ""
        raise DataError(f"{', '.join(str(p) for p in ps)} map to the same case '{n}'{more}; rename or move all "
                        "but one")
    return names
