"""``tunepp calibrate ...``: temperature scaling and INT8 calibration data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors

app = typer.Typer(help="Post-training calibration: temperature scaling, INT8 calibration windows.",
                  no_args_is_help=True)


@app.command("temperature")
@user_errors
def temperature(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pt) or ONNX (.onnx).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Dataset folder (imagesTr/ + labelsTr/).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write a new file (default: update in place).")]
    = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="One temperature per class.")] = False,
    voxels: Annotated[int, typer.Option(min=1000, help="Validation voxels used for the fit.")] = 200_000,
    val_fraction: Annotated[float | None, typer.Option(help="Val fraction when no split.json is next to the model "
                                                            "(default: the config's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the voxel subsample.")] = 0,
    backend: Annotated[str, typer.Option(help="auto, torch or ort.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Fit a temperature on validation logits (NLL, L-BFGS on log T), store it, report ECE before/after."""
    from tunepp_deploy.calibrate.temperature import (
        fit_on_validation,
        gather_val_logits,
        store_temperature,
        validation_cases,
    )
    from tunepp_deploy.infer.runners import open_runner

    console = Console(stderr=True)
    with open_runner(model, backend, device, amp=False, temperature=False) as runner:
        cfg = runner.meta.config
        vf = cfg.data.val_fraction if val_fraction is None else val_fraction
        # without split.json: the split training would have drawn (config's val fraction and train seed)
        cases, split = validation_cases(model, data, cfg.data.layout, vf, cfg.train.seed)
        console.print(f"validation: {split}; deterministic logits on {runner.describe()}")
        val = gather_val_logits(runner, cases, overlap=cfg.infer.overlap, fit_voxels=voxels, seed=seed)
    fit = fit_on_validation(val, per_class, split)
    path = store_temperature(model, fit, out)
    t = ", ".join(f"{v:.4f}" for v in fit.temperature)
    console.print(f"T = [{t}] on {fit.fit_voxels} voxels of {len(fit.cases)} cases -> [bold]{path}[/]")
    console.print(f"ECE (all voxels)  {fit.ece_before:.4f} -> {fit.ece_after:.4f}")
    console.print(f"ECE (foreground)  {fit.ece_fg_before:.4f} -> {fit.ece_fg_after:.4f}")
    console.print(f"NLL               {fit.nll_before:.4f} -> {fit.nll_after:.4f}")
    if not 0.1 <= min(fit.temperature) <= max(fit.temperature) <= 10.0:
        console.print("[yellow]warning:[/] extreme temperature: is the model trained, and the data its own?")


@app.command("int8")
@user_errors
def int8(
    model: Annotated[Path, typer.Option("--model", "-m", help="ONNX (.onnx) or checkpoint (.pt).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Scans: a dataset root (imagesTr/), folder or file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Calibration folder to write.")],
    windows: Annotated[int, typer.Option(min=1, help="Number of windows N.")] = 64,
    batch: Annotated[int, typer.Option(min=1, help="Windows per calibration batch (TensorRT 10).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the window draw.")] = 0,
) -> None:
    """Write representative preprocessed windows for TensorRT 10 (npy batches) and 11 (ModelOpt npz)."""
    from tunepp_deploy.calibrate.int8 import scan_paths, write_calibration_set
    from tunepp_deploy.infer.runners import read_model_meta

    meta = read_model_meta(model)
    res = write_calibration_set(meta, scan_paths(data), out, windows=windows, batch=batch, seed=seed,
                                model_path=str(model))
    Console(stderr=True).print(
        f"{res.windows} windows in {res.batches} batches -> [bold]{res.out}[/] "
        f"(manifest.json, calibration_data.npz)"
    )
