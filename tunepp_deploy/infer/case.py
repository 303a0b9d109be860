"""The one case pipeline: a scan of any method enters here and leaves as NIfTI + a JSON report.

Per case, whatever the :class:`~tunepp_deploy.predictors.base.Predictor`: load (a NIfTI file, or a DICOM
series folder via :mod:`tunepp_deploy.data.dicom`; one-line error for anything unusable) -> resample to
the model's spacing and normalise (the training preprocessing, from the model's config) ->
``predictor.predict`` on the model grid -> resample the probabilities and maps
back to the input grid (trilinear; labels = argmax of the resampled probabilities, smoother than
resampling labels) -> ``predictor.finish_maps`` (invariants such as ``total = aleatoric + epistemic``)
-> topology report -> write. Outputs of case ``NAME`` keep the input's affine and header geometry::

    NAME_seg.nii.gz          uint8 labels
    NAME_<map>.nii.gz        float32, one per predictor.map_names (TUNE++ / variational: aleatoric,
                             epistemic, total; SegWithU: temperature, calibration, ranking; saliency:
                             fused, saliency_variance, predictive_variance)
    NAME_probs.nii.gz        float32 4D predictive probabilities (only with ``write_probs``, for
                             ``tunepp evaluate --model``'s calibration metrics)
    NAME_report.json         written LAST: it marks a complete case, with the run ``manifest`` and the
                             ``output_files`` (name, bytes, SHA-256 of each) that resume verifies

Every file is written to a temporary name and renamed; a failing case has its partial outputs removed
and the batch goes on (:mod:`tunepp_deploy.infer.batch`, which walks folders, locks and resumes;
:mod:`tunepp_deploy.infer.manifest` for what makes a report trustworthy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunepp_deploy import __version__
from tunepp_deploy.data.layout import case_name
from tunepp_deploy.data.nifti import Volume, load_volume, save_volume
from tunepp_deploy.data.preprocess import preprocess_image, resample_tensor
from tunepp_deploy.infer.batch import (
    BatchResult,
    CaseCallback,
    StageTimer,
    case_outputs,
    report_path,
    run_batch,
    write_report,
)
from tunepp_deploy.infer.manifest import complete_report, run_manifest
from tunepp_deploy.infer.report import build_report
from tunepp_deploy.predictors.base import Prediction, Predictor, Progress

#: Default threshold on a region's mean flag-map value (TUNE++: total = 1 - sum_k pbar_k^2, the predictive
#: Gini). Chosen on data (docs/results/flag_threshold.md: Youden optimum 0.299 +- 0.017 over 3 phantom
#: repeats, in-distribution + 3 shifts): at the old 0.1, every organ was flagged (its boundary Gini alone
#: gives a mean of 0.12-0.37); at 0.3, 2 of 48 organs and every wrong fragment.
DEFAULT_FLAG_THRESHOLD = 0.3


@dataclass(frozen=True)
class CaseOptions:
    """What the pipeline does besides predicting."""

    overwrite: bool = False
    flag_threshold: float = DEFAULT_FLAG_THRESHOLD
    write_probs: bool = False
    #: The model file the predictor was opened from: its SHA-256 goes into each report's run manifest
    #: (``None``: recorded as unknown).
    model: Path | None = None
    #: SeriesInstanceUID to read from a DICOM folder that holds several series (``--series-uid``).
    series_uid: str | None = None


def output_paths(out_dir: Path, name: str, map_names: tuple[str, ...], write_probs: bool = False) -> dict[str, Path]:
    """The files case ``name`` produces (``seg``, the maps, optionally ``probs``, ``report``)."""
    paths = {"seg": out_dir / f"{name}_seg.nii.gz"}
    paths.update({m: out_dir / f"{name}_{m}.nii.gz" for m in map_names})
    if write_probs:
        paths["probs"] = out_dir / f"{name}_probs.nii.gz"
    paths["report"] = report_path(out_dir, name)
    return paths


def to_input_grid(pred: Prediction, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Resample probabilities and maps to the input grid at once -> ``(seg, probs, maps)`` (numpy).

    Probabilities are clamped >= 0 and renormalised after trilinear interpolation; labels are their argmax.
    """
    names = list(pred.maps)
    k = pred.probs.shape[0]
    stacked = torch.cat([pred.probs.float(), *(pred.maps[n].float()[None] for n in names)])
    back = resample_tensor(stacked[None], shape)[0]
    probs = back[:k].clamp_min(0.0)
    probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-12)
    seg = probs.argmax(0).to(torch.uint8).cpu().numpy()
    maps = {n: back[k + i].cpu().numpy().astype(np.float32) for i, n in enumerate(names)}
    return seg, probs.cpu().numpy().astype(np.float32), maps


