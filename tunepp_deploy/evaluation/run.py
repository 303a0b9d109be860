"""Run an evaluation end to end: from prediction folders, or from a model run on a dataset first.

``evaluate_folders`` loads one case at a time (only the worst cases are loaded again for their
slice panels), so memory stays at one case. ``predict_dataset`` opens the model as the predictor of
its method (:func:`tunepp_deploy.predictors.open.open_predictor`: TUNE++ MC dropout with its stored
temperature, SegWithU, a variational network, saliency fusion) and runs every case of the dataset
through the one case pipeline, :func:`tunepp_deploy.infer.case.run_case`, with ``write_probs``: the
files ``tunepp infer`` writes (``NAME_seg``, the method's maps, ``NAME_report.json`` last) plus
``NAME_probs.nii.gz`` (the predictive probabilities, 4D), so calibration metrics are available. The
walk over the cases has the batch loop's rules (:mod:`tunepp_deploy.infer.batch`): a case whose
report exists is complete and is kept when resuming, a failing case is reported and leaves nothing
behind, and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tunepp_deploy.data.layout import case_name, find_cases
from tunepp_deploy.data.nifti import check_output_folder
from tunepp_deploy.errors import DataError
from tunepp_deploy.evaluation.cases import class_names, load_pair, max_truth_label, pair_cases
from tunepp_deploy.evaluation.compute import CaseResult, EvalOptions, aggregate, evaluate_case
from tunepp_deploy.evaluation.report import (
    REPORT_MD,
    plot_case_panel,
    plot_reliability,
    plot_risk_coverage,
    plot_triage,
    plot_unc_hist,
    staged_outputs,
    worst_cases,
    write_markdown,
    write_tables,
)
from tunepp_deploy.infer.batch import BatchResult, CaseCallback, check_output_dir
from tunepp_deploy.predictors.settings import RunOptions


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
    """Evaluate ``pred`` against ``gt`` into ``out`` (metrics.json, metrics.csv, report.md, PNGs).

    ``out`` is checked first (a folder that can take files, :func:`check_output_folder`), so a bad
    ``-o`` costs nothing; the files are written into a staging folder and moved into ``out`` together
    (:func:`staged_outputs`), so a failure leaves no partial report.
    """
    check_output_folder(out)
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
    with staged_outputs(out) as stage:
        write_tables(stage, results, summary)
        plots: dict[str, Path | None] = {"reliability diagram": plot_reliability(results, stage / "reliability.png")}
        pooled = [r for r in results if r.pool_unc is not None]
        if pooled:
            u = np.concatenate([r.pool_unc for r in pooled])  # type: ignore[misc]
            e = np.concatenate([r.pool_err for r in pooled])  # type: ignore[misc]
            plots["risk-coverage curve"] = plot_risk_coverage(u, e, stage / "risk_coverage.png")
            plots["uncertainty vs error"] = plot_unc_hist(u, e, stage / "uncertainty_vs_error.png")
            plots["triage curve"] = plot_triage(summary, stage / "triage.png")
        else:
            plots.update({"risk-coverage curve": None, "uncertainty vs error": None, "triage curve": None})
        panels = []
        by_name = {c.name: c for c in cases}
        for r in worst_cases(results, worst):
            loaded = load_pair(by_name[r.name], len(classes), with_image=True)
            panels.append(plot_case_panel(loaded, r, len(classes), stage / f"worst_{r.name}.png"))
        write_markdown(stage, summary, plots, panels)
    files = [out / "metrics.json", out / "metrics.csv", out / REPORT_MD,
             *(out / p.name for p in plots.values() if p), *(out / p.name for p in panels)]
    return EvalResult(out, summary, files)


def predict_dataset(
    model: Path, data: Path, out: Path, samples: int | None = None, seed: int | None = None,
    backend: str = "auto", device: str = "auto", use_temperature: bool = True, layout: str | None = None,
    on_case: CaseCallback | None = None, method: str = "auto", options: RunOptions | None = None,
    overwrite: bool = True, threads: int | None = None,
) -> BatchResult:
    """Predict every case under ``data`` into ``out`` with ``model`` (module docstring).

    ``samples`` / ``seed`` override ``options`` (None: the model config's); ``layout`` defaults to the
    model config's dataset layout. ``overwrite=False`` resumes: cases with a report are kept.
    ``on_case(name, status, message)`` is told ``done``, ``skipped`` or ``failed`` per case.
    """
    from tunepp_deploy.infer.case import CaseOptions, run_paths
    from tunepp_deploy.predictors.open import open_predictor

    opts = options or RunOptions()
    if samples is not None:
        opts = replace(opts, samples=int(samples))
    if seed is not None:
        opts = replace(opts, seed=int(seed))
    check_output_dir(out)
    case_opts = CaseOptions(overwrite=overwrite, write_probs=True, model=Path(model))
    with open_predictor(model, method, backend, device, opts, threads=threads, temperature=use_temperature) as pr:
        cases = find_cases(data, layout or pr.cfg.data.layout)
        for c in cases:  # predictions are paired with the truth by name: they must agree
            if case_name(c.image) != c.name:
                raise DataError(f"{c.image}: its output name {case_name(c.image)} differs from the case name {c.name}")
        return run_paths([c.image for c in cases], out, pr, case_opts, on_case)


__all__ = ["EvalResult", "evaluate_folders", "predict_dataset"]
