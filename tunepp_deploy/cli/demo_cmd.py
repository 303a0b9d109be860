"""``tunepp demo``: thin wrapper over :func:`tunepp_deploy.demo.run_demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors


@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")] = Path("demo_out"),
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (default: the config's).")] = None,
    cases: Annotated[int, typer.Option(min=3, help="Phantoms to generate (one is held out).")] = 12,
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config (a file or a shipped name).")] = Path(
        "phantom"
    ),
    iters_per_epoch: Annotated[int | None, typer.Option(min=1, help="Override train.iters_per_epoch.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="MC samples.")] = 25,
) -> None:
    """Phantoms -> train -> ONNX -> MC-25 inference on ONNX Runtime -> maps, report and a PNG."""
    from tunepp_deploy.demo import run_demo

    console = Console()
    res = run_demo(out, config, cases=cases, epochs=epochs, iters_per_epoch=iters_per_epoch, samples=samples,
                   console=console)
    console.print(f"\n[bold]demo done in {sum(res.seconds.values()):.0f} s[/] — held-out Dice {res.dice}")
    for label, path in [("checkpoint", res.checkpoint), ("ONNX model", res.onnx), *res.maps.items(),
                        ("report", res.report), ("figure", res.figure)]:
        console.print(f"  {label:<12} {path}")
