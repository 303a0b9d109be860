"""``tunepp infer``: thin wrapper over :func:`tunepp_deploy.infer.pipeline.infer_paths`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunepp_deploy.cli.errors import user_errors


@user_errors
def infer(
    input: Annotated[Path, typer.Option("--input", "-i", help="A NIfTI scan or a folder of scans.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pt), ONNX (.onnx) or TensorRT engine.")],
    samples: Annotated[int | None, typer.Option(min=1, help="MC samples S (default: the model's config, 25).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the dropout masks (default: the config's).")] = None,
    backend: Annotated[str, typer.Option(help="auto, torch, ort or trt (auto follows the model file).")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overlap: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Window overlap (default 0.5).")] = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most windows per runner call.")] = None,
    memory_gb: Annotated[float | None, typer.Option(min=0.01, help="Memory budget (GB), calls + accumulators.")] = None,
    blend: Annotated[str, typer.Option(help="auto, sample (exact per-sample blend) or window (per-window moments).")]
    = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo cases whose report already exists.")] = False,
    flag_threshold: Annotated[float, typer.Option(min=0.0, help="Mean total uncertainty that flags a region.")] = 0.1,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch / ONNX Runtime.")] = None,
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (torch backend).")] = True,
    cuda_graphs: Annotated[bool, typer.Option(help="Replay CUDA graphs (torch backend on CUDA).")] = False,
    temperature: Annotated[bool, typer.Option(help="Apply the temperature stored by `calibrate temperature`.")] = True,
) -> None:
    """MC-dropout segmentation with aleatoric / epistemic / total uncertainty maps and a JSON report."""
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.infer.mc import MCSettings
    from tunepp_deploy.infer.pipeline import InferOptions, check_output_dir, infer_paths
    from tunepp_deploy.infer.runners import open_runner

    if blend not in ("auto", "sample", "window"):
        raise TuneppError(f"unknown --blend '{blend}' (use auto, sample or window)")
    if not input.exists():
        raise TuneppError(f"{input}: file or folder not found")
    if input.is_file():  # a single scan: refuse unusable input before loading the model or printing anything
        from tunepp_deploy.data.nifti import load_volume

        load_volume(input)
    check_output_dir(out)
    console = Console(stderr=True)
    with open_runner(model, backend, device, amp=amp, cuda_graphs=cuda_graphs, threads=threads,
                     temperature=temperature) as runner:
        d = runner.meta.config.infer
        mc = MCSettings(
            samples=samples or d.samples, seed=d.seed if seed is None else seed,
            overlap=d.overlap if overlap is None else overlap, max_batch=max_batch or d.max_batch,
            memory_gb=memory_gb or d.memory_gb, blend=blend,  # type: ignore[arg-type]
        )
        console.print(f"[bold]{runner.describe()}[/], S={mc.samples}, seed={mc.seed}, window={runner.meta.window}")
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True)

        def on_case(name: str, status: str, message: str) -> None:
            colour = {"done": "green", "skipped": "yellow", "failed": "red"}[status]
            console.print(f"[{colour}]{status}[/] {name}: {message}")
            progress.advance(cases_task)

        with progress:
            from tunepp_deploy.data.layout import list_images

            cases_task = progress.add_task("cases", total=len(list_images(input)))
            res = infer_paths(input, out, runner, InferOptions(mc, overwrite, flag_threshold), on_case=on_case)
    console.print(f"{len(res.done)} done, {len(res.skipped)} skipped, {len(res.failed)} failed -> [bold]{out}[/]")
    if res.failed:
        raise typer.Exit(1)
