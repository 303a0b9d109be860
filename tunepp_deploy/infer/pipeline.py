"""``tunepp infer``: scans in, segmentation + uncertainty maps + report out, resumable over folders.

Per case: load (one-line error for anything unusable) -> resample to the model's spacing and
normalise (the training preprocessing, read from the model's metadata) -> sliding-window MC on the
runner -> resample the probabilities and maps back to the input grid on the device (trilinear;
labels are the argmax of the resampled mean probabilities, smoother than resampling labels) ->
topology report -> write.

Outputs of case ``NAME`` (the input's affine and header geometry, via ``save_volume``)::

    NAME_seg.nii.gz        uint8 labels
    NAME_aleatoric.nii.gz  float32   (definitions: tunepp_deploy.infer.uncertainty)
    NAME_epistemic.nii.gz  float32
    NAME_total.nii.gz      float32
    NAME_report.json       written LAST: its presence marks a complete case

Every file is written to a temporary name and renamed, so a crash never leaves a truncated file;
a case whose report exists is skipped on the next run (unless ``overwrite``), one whose report is
missing is redone, and a failing case has its partial outputs removed, is reported, and the batch
goes on — the loop over cases is :mod:`tunepp_deploy.infer.batch`, shared with the other methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunepp_deploy import __version__
from tunepp_deploy.data.layout import case_name
from tunepp_deploy.data.nifti import load_volume
from tunepp_deploy.data.preprocess import preprocess_image, resample_tensor
from tunepp_deploy.infer.batch import (
    BatchResult,
    CaseCallback,
    StageTimer,
    check_output_dir,
    report_path,
    run_batch,
    save_case,
)
from tunepp_deploy.infer.masks import SampleMasks, sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.report import build_report
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.uncertainty import UncertaintyMaps

MAP_NAMES = ("aleatoric", "epistemic", "total")
#: Default threshold on a region's mean total uncertainty for the report's flags (probability
#: variance summed over classes; 0.1 ~ a voxel whose top class wavers by about +-0.2 across samples).
DEFAULT_FLAG_THRESHOLD = 0.1


@dataclass(frozen=True)
class InferOptions:
    """Everything ``tunepp infer`` takes besides inputs, outputs and the model."""

    mc: MCSettings = field(default_factory=MCSettings)
    overwrite: bool = False
    flag_threshold: float = DEFAULT_FLAG_THRESHOLD


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """The files case ``name`` produces (``seg``, the three maps, ``report``)."""
    paths = {"seg": out_dir / f"{name}_seg.nii.gz"}
    paths.update({m: out_dir / f"{name}_{m}.nii.gz" for m in MAP_NAMES})
    paths["report"] = report_path(out_dir, name)
    return paths


def to_input_grid(maps: UncertaintyMaps, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Resample all maps to the input grid at once; labels = argmax of the resampled probabilities.

    Resampling the probabilities (not the labels) gives smoother boundaries; ``total`` is re-summed
    after clamping so ``total = aleatoric + epistemic`` holds exactly in the written maps.
    """
    stacked = resample_tensor(maps.stacked()[None].float(), shape)[0]
    back = UncertaintyMaps.unstack(stacked)
    seg = back.mean_probs.argmax(0).to(torch.uint8)
    out = {
        "aleatoric": back.aleatoric.clamp_min(0.0),
        "epistemic": back.epistemic.clamp_min(0.0),
        "predictive_entropy": back.predictive_entropy.clamp_min(0.0),
        "mutual_information": back.mutual_information.clamp_min(0.0),
    }
    out["total"] = out["aleatoric"] + out["epistemic"]
    return seg.cpu().numpy(), {k: v.float().cpu().numpy() for k, v in out.items()}


def infer_case(
    image: Path,
    out_dir: Path,
    runner: Runner,
    masks: SampleMasks,
    opts: InferOptions,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Run one scan end to end; returns the report path. Raises TuneppError for unusable input."""
    meta = runner.meta
    name = case_name(image)
    paths = output_paths(out_dir, name)
    timer = StageTimer()
    lap = timer.lap
    vol = load_volume(image)
    lap("load")
    pre = preprocess_image(vol.array, vol.spacing, meta.spacing, meta.intensity)
    x = torch.from_numpy(pre)[None].to(runner.device)
    lap("preprocess")
    result = mc_predict(x, runner, masks, opts.mc, progress=progress)
    lap("mc_inference")
    seg, maps = to_input_grid(result.maps, vol.shape)
    lap("resample_to_input")
    report_maps = {k: maps[k] for k in ("total", "epistemic", "aleatoric", "mutual_information", "predictive_entropy")}
    body = build_report(seg, report_maps, meta.classes, vol.spacing, vol.affine, opts.flag_threshold)
    lap("report")
    report: dict[str, Any] = {
        "name": name,
        "input": str(image),
        "input_shape": list(vol.shape),
        "input_spacing": list(vol.spacing),
        "model_grid_shape": list(pre.shape),
        "model_spacing": list(meta.spacing),
        "tunepp_version": __version__,
        "model_version": meta.version,
        "backend": runner.name,
        "runner": runner.describe(),
        "temperature": getattr(runner, "temperature", None),
        "samples": masks.samples,
        "seed": masks.seed,
        "overlap": opts.mc.overlap,
        "windows": result.windows,
        "runner_calls": result.calls,
        "windows_per_call": result.plan.windows_per_call,
        "samples_per_call": result.plan.samples_per_call,
        "blend": result.blend,
        "classes": meta.classes,
        "uncertainty_definitions": "see tunepp_deploy/infer/uncertainty.py (total = epistemic + aleatoric)",
        **body,
    }
    return save_case(paths, vol, seg, maps, MAP_NAMES, report, timer)


def infer_paths(
    inputs: Path,
    out_dir: Path,
    runner: Runner,
    opts: InferOptions,
    on_case: CaseCallback | None = None,
    progress: Callable[[int], None] | None = None,
) -> BatchResult:
    """Run every scan under ``inputs`` (a file or a folder), resuming and isolating failures.

    The loop is :func:`tunepp_deploy.infer.batch.run_batch` (shared with the other methods):
    ``on_case(name, status, message)`` is called after each case (status: done, skipped, failed); a
    single-file input re-raises its error (the CLI prints one line and exits 2).
    """
    masks = sample_masks(runner.meta.sites, runner.meta.window, opts.mc.samples, opts.mc.seed)
    return run_batch(inputs, out_dir, lambda image: infer_case(image, out_dir, runner, masks, opts, progress),
                     opts.overwrite, on_case)


__all__ = [
    "DEFAULT_FLAG_THRESHOLD",
    "MAP_NAMES",
    "BatchResult",
    "InferOptions",
    "check_output_dir",
    "infer_case",
    "infer_paths",
    "output_paths",
    "to_input_grid",
]
