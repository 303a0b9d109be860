"""``tunepp infer``: one command for every uncertainty method, a thin wrapper over the one case pipeline.

``--method auto`` reads the method from the model file; every method is opened as a predictor
(:func:`tunepp_deploy.predictors.open.open_predictor`) and every scan goes through
:func:`tunepp_deploy.infer.case.run_paths` (resumable, failure-isolating). An option that the chosen
method does not have is a one-line error, not ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tunepp_deploy.cli.errors import user_errors

#: Options only some methods have, with the methods that take them (the rest take everything else).
METHOD_OPTIONS = {
    "--samples": ("tunepp", "variational", "saliency"),
    "--seed": ("tunepp", "variational", "saliency"),
    "--memory-gb": ("tunepp", "variational", "saliency"),
    "--blend": ("tunepp",),
    "--noise-draws": ("tunepp",),
    "--no-amp": ("tunepp",),
    "--cuda-graphs": ("tunepp",),
    "--no-temperature": ("tunepp",),
}


def _refuse_foreign_options(method: str, given: dict[str, bool]) -> None:
    from tunepp_deploy.errors import TuneppError

    for flag, used in given.items():
        if used and method not in METHOD_OPTIONS[flag]:
            raise TuneppError(f"{flag} applies to --method {' / '.join(METHOD_OPTIONS[flag])}, not {method}")


@user_errors
def infer(
    input: Annotated[Path, typer.Option("--input", "-i", help="A NIfTI scan or a folder of scans.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pt), ONNX (.onnx) or TensorRT engine.")],
    method: Annotated[str, typer.Option(
        help="auto (read from the model file), tunepp, segwithu, variational or saliency (on a TUNE++ checkpoint).")]
    = "auto",
    samples: Annotated[int | None, typer.Option(min=1, help="MC samples S (default: the model's config, 25).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the dropout masks / weight noise (default: the config's).")]
    = None,
    backend: Annotated[str, typer.Option(help="auto, torch, ort or trt (auto follows the model file).")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overlap: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Window overlap (default 0.5).")] = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most windows per runner call.")] = None,
    memory_gb: Annotated[float | None, typer.Option(min=0.01, help="Memory budget (GB), calls + accumulators.")] = None,
    blend: Annotated[str, typer.Option(
        help="auto or sample (exact per-sample blend, streamed), window (per-window moments, approximate).")]
    = "auto",
    noise_draws: Annotated[int | None, typer.Option(
        min=0, help="Logit-noise draws T per dropout sample for the aleatoric map (default 8; 0 = none).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo cases whose report already exists.")] = False,
    flag_threshold: Annotated[float, typer.Option(min=0.0, help="Mean total uncertainty that flags a region.")] = 0.1,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch / ONNX Runtime.")] = None,
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (torch backend).")] = True,
    cuda_graphs: Annotated[bool, typer.Option(help="Replay CUDA graphs (torch backend on CUDA).")] = False,
    temperature: Annotated[bool, typer.Option(help="Apply the temperature stored by `calibrate temperature`.")] = True,
) -> None:
    """Segmentation with uncertainty maps and a JSON report: TUNE++ MC dropout, SegWithU, a variational network
    or saliency fusion."""
    from tunepp_deploy.data.layout import list_images
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.infer.batch import check_output_dir
    from tunepp_deploy.infer.case import CaseOptions, run_paths
    from tunepp_deploy.model_file import resolve_method
    from tunepp_deploy.predictors.open import open_predictor
    from tunepp_deploy.predictors.settings import RunOptions

    if blend not in ("auto", "sample", "window"):
        raise TuneppError(f"unknown --blend '{blend}' (use auto, sample or window)")
    if not input.exists():
        raise TuneppError(f"{input}: file or folder not found")
    chosen = "saliency" if method == "saliency" else resolve_method(method, model)
    _refuse_foreign_options(chosen, {
        "--samples": samples is not None, "--seed": seed is not None, "--memory-gb": memory_gb is not None,
        "--blend": blend != "auto", "--noise-draws": noise_draws is not None, "--no-amp": not amp,
        "--cuda-graphs": cuda_graphs, "--no-temperature": not temperature,
    })
    if input.is_file():  # a single scan: refuse unusable input before loading the model or printing anything
        from tunepp_deploy.data.nifti import load_volume

        load_volume(input)
    check_output_dir(out)
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    tasks: dict[str, TaskID] = {}

    def on_case(name: str, status: str, message: str) -> None:
        colour = {"done": "green", "skipped": "yellow", "failed": "red"}[status]
        console.print(f"[{colour}]{status}[/] {name}: {message}")
        progress.advance(tasks["cases"])

    def on_work(done: int, total: int) -> None:
        progress.update(tasks["work"], completed=done, total=total)

    opts = RunOptions(samples=samples, seed=seed, overlap=overlap, max_batch=max_batch, memory_gb=memory_gb,
                      blend=blend, noise_draws=noise_draws)  # type: ignore[arg-type]
    with open_predictor(model, chosen, backend, device, opts, threads=threads, amp=amp, cuda_graphs=cuda_graphs,
                        temperature=temperature) as predictor:
        d = predictor.describe()
        extra = "".join(f", {k}={d[k]}" for k in ("samples", "seed") if k in d)
        console.print(f"[bold]{predictor.describe_runner()}[/] ({predictor.method}{extra}), window={predictor.window}")
        progress.start()
        try:
            tasks["cases"] = progress.add_task("cases", total=len(list_images(input)))
            tasks["work"] = progress.add_task("windows x samples", total=None)
            res = run_paths(input, out, predictor, CaseOptions(overwrite, flag_threshold), on_case, on_work)
        finally:
            progress.stop()
    console.print(f"{len(res.done)} done, {len(res.skipped)} skipped, {len(res.failed)} failed -> [bold]{out}[/]")
    if res.failed:
        raise typer.Exit(1)
