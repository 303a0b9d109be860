"""``tunepp experiment ...``: reproducible experiments on phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors

app = typer.Typer(help="Reproducible experiments on phantoms (fidelity of the seed's claims).", no_args_is_help=True)


@app.command("fidelity")
@user_errors
def fidelity(
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder (data, runs, reports, fidelity.md).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config.")] = Path("configs/phantom.yaml"),
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per run (default: the config's 30; 5 is the "
                                                           "~25 min setting on a 2-core CPU).")] = None,
    iters_per_epoch: Annotated[int | None, typer.Option(min=1, help="Override train.iters_per_epoch.")] = None,
    train_cases: Annotated[int, typer.Option(min=3, help="Training phantoms (train + val).")] = 16,
    test_cases: Annotated[int, typer.Option(min=1, help="Held-out test phantoms.")] = 6,
    shift_cases: Annotated[int, typer.Option(min=1, help="Phantoms per shift (noise, intensity, shape).")] = 3,
    samples: Annotated[int, typer.Option(min=1, help="MC samples at test time.")] = 10,
    seed: Annotated[int, typer.Option(help="Data and evaluation seed.")] = 0,
) -> None:
    """Train with and without the topology loss; report Dice, Betti error, ECE +- T, TAUS, triage, OOD AUROC."""
    from tunepp_deploy.experiments.fidelity import FidelitySettings, run_fidelity

    s = FidelitySettings(config, epochs, iters_per_epoch, train_cases, test_cases, shift_cases, samples, seed)
    body = run_fidelity(out, s, Console(stderr=True))
    Console(stderr=True).print(f"done in {body['seconds'] / 60:.1f} min -> [bold]{out / 'fidelity.md'}[/]")
