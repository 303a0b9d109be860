"""``tunepp doctor``: thin wrapper over :func:`tunepp_deploy.doctor.run_checks`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tunepp_deploy.cli.errors import user_errors


@user_errors
def doctor() -> None:
    """What works on this machine (torch, CUDA, CuPy, Numba-CUDA, ONNX Runtime, TensorRT) and why not."""
    from tunepp_deploy.doctor import run_checks

    table = Table(title="tunepp doctor")
    table.add_column("component")
    table.add_column("status")
    table.add_column("details / why not")
    for c in run_checks():
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[yellow]unavailable[/]", c.detail)
    Console().print(table)
