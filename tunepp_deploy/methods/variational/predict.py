"""``tunepp infer --method variational``: scans in, segmentation + uncertainty maps + report out.

Per case, as TUNE++'s pipeline (:mod:`tunepp_deploy.infer.pipeline`) does it: load -> preprocess like
training (the model's config: spacing, normalisation) -> S weight samples, each stitched over the
whole scan with the Gaussian sliding-window blend (the exact per-sample blend; running moments, so
memory does not grow with S) -> maps (:mod:`.uncertainty`: aleatoric = expected Gini impurity,
epistemic = sum of class-probability variances, total = their sum = ``1 - sum p_bar^2``) ->
resampled to the input grid (trilinear; labels = argmax of the resampled mean probabilities) ->
topology report -> write. Outputs of case ``NAME`` match TUNE++'s, so every downstream tool
(``tunepp evaluate --unc``, viewers) reads them alike::

    NAME_seg.nii.gz, NAME_aleatoric.nii.gz, NAME_epistemic.nii.gz, NAME_total.nii.gz
    NAME_report.json   written LAST (the loop in tunepp_deploy.infer.batch resumes on it)

The noise seed and S come from the options (defaults: the config's ``infer.seed`` / ``infer.samples``);
sample ``s`` is one network applied to every window of the scan, identical on torch and ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepp_deploy import __version__
from tunepp_deploy.data.layout import case_name
from tunepp_deploy.data.nifti import load_volume
from tunepp_deploy.data.preprocess import preprocess_image
from tunepp_deploy.infer.batch import (
    BatchResult,
    CaseCallback,
    StageTimer,
    WindowProgress,
    run_batch,
    save_case,
)
from tunepp_deploy.infer.pipeline import DEFAULT_FLAG_THRESHOLD, MAP_NAMES, output_paths, to_input_grid
from tunepp_deploy.infer.report import build_report
from tunepp_deploy.infer.sliding_window import count_windows
from tunepp_deploy.methods.variational.noise import WeightNoise, sample_weight_noise
from tunepp_deploy.methods.variational.runners import VariationalRunner
from tunepp_deploy.methods.variational.uncertainty import SampleMoments
from tunepp_deploy.methods.volume import iter_sample_probs

DEFINITIONS = ("see tunepp_deploy/methods/variational/uncertainty.py: aleatoric = mean_s(1 - sum_k p_sk^2), "
               "epistemic = sum_k Var_s p_sk, total = aleatoric + epistemic = 1 - sum_k pbar_k^2")


@dataclass(frozen=True)
class VariationalInferOptions:
    """``None`` = the model config's ``infer`` default."""

    samples: int | None = None
    seed: int | None = None
    overlap: float | None = None
    max_batch: int | None = None
    overwrite: bool = False
    flag_threshold: float = DEFAULT_FLAG_THRESHOLD


@dataclass(frozen=True)
class _Resolved:
    samples: int
    seed: int
    overlap: float
    batch: int


def _resolve(runner: VariationalRunner, opts: VariationalInferOptions) -> _Resolved:
    d = runner.cfg.infer
    return _Resolved(opts.samples or d.samples, d.seed if opts.seed is None else opts.seed,
                     d.overlap if opts.overlap is None else opts.overlap, opts.max_batch or d.max_batch)


def infer_variational_case(
    image: Path, out_dir: Path, runner: VariationalRunner, noise: WeightNoise, opts: VariationalInferOptions,
    progress: WindowProgress | None = None,
) -> Path:
    """Run one scan end to end (module docstring); returns the report path."""
    r = _resolve(runner, opts)
    cfg = runner.cfg
    name = case_name(image)
    paths = output_paths(out_dir, name)
    timer = StageTimer()
    lap = timer.lap
    vol = load_volume(image)
    lap("load")
    pre = preprocess_image(vol.array, vol.spacing, cfg.data.spacing, cfg.data.intensity)
    lap("preprocess")
    windows = count_windows(pre.shape, runner.window, r.overlap)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, windows * r.samples)

    moments = SampleMoments()
    for p in iter_sample_probs(pre, lambda x, s: runner.logits(x, noise, s), r.samples, runner.window,
                               r.overlap, r.batch, step):
        moments.add(p)
    lap("sampling")
    seg, maps = to_input_grid(moments.maps(), vol.shape)
    lap("resample_to_input")
    report_maps = {k: maps[k] for k in ("total", "epistemic", "aleatoric", "mutual_information", "predictive_entropy")}
    body = build_report(seg, report_maps, list(cfg.data.classes), vol.spacing, vol.affine, opts.flag_threshold)
    lap("report")
    report: dict[str, Any] = {
        "name": name,
        "input": str(image),
        "method": "variational",
        "arch": runner.settings.get("arch"),
        "input_shape": list(vol.shape),
        "input_spacing": list(vol.spacing),
        "model_grid_shape": list(pre.shape),
        "model_spacing": list(cfg.data.spacing),
        "tunepp_version": __version__,
        "backend": runner.name,
        "runner": runner.describe(),
        "samples": r.samples,
        "seed": r.seed,
        "overlap": r.overlap,
        "window": list(runner.window),
        "windows": windows,
        "blend": "sample",
        "classes": list(cfg.data.classes),
        "uncertainty_definitions": DEFINITIONS,
        **body,
    }
    return save_case(paths, vol, seg, maps, MAP_NAMES, report, timer)


def infer_variational_paths(
    inputs: Path, out_dir: Path, runner: VariationalRunner, opts: VariationalInferOptions,
    on_case: CaseCallback | None = None, progress: WindowProgress | None = None,
) -> BatchResult:
    """Every scan under ``inputs`` (file or folder) through :func:`tunepp_deploy.infer.batch.run_batch`."""
    r = _resolve(runner, opts)
    noise = sample_weight_noise(runner.noise_shapes, r.samples, r.seed)
    return run_batch(inputs, out_dir, lambda im: infer_variational_case(im, out_dir, runner, noise, opts, progress),
                     opts.overwrite, on_case)


__all__ = ["VariationalInferOptions", "infer_variational_case", "infer_variational_paths"]
