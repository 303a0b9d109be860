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
    eval_voxels: Annotated[int, typer.Option(min=1000, help="Held-out validation voxels for ECE / NLL "
                                                             "(disjoint from the fit voxels).")] = 200_000,
    samples: Annotated[int | None, typer.Option(min=1, help="MC dropout samples S of the predictive that is "
                                                            "calibrated (default: the config's infer.samples).")]
    = None,
    noise_draws: Annotated[int | None, typer.Option(min=0, help="Logit-noise draws per dropout sample, as "
                                                                "inference's (default 8; 0 = none).")] = None,
    mc_seed: Annotated[int | None, typer.Option(help="Seed of the dropout masks and noise draws "
                                                     "(default: the config's infer.seed).")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Val fraction when no split.json is next to the model "
                                                            "(default: the config's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fit / evaluation voxel split.")] = 0,
    backend: Annotated[str, typer.Option(help="auto, torch or ort.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Fit a temperature on the MC predictive of validation cases (NLL, L-BFGS on log T), store it with the
    record of the fit, report ECE / NLL before and after on held-out voxels."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tunepp_deploy.calibrate.temperature import (
        fit_on_validation,
        gather_val_samples,
        store_temperature,
        validation_cases,
    )
    from tunepp_deploy.infer.logit_noise import DEFAULT_NOISE_DRAWS
    from tunepp_deploy.infer.runners import open_runner

    console = Console(stderr=True)
    draws = DEFAULT_NOISE_DRAWS if noise_draws is None else noise_draws
    with open_runner(model, backend, device, amp=False) as runner:
        cfg = runner.meta.config
        vf = cfg.data.val_fraction if val_fraction is None else val_fraction
        s = cfg.infer.samples if samples is None else samples
        ms = cfg.infer.seed if mc_seed is None else mc_seed
        # without split.json: the split training would have drawn (config's val fraction and train seed)
        cases, split = validation_cases(model, data, cfg.data.layout, vf, cfg.train.seed)
        console.print(f"validation: {split}; MC predictive of {s} samples x {draws} noise draws (seed {ms}) "
                      f"on {runner.describe()}")
        bar = Progress(TextColumn("cases"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=console, transient=True)
        with bar:
            task = bar.add_task("cases", total=len(cases))
            val = gather_val_samples(runner, cases, s, noise_draws=draws, mc_seed=ms, overlap=cfg.infer.overlap,
                                     fit_voxels=voxels, eval_voxels=eval_voxels, seed=seed,
                                     progress=lambda _name: bar.advance(task))
    fit = fit_on_validation(val, per_class, split, device=runner.device)
    path = store_temperature(model, fit, out)
    t = ", ".join(f"{v:.4f}" for v in fit.temperature)
    console.print(f"T = [{t}] on {fit.fit_voxels} voxels of {len(fit.cases)} cases (S = {fit.samples}, "
                  f"{fit.noise_draws} noise draws) -> [bold]{path}[/]")
    console.print(f"held out: {fit.eval_voxels} voxels ({fit.eval_fg_voxels} foreground), disjoint from the fit")
    console.print(f"ECE (all voxels)  {fit.ece_before:.4f} -> {fit.ece_after:.4f}")
    console.print(f"ECE (foreground)  {fit.ece_fg_before:.4f} -> {fit.ece_fg_after:.4f}")
    console.print(f"NLL               {fit.nll_before:.4f} -> {fit.nll_after:.4f}")
    if fit.argmax_changed:
        console.print(f"arg-max changed on {100 * fit.argmax_changed:.2f}% of the held-out voxels")
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
