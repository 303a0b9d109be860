"""``tunepp infer --method segwithu``: whole scans through backbone + SegWithU head, resumable.

Per scan: preprocess like training (the model's config) -> sliding windows through backbone + head
(one deterministic pass per window; Gaussian blend of the softmax, tempered softmax and the maps) ->
resample everything to the input grid (trilinear; labels = argmax of the resampled raw softmax —
identical to the tempered argmax by construction) -> topology report -> write::

    NAME_seg.nii.gz          uint8 labels
    NAME_temperature.nii.gz  float32 T >= 1
    NAME_calibration.nii.gz  float32 U_cal (the temperature is sqrt(1 + U_cal))
    NAME_ranking.nii.gz      float32 U_rnk (error-ranking score: higher = more likely wrong)
    NAME_report.json         written LAST: its presence marks a complete case

The report has TUNE++'s topology body (:func:`tunepp_deploy.infer.report.build_report`) with the
**ranking map in the role of "total"** — it is the map SegWithU trains to rank errors, so it drives
the flags and the triage score — and the calibration map next to it. U_rnk is a score, not a
probability variance, so ``flag_threshold`` is in its units (its floor is about ``exp(-4) ~ 0.02``
on confident voxels). The case loop (resume, isolation, cleanup) is :mod:`tunepp_deploy.infer.batch`.
Backends: ``head.pt`` on torch or the single-pass ONNX graph (:mod:`.export`) on ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    WindowProgress,
    report_path,
    run_batch,
    save_case,
)
from tunepp_deploy.infer.pipeline import DEFAULT_FLAG_THRESHOLD
from tunepp_deploy.infer.report import build_report
from tunepp_deploy.infer.sliding_window import count_windows, sliding_window
from tunepp_deploy.methods.segwithu.runner import SegWithURunner, WindowFn, torch_window_fn

MAP_NAMES = ("temperature", "calibration", "ranking")
DEFINITIONS = ("see tunepp_deploy/methods/segwithu/head.py; the report's 'total' is the ranking map U_rnk, "
               "'calibration' is U_cal, 'temperature' is T = sqrt(1 + U_cal)")


@dataclass
class SegWithUMaps:
    """Blended maps on the model grid: probs/tempered ``[K, ...]``, the rest ``[...]``."""

    probs: torch.Tensor
    tempered: torch.Tensor
    temperature: torch.Tensor
    u_cal: torch.Tensor
    u_rnk: torch.Tensor
    u_epi: torch.Tensor


@dataclass(frozen=True)
class SegWithUInferOptions:
    """``None`` = the model config's ``infer`` default."""

    overlap: float | None = None
    max_batch: int | None = None
    overwrite: bool = False
    flag_threshold: float = DEFAULT_FLAG_THRESHOLD


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """The files case ``name`` produces (``seg``, the three maps, ``report``)."""
    paths = {"seg": out_dir / f"{name}_seg.nii.gz"}
    paths.update({m: out_dir / f"{name}_{m}.nii.gz" for m in MAP_NAMES})
    paths["report"] = report_path(out_dir, name)
    return paths


def predict_volume(image: np.ndarray, window_fn: WindowFn, window: tuple[int, ...], overlap: float = 0.5,
                   batch: int = 2, progress: WindowProgress | None = None) -> SegWithUMaps:
    """Sliding-window SegWithU over a preprocessed ``image [D, H, W]``."""
    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    total = count_windows(image.shape, window, overlap)
    done = 0

    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        logits, tempered, t, u_cal, u_rnk, u_epi = window_fn(x)
        return [torch.softmax(logits, 1), torch.softmax(tempered, 1), t, u_cal, u_rnk, u_epi]

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    p, pt, t, uc, ur, ue = sliding_window(vol, predict, window, overlap=overlap, batch=batch, progress=step)
    return SegWithUMaps(p, pt, t[0], uc[0], ur[0], ue[0])


def infer_segwithu_case(
    image: Path, out_dir: Path, runner: SegWithURunner, opts: SegWithUInferOptions,
    progress: WindowProgress | None = None,
) -> Path:
    """Run one scan end to end (module docstring); returns the report path."""
    cfg = runner.cfg
    overlap = cfg.infer.overlap if opts.overlap is None else opts.overlap
    name = case_name(image)
    paths = output_paths(out_dir, name)
    timer = StageTimer()
    lap = timer.lap
    vol = load_volume(image)
    lap("load")
    pre = preprocess_image(vol.array, vol.spacing, cfg.data.spacing, cfg.data.intensity)
    lap("preprocess")
    maps = predict_volume(pre, runner.window_fn, runner.window, overlap, opts.max_batch or cfg.infer.max_batch,
                          progress)
    lap("inference")
    k = maps.probs.shape[0]
    stacked = torch.cat([maps.probs, maps.temperature[None], maps.u_cal[None], maps.u_rnk[None]])
    back = resample_tensor(stacked[None].float(), vol.shape)[0]
    seg = back[:k].argmax(0).numpy().astype(np.uint8)
    grid = {what: back[k + i].numpy().astype(np.float32) for i, what in enumerate(MAP_NAMES)}
    grid["temperature"] = np.maximum(grid["temperature"], 1.0)  # T >= 1 survives trilinear round-off exactly
    lap("resample_to_input")
    report_maps = {"total": grid["ranking"], "calibration": grid["calibration"], "temperature": grid["temperature"]}
    body = build_report(seg, report_maps, list(cfg.data.classes), vol.spacing, vol.affine, opts.flag_threshold)
    lap("report")
    report: dict[str, Any] = {
        "name": name,
        "input": str(image),
        "method": "segwithu",
        "input_shape": list(vol.shape),
        "input_spacing": list(vol.spacing),
        "model_grid_shape": list(pre.shape),
        "model_spacing": list(cfg.data.spacing),
        "tunepp_version": __version__,
        "backend": runner.name,
        "runner": runner.describe(),
        "samples": 1,
        "overlap": overlap,
        "window": list(runner.window),
        "windows": count_windows(pre.shape, runner.window, overlap),
        "classes": list(cfg.data.classes),
        "uncertainty_definitions": DEFINITIONS,
        **body,
    }
    return save_case(paths, vol, seg, grid, MAP_NAMES, report, timer)


def infer_segwithu_paths(
    inputs: Path, out_dir: Path, runner: SegWithURunner, opts: SegWithUInferOptions | None = None,
    on_case: CaseCallback | None = None, progress: WindowProgress | None = None,
) -> BatchResult:
    """Every scan under ``inputs`` (file or folder) through :func:`tunepp_deploy.infer.batch.run_batch`."""
    o = opts or SegWithUInferOptions()
    return run_batch(inputs, out_dir, lambda im: infer_segwithu_case(im, out_dir, runner, o, progress),
                     o.overwrite, on_case)


__all__ = [
    "MAP_NAMES",
    "SegWithUInferOptions",
    "SegWithUMaps",
    "WindowFn",
    "infer_segwithu_case",
    "infer_segwithu_paths",
    "output_paths",
    "predict_volume",
    "torch_window_fn",
]
