"""``tunepp compare``: thin wrapper over :func:`tunepp_deploy.compare.run.run_compare`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors

if TYPE_CHECKING:
    from tunepp_deploy.compare.run import CompareSettings


@user_errors
def compare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (compare.md/json/png, models).")],
    data: Annotated[Path | None, typer.Option(help="Phantom dataset folder (tunepp data phantom); not with "
                                                   "--seeds, which draws the phantoms per seed.")] = None,
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
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2: one comparison per seed "
                                                   "in OUT/seed_<s>/ (phantom data seed and train/infer seeds = "
                                                   "s; finished seeds are skipped), then OUT/compare_seeds.md/"
                                                   "json with mean +- 95% t-interval.")] = None,
    phantoms: Annotated[int, typer.Option(min=2, help="With --seeds: phantoms drawn per seed.")] = 24,
    phantom_shape: Annotated[str, typer.Option(help="With --seeds: phantom shape D,H,W.")] = "64,64,48",
) -> None:
    """Train/load TUNE++ MC, saliency fusion, SegWithU and a variational net on one split; one table, one plot."""
    from tunepp_deploy.compare.models import ModelRequest
    from tunepp_deploy.compare.report import write_report
    from tunepp_deploy.compare.run import CompareSettings, run_compare
    from tunepp_deploy.config import load_config
    from tunepp_deploy.errors import DataError

    console = Console()
    req = ModelRequest(backbone, head, vi, epochs, head_iters, vi_iters, vi_arch, patience, val_every)
    settings = CompareSettings(samples, repeats, req, saliency_target, fusion_weight)
    if seeds is not None:
        _compare_seeds(config, out, seeds, data, phantoms, phantom_shape, settings, console)
        return
    if data is None or not data.is_dir():
        raise DataError(f"{data}: dataset folder not found (pass --data, or --seeds to draw phantoms per seed)")
    res = run_compare(load_config(config), data, out, settings, console)
    for p in write_report(res, out):
        console.print(f"wrote [bold]{p}[/]")
    m = res["models"]
    console.print(f"rerun without training: --backbone {m['backbone']} --head {m['head']} --vi {m['vi']}")


def _compare_seeds(config: Path, out: Path, seeds: str, data: Path | None, phantoms: int, shape: str,
                   settings: CompareSettings, console: Console) -> None:
    """``--seeds``: per-seed comparisons and their summary (:mod:`tunepp_deploy.compare.seeds`)."""
    from tunepp_deploy.compare.seeds import parse_seeds, run_seeds
    from tunepp_deploy.errors import TuneppError

    if data is not None:
        raise TuneppError("--seeds draws the phantoms of each seed itself; drop --data")
    if settings.models.backbone or settings.models.head or settings.models.vi:
        raise TuneppError("--seeds trains every model per seed; drop --backbone / --head / --vi")
    try:
        dims = tuple(int(x) for x in shape.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 8:
        raise TuneppError(f"--phantom-shape {shape!r}: expected three integers >= 8 like 64,64,48")
    run_seeds(config, out, parse_seeds(seeds), phantoms, (dims[0], dims[1], dims[2]), settings, console)
    for name in ("compare_seeds.json", "compare_seeds.md"):
        console.print(f"wrote [bold]{out / name}[/]")
