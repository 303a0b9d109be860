"""Run an evaluation end to end: from prediction folders, or from a model run on a dataset first.

``evaluate_folders`` loads one case at a time (only the worst cases are loaded again for their
slice panels), so memory stays at one case. ``predict_dataset`` runs the MC inference engine's
library API in-process (:func:`tunepp_deploy.infer.mc.mc_predict` on a runner from
:func:`tunepp_deploy.infer.runners.open_runner`, with a stored temperature applied through
:class:`tunepp_deploy.calibrate.temperature.TemperedRunner`) and writes the files ``tunepp infer``
writes plus ``NAME_probs.nii.gz`` (mean MC probabilities, 4D), so calibration metrics are available.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.data.nifti import load_volume, save_volume, write_atomic
from tunepp_deploy.data.preprocess import preprocess_image, resample_tensor
from tunepp_deploy.errors import DataError
from tunepp_deploy.evaluation.cases import class_names, load_pair, max_truth_label, pair_cases
from tunepp_deploy.evaluation.compute import CaseResult, EvalOptions, aggregate, evaluate_case
from tunepp_deploy.evaluation.report import (
    plot_case_panel,
    plot_reliability,
    plot_risk_coverage,
    plot_triage,
    plot_unc_hist,
    worst_cases,
    write_markdown,
    write_tables,
)


@dataclass(frozen=True)
class EvalResult:
    """Where the evaluation went and its summary."""

    out: Path
    summary: dict[str, Any]
    files: list[Path]


def evaluate_folders(
    pred: Path, gt: Path, out: Path, unc: Path | None = None, opts: EvalOptions | None = None,
    allow_missing: bool = False, worst: int = 3, on_case: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate ``pred`` against ``gt`` into ``out`` (metrics.json, metrics.csv, report.md, PNGs)."""
    opts = opts or EvalOptions()
    cases = pair_cases(pred, gt, unc, allow_missing)
    classes = class_names(pred, gt, cases)
    if classes is None:
        k = max_truth_label(cases) + 1
        classes = ["background", *(f"label{i}" for i in range(1, k))]
    if len(classes) < 2:
        raise DataError(f"{gt}: the label set has no foreground class")
    results: list[CaseResult] = []
    for c in cases:
        loaded = load_pair(c, len(classes), with_image=False)
        results.append(evaluate_case(loaded, classes, opts))
        if on_case:
            on_case(c.name)
    summary = aggregate(results, classes, opts)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(out, results, summary)

    plots: dict[str, Path | None] = {"reliability diagram": plot_reliability(results, out / "reliability.png")}
    pooled = [r for r in results if r.pool_unc is not None]
    if pooled:
        u = np.concatenate([r.pool_unc for r in pooled])  # type: ignore[misc]
        e = np.concatenate([r.pool_err for r in pooled])  # type: ignore[misc]
        plots["risk-coverage curve"] = plot_risk_coverage(u, e, out / "risk_coverage.png")
        plots["uncertainty vs error"] = plot_unc_hist(u, e, out / "uncertainty_vs_error.png")
        plots["triage curve"] = plot_triage(summary, out / "triage.png")
    else:
        plots.update({"risk-coverage curve": None, "uncertainty vs error": None, "triage curve": None})
    panels = []
    by_name = {c.name: c for c in cases}
    for r in worst_cases(results, worst):
        loaded = load_pair(by_name[r.name], len(classes), with_image=True)
        panels.append(plot_case_panel(loaded, r, len(classes), out / f"worst_{r.name}.png"))
    md = write_markdown(out, summary, plots, panels)
    files = [out / "metrics.json", out / "metrics.csv", md, *(p for p in plots.values() if p), *panels]
    return EvalResult(out, summary, files)


@torch.no_grad()
def predict_dataset(
    model: Path, data: Path, out: Path, samples: int | None = None, seed: int | None = None,
    backend: str = "auto", device: str = "auto", use_temperature: bool = True, layout: str | None = None,
    on_case: Callable[[str], None] | None = None,
) -> list[str]:
    """MC inference of every case under ``data`` into ``out``: seg, maps, report-free probabilities."""
    from tunepp_deploy.infer.masks import sample_masks
    from tunepp_deploy.infer.mc import MCSettings, mc_predict
    from tunepp_deploy.infer.runners import open_runner
    from tunepp_deploy.infer.uncertainty import UncertaintyMaps

    out.mkdir(parents=True, exist_ok=True)
    runner = open_runner(model, backend, device, temperature=use_temperature)
    names = []
    with runner:
        meta = runner.meta
        d = meta.config.infer
        mc = MCSettings(samples=samples or d.samples, seed=d.seed if seed is None else seed, overlap=d.overlap,
                        max_batch=d.max_batch, memory_gb=d.memory_gb)
        masks = sample_masks(meta.sites, meta.window, mc.samples, mc.seed)
        for case in find_cases(data, layout or meta.config.data.layout):
            vol = load_volume(case.image)
            x = torch.from_numpy(preprocess_image(vol.array, vol.spacing, meta.spacing, meta.intensity))[None]
            res = mc_predict(x.to(runner.device), runner, masks, mc)
            back = UncertaintyMaps.unstack(resample_tensor(res.maps.stacked()[None].float(), vol.shape)[0])
            probs = back.mean_probs.clamp_min(0.0)
            probs = (probs / probs.sum(0, keepdim=True).clamp_min(1e-12)).cpu().numpy()
            epi = back.epistemic.clamp_min(0.0).cpu().numpy()
            ale = back.aleatoric.clamp_min(0.0).cpu().numpy()
            save_volume(probs.argmax(0).astype(np.uint8), vol, out / f"{case.name}_seg.nii.gz")
            for name, arr in (("epistemic", epi), ("aleatoric", ale), ("total", epi + ale)):
                save_volume(arr.astype(np.float32), vol, out / f"{case.name}_{name}.nii.gz")
            img = nib.Nifti1Image(np.moveaxis(probs, 0, -1).astype(np.float32), vol.affine, vol.header.copy())
            img.header.set_data_dtype(np.float32)
            img.header.set_slope_inter(1.0, 0.0)
            write_atomic(out / f"{case.name}_probs.nii.gz", lambda tmp, im=img: nib.save(im, str(tmp)),
                         suffix=".nii.gz")
            rep = json.dumps({"case": case.name, "classes": meta.classes, "samples": mc.samples, "seed": mc.seed,
                              "temperature": getattr(runner, "temperature", None),
                              "written_by": "tunepp evaluate --model"}, indent=2)
            write_atomic(out / f"{case.name}_report.json", lambda tmp, txt=rep: tmp.write_text(txt))
            names.append(case.name)
            if on_case:
                on_case(case.name)
    return names


__all__ = ["EvalResult", "evaluate_folders", "predict_dataset"]
