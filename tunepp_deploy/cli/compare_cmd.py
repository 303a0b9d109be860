"""``tunepp compare``: thin wrapper over :func:`tunepp_deploy.compare.run.run_compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors


@user_errors
def compare(
    data: Annotated[Path, typer.Option(help="Phantom dataset folder (tunepp data phantom).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (compare.md/json/png, models).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Config of the split, crops and windows.")]
    = Path("configs/phantom.yaml"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of every method.")] = 2,
    samples: Annotated[int, typer.Option(min=1, help="MC samples S of the sampling methods.")] = 10,
    backbone: Annotated[Path | None, typer.Option(help="Use this TUNE++ checkpoint instead of training one.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Latency repeats (median).")] = 3,
) -> None:
    """Train/load TUNE++ MC, SegWithU and the variational U-Net on one split; write one table and a plot."""
    from tunepp_deploy.compare.report import write_report
    from tunepp_deploy.compare.run import run_compare
    from tunepp_deploy.config import load_config

    console = Console()
    res = run_compare(load_config(config), data, out, epochs, samples, backbone, repeats, console)
    for p in write_report(res, out):
        console.print(f"wrote [bold]{p}[/]")
