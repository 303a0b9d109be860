"""Pairing prediction files with ground-truth labels, and loading one pair with its checks.

Predictions follow ``tunepp infer``'s names (:func:`tunepp_deploy.infer.case.output_paths`) —
or are plain ``NAME.nii.gz`` label maps as nnU-Net and TotalSegmentator write them, one naming per
folder (:func:`find_predictions`; ambiguity is a one-line error):
``NAME_seg.nii.gz`` (labels), the uncertainty maps ``NAME_<map>.nii.gz`` (in ``--unc`` or next to the
segmentation), optionally ``NAME_probs.nii.gz`` (4D, K class probabilities, needed for calibration
metrics) and ``NAME_report.json`` (its ``classes``, ``outputs`` and ``flag_map``). The maps read are
``NAME_total``, ``NAME_epistemic``, ``NAME_aleatoric`` (TUNE++, variational) plus every map the case
report lists in ``outputs`` (e.g. SegWithU's ``temperature``, ``calibration``, ``ranking``); the
report's ``flag_map`` — the map the method flags and triages by — is the main map of the evaluation
(ranking curve, TAUS, triage), ``total`` when there is no report. Truth is ``labelsTr/NAME.nii.gz``
under a dataset root (or a folder of ``NAME.nii.gz``); the scan for the report's slice panels is
looked up in the dataset's ``imagesTr`` (``NAME_0000.nii.gz`` or ``NAME.nii.gz``).

Every problem is a one-line :class:`DataError` naming the case: a prediction without truth, truth
without prediction (unless ``allow_missing``), grids that differ (shape, or affine beyond 1e-3 mm),
labels outside the class list, a probability file with the wrong number of channels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunepp_deploy.data.layout import _strip_nii
from tunepp_deploy.data.nifti import Volume, load_volume, open_nifti
from tunepp_deploy.errors import DataError

UNC_MAPS = ("total", "epistemic", "aleatoric")
SEG_SUFFIX = "_seg"
#: ``outputs`` keys of a case report that are not uncertainty maps.
NOT_MAPS = ("seg", "probs", "report")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one evaluated case (None where absent)."""

    name: str
    seg: Path
    truth: Path
    image: Path | None = None
    probs: Path | None = None
    unc: dict[str, Path] = field(default_factory=dict)
    flag_map: str | None = None


@dataclass
class LoadedEval:
    """One case in memory, on one grid."""

    name: str
    pred: np.ndarray
    truth: np.ndarray
    spacing: tuple[float, float, float]
    image: np.ndarray | None
    probs: np.ndarray | None
    unc: dict[str, np.ndarray]
    flag_map: str | None = None

    @property
    def main_map(self) -> str | None:
        """The map the evaluation ranks and triages by: the report's flag map, else ``total``, else the first."""
        if self.flag_map in self.unc:
            return self.flag_map
        if "total" in self.unc:
            return "total"
        return next(iter(self.unc), None)


