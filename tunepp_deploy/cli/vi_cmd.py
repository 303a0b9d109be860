"""``tunepp train-vi``: thin wrapper over
:func:`tunepp_deploy.methods.variational.train.train_variational_from_paths` (split, ELBO training,
validation Dice, ``OUT/vi_<arch>.pt``); export it with ``tunepp export onnx``, run it with ``tunepp infer``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunepp_deploy.cli.errors import user_errors


def _widths(text: str) -> tuple[int, ...]:
    from tunepp_deploy.errors import TuneppError

    try:
        w = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise TuneppError(f"--widths '{text}': expected comma-separated integers, e.g. 16,32,64,128") from None
    if not w or min(w) < 1:
        raise TuneppError(f"--widths '{text}': every width must be >= 1")
    return w


@user_errors
def train_vi(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config (data, spacing, crops, classes).")],
    data: Annotated[Path, typer.Option(help="Dataset folder; its seeded training split is used.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (writes vi_<arch>.pt).")],
    arch: Annotated[str, typer.Option(help="Backbone: unet, vnet or fcn.")] = "unet",
    iters: Annotated[int, typer.Option(min=1, help="Adam iterations.")] = 400,
    batch: Annotated[int, typer.Option(min=1, help="Crops per iteration.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and crops.")] = 0,
    kl_scale: Annotated[str, typer.Option(help="KL weighting: voxel (per training voxel) or seed (the paper's).")]
    = "voxel",
    widths: Annotated[str, typer.Option(help="Channels per stage, comma-separated.")] = "16,32,64,128",
    lr: Annotated[float, typer.Option(min=1e-7, help="Adam learning rate (the seed: 1e-3).")] = 3e-3,
    decay_every: Annotated[int, typer.Option(min=0, help="Halve the lr every N iterations; 0: once, half-way.")]
    = 0,
    log_var_init: Annotated[float, typer.Option(help="Initial log sigma^2 of the weights (the seed: -5).")]
    = -10.0,
    objective: Annotated[str, typer.Option(help="ELBO data term: dice (0.01 CE + 0.99 Dice, the seed's) or nll "
                                                "(the categorical likelihood of Bayes by Backprop).")] = "dice",
    kl_warmup: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of iters over which the KL weight "
                                                                    "rises from 0 to 1.")] = 0.0,
    log_var_lr_scale: Annotated[float, typer.Option(min=1e-3, help="Adam lr of log sigma^2 = lr x this (1: one lr "
                                                                   "for all, sigma then stays at its init).")]
    = 10.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing vi_<arch>.pt.")] = False,
) -> None:
    """Train a variational (Bayesian-weight) U-Net / V-Net / FCN with the ELBO; reports validation Dice."""
    from tunepp_deploy.config import load_config
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.methods.variational.train import VariationalSettings, train_variational_from_paths

    if kl_scale not in ("voxel", "seed"):
        raise TuneppError(f"unknown --kl-scale '{kl_scale}' (use voxel or seed)")
    if objective not in ("dice", "nll"):
        raise TuneppError(f"unknown --objective '{objective}' (use dice or nll)")
    cfg = load_config(config)
    settings = VariationalSettings(arch=arch, widths=_widths(widths), iters=iters, batch=batch, seed=seed,
                                   kl_scale=kl_scale, lr=lr, decay_every=decay_every,
                                   log_var_init=log_var_init, objective=objective, kl_warmup=kl_warmup,
                                   log_var_lr_scale=log_var_lr_scale)  # type: ignore[arg-type]
    console = Console()
    bar = Progress(TextColumn(f"[bold]vi {arch}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  kl {task.fields[kl]:.3g}"), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console)
    task = bar.add_task("train", total=iters, loss=float("nan"), kl=float("nan"))

    def progress(i: int, parts: dict[str, float]) -> None:
        if i == 1:  # shown once training runs: refusals and data errors before it stay one line
            bar.start()
        bar.update(task, completed=i, loss=parts["loss"], kl=parts["kl"])

    try:
        res = train_variational_from_paths(cfg, data, out, settings, overwrite, progress=progress)
    finally:
        bar.stop()
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in res.validation["val_dice_per_class"].items())
    console.print(f"trained {len(res.run.history)} iterations on {len(res.train_cases)} cases; validation mean Dice "
                  f"{res.validation['val_dice']:.4f} (IoU {res.validation['val_iou']:.4f}) on {len(res.val_cases)} "
                  f"held-out ({per_class}) "
                  f"-> [bold]{res.path}[/]")
