"""``tunepp train-head`` and ``tunepp infer-segwithu``: the SegWithU head on a frozen TUNE++ backbone.

A separate infer command rather than ``tunepp infer --method``: ``infer`` is built around MC
runners (masks, samples, blends) that a single-pass head does not have.
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
    iters: Annotated[int, typer.Option(min=1, help="Head training iterations.")] = 200,
    batch: Annotated[int, typer.Option(min=1, help="Crops per iteration.")] = 2,
    width: Annotated[int, typer.Option(min=1, help="Fused feature channels.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of crops, init and pair sampling.")] = 0,
) -> None:
    """Train the SegWithU uncertainty head (calibration + ranking maps) on a frozen backbone."""
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.methods.segwithu.train import HeadSettings, train_head_from_paths

    if not data.is_dir():
        raise TuneppError(f"{data}: dataset folder not found")
    path, run = train_head_from_paths(backbone, data, out, HeadSettings(iters, batch, width, seed=seed))
    Console().print(f"head trained for {len(run.history)} iterations (last loss {run.history[-1]['loss']:.4f}) "
                    f"-> [bold]{path}[/]")


@user_errors
def infer_segwithu(
    input: Annotated[Path, typer.Option("--input", "-i", help="A NIfTI scan or a folder of scans.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="SegWithU head checkpoint (head.pt).")],
) -> None:
    """Single-pass segmentation with SegWithU calibration / ranking / temperature maps (NIfTI, input grid)."""
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.methods.segwithu.model import load_segwithu
    from tunepp_deploy.methods.segwithu.predict import infer_segwithu_paths

    if not input.exists():
        raise TuneppError(f"{input}: file or folder not found")
    net, cfg = load_segwithu(model)
    written = infer_segwithu_paths(input, out, net, cfg)
    Console().print(f"{len(written)} files -> [bold]{out}[/]")
