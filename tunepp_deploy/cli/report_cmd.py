"""``tunepp report DIR [--truth DIR]``: rebuild the triage page ``DIR/index.html`` from the case reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunepp_deploy.cli.errors import user_errors


@user_errors
def report(
    folder: Annotated[Path, typer.Argument(help="An output folder of `tunepp infer` (NAME_report.json files).")],
    truth: Annotated[Path | None, typer.Option("--truth", help="Truth labels NAME.nii.gz (or a dataset root with "
                                                               "labelsTr/): adds Dice and Betti error columns.")]
    = None,
) -> None:
    """Write DIR/index.html: cases sorted by triage score, thumbnails, links to each report and PNG."""
    from tunepp_deploy.errors import DataError
    from tunepp_deploy.report.page import write_page

    if folder.is_dir() and not any(p.is_file() for p in folder.glob("*_report.json")):
        raise DataError(f"{folder}: no NAME_report.json case reports here (run tunepp infer -o {folder} first)")
    page = write_page(folder, truth)
    left = f", {len(page.left_out)} unreadable report(s) listed on the page" if page.left_out else ""
    typer.echo(f"{page.path}: {page.rows} cases{left}")
