"""``tunepp train-head``: train the SegWithU head on a frozen TUNE++ backbone.

Inference with the head is ``tunepp infer --method segwithu`` (one resumable case loop for every method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors


@user_errors
def train_head(
    backbone: Annotated[Path, typer.Option("--backbone", "-b", help="TUNE++ checkpoint (tunepp train's best.pt).")],
    data: Annotated[Path, typer.Option(help="Dataset folder (the backbone's training split is used).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (writes head.pt).")],
    iters: Annotated[int, typer.Option(min=1, help="Most head training iterations.")] = 200,
    batch: Annotated[int, typer.Option(min=1, help="Crops per iteration.")] = 2,
    width: Annotated[int, typer.Option(min=1, help="Fused feature channels.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of crops, init, pair sampling and the validation hold-out.")] = 0,
    patience: Annotated[int, typer.Option(min=0, help="Stop after this many validations without improvement "
                                                      "(0: never stop early).")] = 5,
    val_every: Annotated[int, typer.Option(min=1, help="Validate every N iterations.")] = 20,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of the training cases held out "
                                                                      "for early stopping.")] = 0.2,
) -> None:
    """Train the SegWithU uncertainty head (calibration + ranking maps) on a frozen backbone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.methods.segwithu.train import HeadSettings, train_head_from_paths

    if not data.is_dir():
        raise TuneppError(f"{data}: dataset folder not found")
    console = Console()
    settings = HeadSettings(iters, batch, width, seed=seed, val_fraction=val_fraction, val_every=val_every,
                            patience=patience)
    bar = Progress(TextColumn("head"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                   TimeElapsedColumn(), console=console)
    with bar:
        task = bar.add_task("head", total=iters, loss=float("nan"))
        path, run = train_head_from_paths(backbone, data, out, settings,
                                          progress=lambda i, _n, loss: bar.update(task, completed=i, loss=loss))
    best = "" if run.best_iter is None else f", best validation loss {run.best_val_loss:.4f} at {run.best_iter}"
    stop = " (stopped early)" if run.stopped_early else ""
    console.print(f"head trained for {len(run.history)} iterations{stop}{best} -> [bold]{path}[/]")
