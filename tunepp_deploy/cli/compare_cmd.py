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
    epochs: Annotated[int, typer.Option(min=1, help="TUNE++ training epochs; the SegWithU head gets at most as "
                                                    "many iterations (early stopping).")] = 2,
    samples: Annotated[int, typer.Option(min=1, help="MC samples S of the sampling methods.")] = 10,
    backbone: Annotated[Path | None, typer.Option(help="Use this TUNE++ checkpoint instead of training one.")] = None,
    head: Annotated[Path | None, typer.Option(help="Use this SegWithU head (tunepp train-head) on the backbone.")]
    = None,
    vi: Annotated[Path | None, typer.Option(help="Use this variational checkpoint instead of training one.")] = None,
    vi_arch: Annotated[str, typer.Option(help="Variational backbone to train: unet, vnet or fcn.")] = "unet",
    vi_iters: Annotated[int | None, typer.Option(min=1, help="Variational training iterations "
                                                             "(default: epochs x iters_per_epoch).")] = None,
    head_iters: Annotated[int | None, typer.Option(min=1, help="Most head iterations (default: epochs x "
                                                               "iters_per_epoch).")] = None,
    patience: Annotated[int, typer.Option(min=0, help="Head early stopping: validations without improvement "
                                                      "(0: off).")] = 5,
    val_every: Annotated[int, typer.Option(min=1, help="Head early stopping: validate every N iterations.")] = 20,
    saliency_target: Annotated[str, typer.Option(help="Grad-CAM layer: 'last_conv' (after every dropout "
                                                      "site, the seed's set-up), 'bottleneck' (before them: "
                                                      "degenerate variance) or a module name.")] = "last_conv",
    fusion_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="w of w norm(V_pred) + (1-w) norm(V_sal).")]
    = 0.5,
    repeats: Annotated[int, typer.Option(min=1, help="Latency repeats (median).")] = 3,
) -> None:
    """Train/load TUNE++ MC, saliency fusion, SegWithU and a variational net on one split; one table, one plot."""
    from tunepp_deploy.compare.models import ModelRequest
    from tunepp_deploy.compare.report import write_report
    from tunepp_deploy.compare.run import CompareSettings, run_compare
    from tunepp_deploy.config import load_config
    from tunepp_deploy.errors import DataError

    if not data.is_dir():
        raise DataError(f"{data}: dataset folder not found")
    console = Console()
    req = ModelRequest(backbone, head, vi, epochs, head_iters, vi_iters, vi_arch, patience, val_every)
    res = run_compare(load_config(config), data, out,
                      CompareSettings(samples, repeats, req, saliency_target, fusion_weight), console)
    for p in write_report(res, out):
        console.print(f"wrote [bold]{p}[/]")
    m = res["models"]
    console.print(f"rerun without training: --backbone {m['backbone']} --head {m['head']} --vi {m['vi']}")
