"""``tunepp data ...``: make or inspect datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors

app = typer.Typer(help="Create datasets (synthetic phantoms with known topology).", no_args_is_help=True)


@app.command("phantom")
@user_errors
def phantom(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (imagesTr/, labelsTr/).")],
    cases: Annotated[int, typer.Option(min=1, help="Number of cases.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed; case i depends only on (seed, i).")] = 0,
    contact: Annotated[bool, typer.Option("--contact", help="Organs that touch (a solid/hollow contact "
                                          "surface: non-zero junction weights J).")] = False,
) -> None:
    """Write CT-like phantoms whose organs have designed Betti numbers (see dataset.json)."""
    from tunepp_deploy.data.phantom import write_phantom_dataset

    path = write_phantom_dataset(out, cases, seed=seed, progress=True, contact=contact)
    Console().print(f"wrote {cases} phantoms to [bold]{path}[/] (imagesTr/, labelsTr/, dataset.json)")
