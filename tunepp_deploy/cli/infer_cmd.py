"""``tunepp infer``: one command for every uncertainty method, a thin wrapper over the one case pipeline.

``--method auto`` reads the method from the model file; every method is opened as a predictor
(:func:`tunepp_deploy.predictors.open.open_predictor`) and every scan goes through
:func:`tunepp_deploy.infer.case.run_paths` (resumable, failure-isolating). An option that the chosen
method does not have is a one-line error, not ignored.

Scan names are checked before the model is opened (colliding or hidden case names are one-line errors).
SIGTERM, what schedulers send, is handled like Ctrl-C: the case being computed has its partial files
removed, its lock is released, and the command exits 143 (130 for Ctrl-C) with one line saying how far
it got; the next run resumes. An output folder this command created is removed again if nothing was
written to it (a model that cannot be opened leaves no empty folder). Failed cases are summarised by
name at the end, with exit code 1.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tunepp_deploy.cli.errors import user_errors

if TYPE_CHECKING:
    from tunepp_deploy.infer.batch import BatchResult
    from tunepp_deploy.infer.ray_batch import RayOptions
    from tunepp_deploy.predictors.settings import RunOptions

#: Options only some methods have, with the methods that take them (the rest take everything else).
METHOD_OPTIONS = {
    "--samples": ("tunepp", "variational", "saliency"),
    "--seed": ("tunepp", "variational", "saliency"),
    "--memory-gb": ("tunepp", "variational", "saliency"),
    "--blend": ("tunepp",),
    "--noise-draws": ("tunepp",),
    "--rows-per-call": ("tunepp",),
    "--no-amp": ("tunepp",),
    "--cuda-graphs": ("tunepp",),
    "--compile": ("tunepp",),
    "--no-temperature": ("tunepp",),
}


@contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """Turn SIGTERM into KeyboardInterrupt inside the block (so cleanup runs as for Ctrl-C); yields a list
    that holds the signal number once one arrived."""
    got: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield got
        return
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, old)


def _refuse_foreign_options(method: str, given: dict[str, bool]) -> None:
    from tunepp_deploy.errors import TuneppError

    for flag, used in given.items():
        if used and method not in METHOD_OPTIONS[flag]:
            raise TuneppError(f"{flag} applies to --method {' / '.join(METHOD_OPTIONS[flag])}, not {method}")


def _ray_options(ray: bool, address: str | None, gpus: float | None, workers: int | None,
                 input: Path) -> RayOptions | None:
    """The Ray options, or ``None`` for a local run; one-line errors for Ray flags without ``--ray``, a single
    scan with ``--ray``, or ``--ray`` without Ray installed (checked before any work)."""
    from tunepp_deploy.errors import TuneppError

    if not ray:
        given = [f for f, v in (("--address", address), ("--gpus-per-worker", gpus), ("--workers", workers))
                 if v is not None]
        if given:
            raise TuneppError(f"{', '.join(given)} only apply with --ray")
        return None
    from tunepp_deploy.infer.ray_batch import RayOptions, import_ray

    if input.is_file():
        raise TuneppError(f"{input}: --ray runs a folder of scans; run a single scan without --ray")
    import_ray()
    return RayOptions(address, gpus, workers)


@user_errors
def infer(
    input: Annotated[Path, typer.Option("--input", "-i", help=(
        "A NIfTI scan, a DICOM series folder ([dicom] extra) or a folder of scans / DICOM series folders."))],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pt), ONNX (.onnx) or TensorRT engine.")],
    method: Annotated[str, typer.Option(
        help="auto (read from the model file), tunepp, segwithu, variational or saliency (on a TUNE++ checkpoint).")]
    = "auto",
    samples: Annotated[int | None, typer.Option(min=1, help="MC samples S (default: the model's config, 25).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the dropout masks / weight noise (default: the config's).")]
    = None,
    backend: Annotated[str, typer.Option(help="auto, torch, ort, openvino ([openvino] extra) or trt (auto follows "
                                              "the model file; an ONNX file on a CPU: OpenVINO when installed).")]
    = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overlap: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Window overlap (default 0.5).")] = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most windows per runner call.")] = None,
    memory_gb: Annotated[float | None, typer.Option(min=0.01, help="Memory budget (GB), calls + accumulators.")] = None,
    blend: Annotated[str, typer.Option(
        help="auto or sample (exact per-sample blend, streamed), window (per-window moments, approximate).")]
    = "auto",
    noise_draws: Annotated[int | None, typer.Option(
        min=0, help="Logit-noise draws T per dropout sample for the aleatoric map (default 8; 0 = none).")] = None,
    rows_per_call: Annotated[str | None, typer.Option(
        help="Rows (window x sample) per runner call: N, or auto (time 1, 2, 4, 5, 8, 13 and S rows per call on one "
             "window, once per model, and keep the fastest: bench/results/head_calls.md). Default: the runner's. "
             "The maps do not depend on it.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo cases whose report already exists.")] = False,
    flag_threshold: Annotated[float | None, typer.Option(
        min=0.0, help="Mean flag-map value that flags a region (default 0.3: docs/results/flag_threshold.md).")]
    = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch / ONNX Runtime.")] = None,
    precision: Annotated[str, typer.Option(help="OpenVINO backend: fp32 (default, pinned), bf16, or int8 for a graph "
                                                "from `tunepp export int8` (docs/results/int8.md).")] = "fp32",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (torch backend).")] = True,
    cuda_graphs: Annotated[bool, typer.Option(help="Replay CUDA graphs (torch backend on CUDA).")] = False,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile (inductor) the trunk and head (torch backend; first call compiles).")]
    = False,
    temperature: Annotated[bool, typer.Option(help="Apply the temperature stored by `calibrate temperature`.")] = True,
    ray: Annotated[bool, typer.Option("--ray", help="Run a folder's cases on Ray actors, one model per actor "
                                                    "([ray] extra; docs/ray.md).")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (with --ray; default: start a local one).")]
    = None,
    gpus_per_worker: Annotated[float | None, typer.Option(
        min=0.0, help="GPUs each Ray worker reserves (default 1 if the cluster has GPUs, else 0).")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Ray workers (default: as many as the cluster's CPUs / GPUs hold, at most one per case).")] = None,
    num_parts: Annotated[int, typer.Option(help="Split a folder into N parts (job arrays, one part per GPU); "
                                                "case i of the name-sorted list goes to part i % N.")] = 1,
    part_id: Annotated[int, typer.Option(help="The part this run computes, 0..N-1 (with --num-parts).")] = 0,
    series_uid: Annotated[str | None, typer.Option(
        help="SeriesInstanceUID to read when the -i DICOM folder holds several series.")] = None,
) -> None:
    """Segmentation with uncertainty maps and a JSON report: TUNE++ MC dropout, SegWithU, a variational network
    or saliency fusion."""
    from tunepp_deploy.data.layout import case_names, list_images
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.infer.batch import check_output_dir, remove_if_empty
    from tunepp_deploy.infer.shard import check_part, shard
    from tunepp_deploy.model_file import resolve_method
    from tunepp_deploy.predictors.settings import RunOptions

    if blend not in ("auto", "sample", "window"):
        raise TuneppError(f"unknown --blend '{blend}' (use auto, sample or window)")
    from tunepp_deploy.infer.mc import parse_rows_per_call

    rows = None if rows_per_call is None else parse_rows_per_call(rows_per_call)
    check_part(num_parts, part_id)
    ray_opts = _ray_options(ray, address, gpus_per_worker, workers, input)
    if not input.exists():
        raise TuneppError(f"{input}: file or folder not found")
    chosen = "saliency" if method == "saliency" else resolve_method(method, model)
    _refuse_foreign_options(chosen, {
        "--samples": samples is not None, "--seed": seed is not None, "--memory-gb": memory_gb is not None,
        "--blend": blend != "auto", "--noise-draws": noise_draws is not None, "--no-amp": not amp,
        "--rows-per-call": rows_per_call is not None,
        "--cuda-graphs": cuda_graphs, "--no-temperature": not temperature, "--compile": compile,
    })
    if input.is_file() and num_parts > 1:
        raise TuneppError(f"{input}: --num-parts splits a folder of scans, not a single file")
    images = list_images(input, out)
    names = case_names(images)  # colliding, empty or hidden case names: one line before any work
    part = shard(images, num_parts, part_id) if num_parts > 1 else None
    if part is not None:
        typer.echo(f"part {part_id} of {num_parts}: {len(part)} of {len(images)} cases", err=True)
        if not part:
            return
    if input.is_file():  # a single scan: refuse unusable input before loading the model or printing anything
        from tunepp_deploy.data.nifti import load_volume

        load_volume(input)
    one_series = images == [input] and input.is_dir()
    if series_uid is not None and not one_series:
        raise TuneppError(f"{input}: --series-uid picks a series in one DICOM folder; -i is not one DICOM folder")
    if one_series:  # a DICOM series folder: check its headers before loading the model
        from tunepp_deploy.data.dicom import read_series

        chosen_uid = read_series(input, series_uid, pixels=False).uid
        if not overwrite:  # resume knows the case by the folder's name: not a report of another series
            from tunepp_deploy.data.dicom import check_report_series
            from tunepp_deploy.infer.batch import report_path

            check_report_series(report_path(out, names[0]), chosen_uid)
    if flag_threshold is None:
        from tunepp_deploy.infer.case import DEFAULT_FLAG_THRESHOLD

        flag_threshold = DEFAULT_FLAG_THRESHOLD
    created = check_output_dir(out)
    try:
        with _sigterm_as_interrupt() as got:
            try:
                _run_batch(input if part is None else part, out, model, chosen, backend, device, overwrite,
                           flag_threshold, names, series_uid,
                           RunOptions(samples=samples, seed=seed, overlap=overlap, max_batch=max_batch,
                                      memory_gb=memory_gb, blend=blend, noise_draws=noise_draws,
                                      rows_per_call=rows),  # type: ignore[arg-type]
                           dict(threads=threads, amp=amp, cuda_graphs=cuda_graphs, temperature=temperature,
                                compile=compile, precision=precision), ray_opts)
            except KeyboardInterrupt:
                what = "SIGTERM" if got else "interrupted"
                typer.secho(f"error: {what}: stopped; the case in progress was removed, finished cases are kept "
                            "(rerun to resume)", fg="red", err=True)
                raise typer.Exit(143 if got else 130) from None
    finally:
        if created:
            remove_if_empty(out)


def _run_batch(input: Path | list[Path], out: Path, model: Path, method: str, backend: str, device: str,
               overwrite: bool, flag_threshold: float, names: list[str], series_uid: str | None, opts: RunOptions,
               open_kw: dict[str, Any], ray_opts: RayOptions | None = None) -> None:
    """Open the predictor and run every case (``input``: a scan, a folder or one part's scans), with progress
    bars; a folder run then writes the triage page ``OUT/index.html``; exit 1 if any case failed.

    ``names`` are the whole folder's case names: reports of another configuration refuse every part.
    """
    from tunepp_deploy.infer.batch import refuse_other_runs
    from tunepp_deploy.infer.case import CaseOptions, run_paths
    from tunepp_deploy.infer.manifest import run_manifest
    from tunepp_deploy.predictors.open import open_predictor

    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    tasks: dict[str, TaskID] = {}

    def on_case(name: str, status: str, message: str) -> None:
        colour = {"done": "green", "skipped": "yellow", "failed": "red"}[status]
        console.print(f"[{colour}]{status}[/] {name}: {message}", soft_wrap=True)  # one line per case, for logs
        progress.advance(tasks["cases"])

    def on_work(done: int, total: int) -> None:
        progress.update(tasks["work"], completed=done, total=total)

    if ray_opts is not None:  # the same cases, lines and summary; the model is opened once per Ray actor
        from tunepp_deploy.data.layout import list_images
        from tunepp_deploy.infer.ray_batch import OpenSpec, run_ray

        images = input if isinstance(input, list) else list_images(input, out)
        tasks["cases"] = progress.add_task("cases", total=len(images))
        progress.start()
        try:
            res = run_ray(images, out, OpenSpec(model, method, backend, device, opts, open_kw),
                          CaseOptions(overwrite, flag_threshold, model=model, series_uid=series_uid), ray_opts,
                          names, on_case,
                          lambda line, p: console.print(f"[bold]{line}[/] on Ray: {p.workers} worker(s), each "
                                                        f"{p.cpus:g} CPU(s), {p.gpus:g} GPU(s)", soft_wrap=True))
        finally:
            progress.stop()
        return _summarise(res, input, out, console)
    with open_predictor(model, method, backend, device, opts, **open_kw) as predictor:
        if not overwrite:  # reports of another configuration: one line, before anything is printed
            refuse_other_runs(names, out, run_manifest(predictor, model, flag_threshold))
        d = predictor.describe()
        extra = "".join(f", {k}={d[k]}" for k in ("samples", "seed") if k in d)
        console.print(f"[bold]{predictor.describe_runner()}[/] ({predictor.method}{extra}), window={predictor.window}")
        if backend == "auto" and method == "tunepp":  # say which backend auto picked, and why
            from tunepp_deploy.infer.runners.load import describe_auto

            console.print(describe_auto(model, device), soft_wrap=True, markup=False)
        progress.start()
        try:
            total = len(input) if isinstance(input, list) else len(names)
            tasks["cases"] = progress.add_task("cases", total=total)
            tasks["work"] = progress.add_task("windows x samples", total=None)
            case_opts = CaseOptions(overwrite, flag_threshold, model=model, series_uid=series_uid)
            res = run_paths(input, out, predictor, case_opts, on_case, on_work)
        finally:
            progress.stop()
    _summarise(res, input, out, console)


def _summarise(res: BatchResult, input: Path | list[Path], out: Path, console: Console) -> None:
    """The summary line, the triage page of a folder run, and exit 1 if a case failed (local and Ray runs)."""
    busy = f" ({len(res.busy)} in progress elsewhere)" if res.busy else ""
    console.print(f"{len(res.done)} done, {len(res.skipped)} skipped{busy}, {len(res.failed)} failed -> "
                  f"[bold]{out}[/]", soft_wrap=True)
    folder_run = isinstance(input, list) or input.is_dir()
    if folder_run and (any(out.glob("*_report.json")) or (out / "index.html").exists()):
        # the triage page of every case reported in OUT so far (none: a run whose cases all failed leaves no page)
        from tunepp_deploy.errors import TuneppError
        from tunepp_deploy.report.page import write_page

        try:
            page = write_page(out)
            console.print(f"triage page: {page.path} ({page.rows} cases)", soft_wrap=True)
        except TuneppError as e:  # e.g. a full disk: the cases are written; the page is `tunepp report OUT` later
            console.print(f"[yellow]warning:[/] triage page not written ({e}); rebuild it with tunepp report {out}",
                          soft_wrap=True, highlight=False)
    if res.failed:
        console.print(f"[red]failed:[/] {', '.join(n for n, _ in res.failed)}", soft_wrap=True)
        raise typer.Exit(1)
