"""``tunepp topo``: Betti numbers, Euler characteristic and voxel count per label of a mask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tunepp_deploy.cli.errors import one_line
from tunepp_deploy.errors import TuneppError


def topo(
    mask: Annotated[Path, typer.Argument(help="3D NIfTI mask or label map (.nii / .nii.gz).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    edt_out: Annotated[
        Path | None,
        typer.Option("--edt-out", help="Write the EDT of the foreground (voxel spacing from the header)."),
    ] = None,
    backend: Annotated[str, typer.Option(help="auto, numba, numba-cuda, cupy or scipy.")] = "auto",
) -> None:
    """Report the topology of each label (26-connected foreground, 6-connected background)."""
    from tunepp_deploy.kernels.report import topology_report

    try:
        report = topology_report(mask, edt_out=edt_out, backend=backend)
    except TuneppError as e:
        typer.echo(f"error: {one_line(e)}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    sp = " x ".join(f"{s:g}" for s in report.spacing)
    table = Table(title=f"{report.path}  shape {report.shape}  spacing {sp} mm  backend {report.backend}")
    for col in ("label", "voxels", "b0", "b1", "b2", "euler"):
        table.add_column(col, justify="right")
    rows = [*report.labels, *([report.foreground] if report.foreground else [])]
    for t in rows:
        name = "all" if t.label is None else str(t.label)
        table.add_row(name, str(t.voxels), *(str(b) for b in t.betti), str(t.euler))
    console = Console()
    console.print(table)
    if not report.labels:
        console.print("no foreground voxels")
    if report.edt_out:
        console.print(f"wrote EDT to {report.edt_out}")
