"""``tunepp infer``: one command for every uncertainty method, thin wrappers over each method's batch function.

``--method auto`` reads the method from the model file (:mod:`tunepp_deploy.methods.model_file`);
TUNE++ goes to :func:`tunepp_deploy.infer.pipeline.infer_paths`, SegWithU to
:func:`tunepp_deploy.methods.segwithu.predict.infer_segwithu_paths`, variational networks to
:func:`tunepp_deploy.methods.variational.predict.infer_variational_paths` — all resumable through the
same case loop. An option that the chosen method does not have is a one-line error, not ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tunepp_deploy.cli.errors import user_errors

if TYPE_CHECKING:
    from tunepp_deploy.infer.batch import BatchResult

#: Options only some methods have, with the methods that take them (the rest take everything else).
METHOD_OPTIONS = {
    "--samples": ("tunepp", "variational"),
    "--seed": ("tunepp", "variational"),
    "--memory-gb": ("tunepp",),
    "--blend": ("tunepp",),
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
    method: Annotated[str, typer.Option(help="auto (read from the model file), tunepp, segwithu or variational.")]
    = "auto",
    samples: Annotated[int | None, typer.Option(min=1, help="MC samples S (default: the model's config, 25).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the dropout masks / weight noise (default: the config's).")]
    = None,
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
    """Segmentation with uncertainty maps and a JSON report: TUNE++ MC dropout, SegWithU or a variational network."""
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.infer.batch import check_output_dir
    from tunepp_deploy.methods.model_file import resolve_method

    if blend not in ("auto", "sample", "window"):
        raise TuneppError(f"unknown --blend '{blend}' (use auto, sample or window)")
    if not input.exists():
        raise TuneppError(f"{input}: file or folder not found")
    chosen = resolve_method(method, model)
    _refuse_foreign_options(chosen, {
        "--samples": samples is not None, "--seed": seed is not None, "--memory-gb": memory_gb is not None,
        "--blend": blend != "auto", "--no-amp": not amp, "--cuda-graphs": cuda_graphs,
        "--no-temperature": not temperature,
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

    def on_windows(done: int, total: int) -> None:
        progress.update(tasks["windows"], completed=done, total=total)

    def start(header: str) -> None:
        from tunepp_deploy.data.layout import list_images

        console.print(header)
        progress.start()
        tasks["cases"] = progress.add_task("cases", total=len(list_images(input)))
        tasks["windows"] = progress.add_task("windows", total=None)

    run = _Run(input, out, model, backend, device, overlap, max_batch, overwrite, flag_threshold, threads, start,
               on_case, on_windows)
    try:
        if chosen == "segwithu":
            res = _segwithu(run)
        elif chosen == "variational":
            res = _variational(run, samples, seed)
        else:
            res = _tunepp(run, samples, seed, memory_gb, blend, amp, cuda_graphs, temperature)
    finally:
        progress.stop()
    console.print(f"{len(res.done)} done, {len(res.skipped)} skipped, {len(res.failed)} failed -> [bold]{out}[/]")
    if res.failed:
        raise typer.Exit(1)


@dataclass(frozen=True)
class _Run:
    """What every method's branch takes from the command line, plus the progress hooks."""

    input: Path
    out: Path
    model: Path
    backend: str
    device: str
    overlap: float | None
    max_batch: int | None
    overwrite: bool
    flag_threshold: float
    threads: int | None
    start: Callable[[str], None]  # prints the header line and shows the progress bars
    on_case: Callable[[str, str, str], None]
    on_windows: Callable[[int, int], None]


def _tunepp(run: _Run, samples: int | None, seed: int | None, memory_gb: float | None, blend: str, amp: bool,
            cuda_graphs: bool, temperature: bool) -> BatchResult:
    from tunepp_deploy.infer.mc import MCSettings
    from tunepp_deploy.infer.pipeline import InferOptions, infer_paths
    from tunepp_deploy.infer.runners import open_runner

    with open_runner(run.model, run.backend, run.device, amp=amp, cuda_graphs=cuda_graphs, threads=run.threads,
                     temperature=temperature) as runner:
        d = runner.meta.config.infer
        mc = MCSettings(
            samples=samples or d.samples, seed=d.seed if seed is None else seed,
            overlap=d.overlap if run.overlap is None else run.overlap, max_batch=run.max_batch or d.max_batch,
            memory_gb=memory_gb or d.memory_gb, blend=blend,  # type: ignore[arg-type]
        )
        run.start(f"[bold]{runner.describe()}[/], S={mc.samples}, seed={mc.seed}, window={runner.meta.window}")
        return infer_paths(run.input, run.out, runner, InferOptions(mc, run.overwrite, run.flag_threshold),
                           on_case=run.on_case)


def _segwithu(run: _Run) -> BatchResult:
    from tunepp_deploy.methods.segwithu.predict import SegWithUInferOptions, infer_segwithu_paths
    from tunepp_deploy.methods.segwithu.runner import open_segwithu

    runner = open_segwithu(run.model, run.backend, run.device, run.threads)
    run.start(f"[bold]{runner.describe()}[/], window={runner.window}")
    opts = SegWithUInferOptions(run.overlap, run.max_batch, run.overwrite, run.flag_threshold)
    return infer_segwithu_paths(run.input, run.out, runner, opts, run.on_case, run.on_windows)


def _variational(run: _Run, samples: int | None, seed: int | None) -> BatchResult:
    from tunepp_deploy.methods.variational.predict import VariationalInferOptions, infer_variational_paths
    from tunepp_deploy.methods.variational.runners import open_variational

    runner = open_variational(run.model, run.backend, run.device, run.threads)
    d = runner.cfg.infer
    run.start(f"[bold]{runner.describe()}[/], S={samples or d.samples}, seed={d.seed if seed is None else seed}, "
              f"window={runner.window}")
    opts = VariationalInferOptions(samples, seed, run.overlap, run.max_batch, run.overwrite, run.flag_threshold)
    try:
        return infer_variational_paths(run.input, run.out, runner, opts, run.on_case, run.on_windows)
    finally:
        runner.close()
