"""``tunepp train``: thin wrapper over :func:`tunepp_deploy.train.trainer.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors


@user_errors
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/phantom.yaml.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: the config's data.root).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<config name>).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override train.epochs.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <out>/last.pt.")] = False,
) -> None:
    """Train TUNE++ with the config's losses and schedule; writes best.pt, last.pt and metrics."""
    from tunepp_deploy.config import load_config
    from tunepp_deploy.train.trainer import train as run_training

    cfg = load_config(config)
    console = Console()
    res = run_training(cfg, out or Path("runs") / cfg.name, data_dir=data, epochs=epochs, device=device,
                       resume=resume, console=console)
    if res.interrupted:
        raise typer.Exit(130)
    if res.rank != 0:  # other torchrun ranks neither validate nor write: rank 0 reports
        return
    console.print(f"done in {res.seconds:.0f} s: best validation mean Dice {res.best_dice:.4f} at epoch "
                  f"{res.best_epoch}; checkpoints in [bold]{res.out_dir}[/] (best.pt, last.pt)")
