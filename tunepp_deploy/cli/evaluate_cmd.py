"""``tunepp evaluate``: metrics.json, metrics.csv and a report from predictions (or a model) and ground truth."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors


@user_errors
def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (metrics.json, metrics.csv, report.md).")],
    pred: Annotated[Path | None, typer.Option(
        "--pred", help="Predictions: NAME_seg.nii.gz (+ maps, NAME_probs), or plain NAME.nii.gz (nnU-Net).")] = None,
    gt: Annotated[Path | None, typer.Option("--gt", help="Truth: dataset root (labelsTr/) or folder of NAME.nii.gz.")]
    = None,
    unc: Annotated[Path | None, typer.Option("--unc", help="Uncertainty maps folder (default: --pred).")] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Run this model on --data first.")] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Dataset root for --model (imagesTr/, labelsTr/).")]
    = None,
    method: Annotated[str, typer.Option(help="Method of --model: auto (read from the file), tunepp, segwithu, "
                                             "variational, saliency.")] = "auto",
    samples: Annotated[int | None, typer.Option(min=1, help="MC samples with --model (default: the config's).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed with --model (default: the config's).")] = None,
    backend: Annotated[str, typer.Option(help="Backend with --model: auto, torch, ort, trt.")] = "auto",
    device: Annotated[str, typer.Option(help="Device with --model: auto, cpu, cuda.")] = "auto",
    temperature: Annotated[bool, typer.Option(help="Apply the model's stored temperature (--model).")] = True,
    resume: Annotated[bool, typer.Option("--resume", help="With --model: keep the cases whose NAME_report.json "
                                                         "exists in the predictions folder (default: predict "
                                                         "every case again).")] = False,
    dice_threshold: Annotated[float, typer.Option(help="A case fails below this mean Dice (<0: Dice never fails).")]
    = 0.8,
    betti_fails: Annotated[bool, typer.Option(help="A case with any Betti violation fails.")] = True,
    budget: Annotated[float, typer.Option(min=0.0, max=1.0, help="Triage budget (fraction of cases reviewed).")]
    = 0.25,
    worst: Annotated[int, typer.Option(min=0, help="Slice panels for this many worst cases.")] = 3,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Evaluate only cases that have predictions.")]
    = False,
) -> None:
    """Dice, IoU, HD95, Betti error, ECE/Brier/NLL, AUROC/AUPRC, AURC, TAUS, triage -> JSON, CSV, report."""
    from tunepp_deploy.data.nifti import check_output_folder
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.evaluation.compute import EvalOptions
    from tunepp_deploy.evaluation.run import evaluate_folders, predict_dataset

    console = Console(stderr=True)
    check_output_folder(out)  # before any prediction or metric: a bad -o costs nothing
    if model is not None:
        if data is None:
            raise TuneppError("--model needs --data (a dataset folder with imagesTr/ and labelsTr/)")
        pred = pred or out / "predictions"
        gt = gt or data
        started: list[bool] = []

        def told(name: str, status: str, message: str) -> None:
            if not started:  # said once the model is open: an unusable model stays a one-line error
                started.append(True)
                console.print(f"running {model} on {data} -> {pred}")
            console.print(f"  {'predicted' if status == 'done' else status} {name}"
                          + (f": {message}" if status != "done" else ""), highlight=False)

        created = [d for d in (out, pred) if not d.exists()]
        try:
            ran = predict_dataset(model, data, pred, samples=samples, seed=seed, backend=backend, device=device,
                                  use_temperature=temperature, on_case=told, method=method, overwrite=not resume)
        except BaseException:  # a model or dataset that cannot be used leaves no empty folders behind
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty: finished predictions stay
            raise
        if ran.failed and not allow_missing:
            name, msg = ran.failed[0]
            raise TuneppError(f"{len(ran.failed)} case(s) could not be predicted, first {name}: {msg} "
                              "(--allow-missing evaluates the others)")
    if pred is None or gt is None:
        raise TuneppError("give --pred and --gt, or --model and --data")
    opts = EvalOptions(dice_threshold=None if dice_threshold < 0 else dice_threshold, betti_fails=betti_fails,
                       budget=budget)
    res = evaluate_folders(pred, gt, out, unc, opts, allow_missing=allow_missing, worst=worst)
    s = res.summary
    console.print(f"{s['cases']} cases: mean Dice {s['mean_dice']}, violation share {s['violation_share']}, "
                  f"TAUS {s.get('taus')}, triage@{budget} {s.get('triage', {}).get('found_at_budget')}")
    for n in s["notes"]:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"-> [bold]{out}[/] (metrics.json, metrics.csv, report.md, {len(res.files) - 3} figures)")