def _save_probs(probs: np.ndarray, vol: Volume, path: Path) -> Path:
    import nibabel as nib

    from tunepp_deploy.data.nifti import write_atomic

    img = nib.Nifti1Image(np.moveaxis(probs, 0, -1).astype(np.float32), vol.affine, vol.header.copy())
    img.header.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    write_atomic(path, lambda tmp: nib.save(img, str(tmp)), suffix=".nii.gz")
    return path


def run_case(image: Path, out_dir: Path, predictor: Predictor, opts: CaseOptions | None = None,
             progress: Progress | None = None) -> Path:
    """One scan end to end (module docstring); returns the report path. Raises TuneppError for unusable input."""
    o = opts or CaseOptions()
    name = case_name(image)
    paths = output_paths(out_dir, name, predictor.map_names, o.write_probs)
    timer = StageTimer()
    dicom: dict[str, Any] = {}
    if image.is_dir():  # a DICOM series folder (tunepp_deploy.data.dicom; the [dicom] extra)
        from tunepp_deploy.data.dicom import read_series

        series = read_series(image, o.series_uid)
        vol, dicom = series.volume, {"dicom": series.describe()}
    else:
        vol = load_volume(image)
    timer.lap("load")
    pre = preprocess_image(vol.array, vol.spacing, predictor.spacing, predictor.intensity)
    timer.lap("preprocess")
    pred = predictor.predict(pre, progress)
    timer.lap("inference")
    seg, probs, maps = to_input_grid(pred, vol.shape)
    maps = predictor.finish_maps(maps)
    timer.lap("resample_to_input")
    for m, arr in (("probabilities", probs), *maps.items()):
        if not np.isfinite(arr).all():
            raise RuntimeError(f"the {m} map has non-finite values (the model produced NaN/Inf)")
    body = build_report(seg, predictor.report_maps(maps), predictor.classes, vol.spacing, vol.affine,
                        o.flag_threshold)
    timer.lap("report")
    report: dict[str, Any] = {
        "name": name,
        "input": str(image),
        **dicom,
        **predictor.describe(),
        "runner": predictor.describe_runner(),
        "input_shape": list(vol.shape),
        "input_spacing": list(vol.spacing),
        "model_grid_shape": list(pre.shape),
        "model_spacing": list(predictor.spacing),
        "tunepp_version": __version__,
        **pred.info,
        "classes": predictor.classes,
        "flag_map": predictor.flag_map,
        "uncertainty_definitions": predictor.definitions,
        **body,
    }
    with case_outputs() as written:
        written.append(save_volume(seg, vol, paths["seg"], dtype=np.uint8))
        for m in predictor.map_names:
            written.append(save_volume(maps[m], vol, paths[m], dtype=np.float32))
        if o.write_probs:
            written.append(_save_probs(probs, vol, paths["probs"]))
        timer.lap("write")
        files = {k: p for k, p in paths.items() if k != "report"}
        manifest = run_manifest(predictor, o.model, o.flag_threshold)
        write_report(paths["report"], {**complete_report(report, files, manifest), "timing_s": timer.seconds})
    return paths["report"]


def run_paths(inputs: Path | Sequence[Path], out_dir: Path, predictor: Predictor, opts: CaseOptions | None = None,
              on_case: CaseCallback | None = None, progress: Progress | None = None) -> BatchResult:
    """Every scan under ``inputs`` (a file, a folder or a list of a dataset's images), locking, resuming
    (verified against this run's manifest) and isolating failures (:func:`tunepp_deploy.infer.batch.run_batch`);
    a single-file input re-raises its error."""
    o = opts or CaseOptions()
    return run_batch(inputs, out_dir, lambda im: run_case(im, out_dir, predictor, o, progress), o.overwrite, on_case,
                     manifest=run_manifest(predictor, o.model, o.flag_threshold),
                     outputs_of=lambda n: output_paths(out_dir, n, predictor.map_names, o.write_probs))


__all__ = ["DEFAULT_FLAG_THRESHOLD", "CaseOptions", "output_paths", "run_case", "run_paths", "to_input_grid"]
