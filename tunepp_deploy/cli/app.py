"""The ``tunepp`` command. Each command is a thin function in its own ``*_cmd`` module; the
logic lives in the library so everything the CLI does can be called from Python too."""

from __future__ import annotations

import typer

from tunepp_deploy import __version__
from tunepp_deploy.cli import calibrate_cmd, data_cmd, experiment_cmd, export_cmd
from tunepp_deploy.cli.bench_cmd import app as bench_app
from tunepp_deploy.cli.compare_cmd import compare
from tunepp_deploy.cli.demo_cmd import demo
from tunepp_deploy.cli.doctor_cmd import doctor
from tunepp_deploy.cli.evaluate_cmd import evaluate
from tunepp_deploy.cli.infer_cmd import infer
from tunepp_deploy.cli.model_cmd import model_info
from tunepp_deploy.cli.report_cmd import report
from tunepp_deploy.cli.segwithu_cmd import train_head
from tunepp_deploy.cli.topo_cmd import topo
from tunepp_deploy.cli.train_cmd import train
from tunepp_deploy.cli.vi_cmd import train_vi

app = typer.Typer(
    name="tunepp",
    help="TUNE++ topology-aware uncertainty segmentation: data, training, export, MC inference, topology.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_cmd.app, name="data")
app.command("train")(train)
app.command("model-info")(model_info)
app.command("topo")(topo)
app.add_typer(export_cmd.app, name="export")
app.command("infer")(infer)
app.command("demo")(demo)
app.command("doctor")(doctor)
app.add_typer(calibrate_cmd.app, name="calibrate")
app.command("evaluate")(evaluate)
app.add_typer(experiment_cmd.app, name="experiment")
app.add_typer(bench_app, name="bench")
app.command("train-head")(train_head)
app.command("train-vi")(train_vi)
app.command("compare")(compare)
app.command("report")(report)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunepp-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """TUNE++ deployment toolkit."""


def main() -> None:
    """Console-script entry point."""
    app()