def _nifti(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def truth_folder(gt: Path) -> Path:
    """``gt/labelsTr`` for a dataset root, else ``gt`` itself."""
    if not gt.is_dir():
        raise DataError(f"{gt}: ground-truth folder not found")
    return gt / "labelsTr" if (gt / "labelsTr").is_dir() else gt


def _scan_of_own_case(pred: Path, name: str, path: Path) -> bool:
    """True when ``path`` (``NAME.nii.gz`` in the prediction folder) is the scan of a ``tunepp infer`` case
    there (``-o`` equal to ``-i``): ``NAME_report.json`` names it as its ``input``."""
    rep = pred / f"{name}_report.json"
    if not rep.is_file():
        return False
    try:
        src = json.loads(rep.read_text()).get("input")
        return isinstance(src, str) and Path(src).resolve() == path.resolve()
    except (ValueError, OSError, AttributeError):
        return False


def find_predictions(pred: Path, truth_names: set[str]) -> tuple[dict[str, Path], str]:
    """``({case: segmentation file}, naming)`` of a prediction folder; naming is ``seg`` or ``plain``.

    Two namings are accepted, one per folder: ``tunepp infer``'s ``NAME_seg.nii.gz`` (with its maps and
    report next to it) and the plain ``NAME.nii.gz`` that nnU-Net and TotalSegmentator write, which pairs
    with the truth of the same name. A plain file is one whose name is a truth's; ``X_seg.nii.gz`` is ours
    for case ``X`` unless ``X_seg`` itself is a truth name and ``X`` is not. One-line :class:`DataError`
    where that cannot be decided: a file that is both (truths ``X`` and ``X_seg`` exist), a case with both
    ``NAME_seg`` and ``NAME`` files (the plain one is not the case's own scan, see below), or a folder
    mixing the two namings (two tools' outputs in one folder). With ``-o`` equal to ``-i`` our folder also
    holds the scans ``NAME.nii.gz``: a plain file that ``NAME_report.json`` names as its ``input`` is that
    case's scan, not a prediction.
    """
    ours: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    for p in sorted(pred.iterdir()):
        stem = _strip_nii(p.name)
        if not p.is_file() or stem == p.name or p.name.startswith("."):
            continue
        base = stem[: -len(SEG_SUFFIX)] if stem.endswith(SEG_SUFFIX) else None
        if base and stem in truth_names and base in truth_names:
            raise DataError(f"{p}: ambiguous prediction: the segmentation of case {base} (tunepp naming) or a "
                            f"prediction of case {stem} (plain naming); rename or move one of the truths")
        if base and stem not in truth_names:
            ours[base] = p
        elif stem in truth_names:
            plain[stem] = p
    for name, p in list(plain.items()):
        if name in ours and _scan_of_own_case(pred, name, p):
            del plain[name]
    both = sorted(set(ours) & set(plain))
    if both:
        n = both[0]
        raise DataError(f"case {n}: both {ours[n].name} and {plain[n].name} in {pred} could be its prediction "
                        f"({len(both)} such case(s)); keep one naming per folder")
    if ours and plain:
        a, b = next(iter(ours.values())), next(iter(plain.values()))
        raise DataError(f"{pred}: mixes NAME_seg.nii.gz predictions (e.g. {a.name}) with plain NAME.nii.gz ones "
                        f"(e.g. {b.name}); keep one naming per folder")
    return (ours, "seg") if ours or not plain else (plain, "plain")


def pair_cases(pred: Path, gt: Path, unc: Path | None = None, allow_missing: bool = False) -> list[CaseFiles]:
    """Match predictions (``NAME_seg`` or plain ``NAME``, :func:`find_predictions`) with ``NAME`` truths
    (module docstring), sorted by name."""
    if not pred.is_dir():
        raise DataError(f"{pred}: prediction folder not found")
    lab_dir = truth_folder(gt)
    img_dir = gt / "imagesTr" if (gt / "imagesTr").is_dir() else None
    unc_dir = unc or pred
    if not unc_dir.is_dir():
        raise DataError(f"{unc_dir}: uncertainty folder not found")
    truths = {_strip_nii(p.name): p for p in lab_dir.iterdir()
              if p.is_file() and p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith(".")}
    if pred.resolve() == lab_dir.resolve():
        raise DataError(f"{pred}: the prediction folder is the truth folder")
    preds, naming = find_predictions(pred, set(truths))
    if not preds:
        raise DataError(f"{pred}: no predictions found (NAME_seg.nii.gz, or NAME.nii.gz named like a truth in "
                        f"{lab_dir})")
    if naming == "plain":
        extra = sorted(p.name for p in pred.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name.endswith((".nii", ".nii.gz")) and _strip_nii(p.name) not in truths)
        if extra:
            raise DataError(f"{pred}/{extra[0]}: a plain NAME.nii.gz prediction with no truth "
                            f"{_strip_nii(extra[0])}.nii.gz in {lab_dir} ({len(extra)} such file(s))")
    for name in sorted(preds):
        if name not in truths:
            raise DataError(f"case {name}: prediction {preds[name].name} has no truth {name}.nii.gz in {lab_dir}")
    if not allow_missing:
        want = "{}_seg.nii.gz" if naming == "seg" else "{}.nii.gz"
        for name in sorted(truths):
            if name not in preds:
                raise DataError(f"case {name}: truth {truths[name].name} has no prediction {want.format(name)} in "
                                f"{pred} (use --allow-missing to evaluate only the predicted cases)")
    out = []
    for name in sorted(preds):
        image = None
        if img_dir is not None:
            image = _nifti(img_dir, f"{name}_0000") or _nifti(img_dir, name)
        listed, flag_map = report_maps(pred / f"{name}_report.json", name)
        names = [*UNC_MAPS, *(m for m in listed if m not in UNC_MAPS)]
        maps = {m: p for m in names if (p := _nifti(unc_dir, f"{name}_{m}")) is not None}
        out.append(CaseFiles(name, preds[name], truths[name], image, _nifti(pred, f"{name}_probs"), maps, flag_map))
    return out


def report_maps(report: Path, name: str) -> tuple[list[str], str | None]:
    """The uncertainty maps a case report lists in ``outputs`` and its ``flag_map`` (none without a report)."""
    if not report.is_file():
        return [], None
    try:
        body = json.loads(report.read_text())
    except ValueError:
        raise DataError(f"case {name}: {report} is not valid JSON") from None
    outputs = body.get("outputs") if isinstance(body, dict) else None
    listed = [str(k) for k in outputs if k not in NOT_MAPS] if isinstance(outputs, dict) else []
    flag = body.get("flag_map") if isinstance(body, dict) else None
    return listed, str(flag) if isinstance(flag, str) else None


def class_names(pred: Path, gt: Path, cases: list[CaseFiles]) -> list[str] | None:
    """Class names from the predictions' ``NAME_report.json`` or the dataset's ``dataset.json`` (None if neither).

    Two sources that disagree are an error: evaluating with the wrong class list would mislabel every row.
    """
    sources: list[tuple[str, list[str]]] = []
    for c in cases:
        rep = pred / f"{c.name}_report.json"
        if rep.is_file():
            try:
                classes = json.loads(rep.read_text()).get("classes")
            except ValueError:
                raise DataError(f"case {c.name}: {rep} is not valid JSON") from None
            if classes:
                sources.append((str(rep), list(classes)))
            break
    ds = gt / "dataset.json"
    if ds.is_file():
        try:
            classes = json.loads(ds.read_text()).get("classes")
        except ValueError:
            raise DataError(f"{ds}: not valid JSON") from None
        if isinstance(classes, list) and classes:
            sources.append((str(ds), [str(x) for x in classes]))
    if len(sources) == 2 and sources[0][1] != sources[1][1]:
        raise DataError(f"class lists differ: {sources[0][0]} has {sources[0][1]}, {sources[1][0]} has {sources[1][1]}")
    return sources[0][1] if sources else None


def _same_grid(a: Volume, b: Volume, name: str, what: str) -> None:
    if a.shape != b.shape:
        raise DataError(f"case {name}: {what} grid {b.shape} differs from the truth grid {a.shape}")
    if not np.allclose(a.affine, b.affine, atol=1e-3):
        raise DataError(f"case {name}: {what} affine differs from the truth's (not on the same grid)")


def _integer_valued(vol: Volume, name: str, what: str) -> np.ndarray:
    """The voxels of a label map, refused when any is not a whole number: rounding a float map (a
    probability or a resampled label map saved as a segmentation) would score something else silently."""
    arr = vol.array
    frac = arr != np.rint(arr)
    if frac.any():
        example = float(arr[frac].flat[0])
        raise DataError(f"case {name}: {what} {vol.path.name if vol.path else ''} holds {int(frac.sum())} non-integer "
                        f"values (e.g. {example:g}): not a label map")
    return arr


def _labels(vol: Volume, name: str, what: str, num_classes: int) -> np.ndarray:
    arr = _integer_valued(vol, name, what)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        present = sorted(int(v) for v in np.unique(arr))
        raise DataError(f"case {name}: {what} labels {present} are not in the label set 0..{num_classes - 1}")
    return arr.astype(np.uint8)


def _load_probs(path: Path) -> np.ndarray:
    """A probability file's voxels (float32), its header checked first like a scan's (cap, size, geometry)."""
    img = open_nifti(path)
    try:
        return np.asarray(img.dataobj, np.float32)
    except Exception as e:  # nibabel, gzip and OS errors of a damaged file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read as NIfTI ({msg[:160]})") from None


def load_pair(c: CaseFiles, num_classes: int, with_image: bool = True) -> LoadedEval:
    """Load and check one case (module docstring)."""
    truth = load_volume(c.truth)
    seg = load_volume(c.seg)
    _same_grid(truth, seg, c.name, "prediction")
    maps = {}
    for m, p in c.unc.items():
        v = load_volume(p)
        _same_grid(truth, v, c.name, f"{m} uncertainty")
        maps[m] = v.array.astype(np.float32)
    probs = None
    if c.probs is not None:
        arr = _load_probs(c.probs)
        if arr.ndim != 4 or tuple(arr.shape[:3]) != truth.shape:
            raise DataError(f"case {c.name}: {c.probs.name} shape {arr.shape}, expected {(*truth.shape, num_classes)}")
        if arr.shape[3] != num_classes:
            raise DataError(f"case {c.name}: {c.probs.name} has {arr.shape[3]} classes, the label set {num_classes}")
        probs = np.moveaxis(arr, 3, 0)
    image = None
    if with_image and c.image is not None:
        iv = load_volume(c.image)
        if iv.shape == truth.shape:
            image = iv.array
    return LoadedEval(
        c.name, _labels(seg, c.name, "prediction", num_classes), _labels(truth, c.name, "truth", num_classes),
        truth.spacing, image, probs, maps, c.flag_map,
    )


def max_truth_label(cases: list[CaseFiles]) -> int:
    """Largest label in any truth file: the label set when no class list exists (predictions must fit in it)."""
    return max(int(_integer_valued(load_volume(c.truth), c.name, "truth").max()) for c in cases)


__all__ = ["UNC_MAPS", "CaseFiles", "LoadedEval", "class_names", "find_predictions", "load_pair", "max_truth_label",
           "pair_cases", "report_maps", "truth_folder"]
