"""``tunepp bench`` (MC-inference latency), ``tunepp bench kernels`` (topology kernels),
``tunepp bench memory`` (the streamed exact blend's memory against all samples in one chunk) and
``tunepp bench gpu`` (the GPU acceptance suite, ``make gpu-check``; ``--dry`` on the CPU).

Thin wrappers: the logic is :func:`tunepp_deploy.bench.mc_bench.run_mc_bench`,
:func:`tunepp_deploy.bench.kernels.run_kernel_bench`, :func:`tunepp_deploy.bench.memory.run_memory_bench`
and :func:`tunepp_deploy.bench.gpu.run_gpu_suite`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors
from tunepp_deploy.errors import TuneppError

app = typer.Typer(help="Benchmarks: MC inference end to end (default), the topology kernels, or memory.")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _csv(text))
    except ValueError:
        raise TuneppError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _volume(text: str, flag: str = "--volume") -> tuple[int, int, int]:
    dims = _ints(text.lower().replace("x", ","), flag)
    if len(dims) != 3 or min(dims) < 1:
        raise TuneppError(f"{flag} must be DxHxW like 240x240x160, got {text!r}")
    return dims  # type: ignore[return-value]


@app.callback(invoke_without_command=True)
@user_errors
def bench(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (bench.json, bench.md, PNGs).")]
    = Path("bench_out"),
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Checkpoint, .onnx or engine (default: a "
                                                                      "freshly initialised network).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config of the fresh network (default: "
                                                                        "configs/synapse.yaml with CUDA, "
                                                                        "configs/phantom.yaml without).")] = None,
    volume: Annotated[str | None, typer.Option(help="Model-grid scan size DxHxW (default: 240x240x160 with CUDA, "
                                                    "64x64x48 without).")] = None,
    samples: Annotated[str, typer.Option(help="MC sample counts.")] = "1,5,10,25,50",
    backends: Annotated[str, typer.Option(help="Backends: torch, ort, openvino, trt (skipped where not "
                                               "installed).")] = "torch,ort,openvino,trt",
    precision: Annotated[str, typer.Option(help="Precisions: fp32, fp16, int8 (skipped where unsupported).")]
    = "fp32,fp16,int8",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per configuration.")] = 3,
    warmup: Annotated[int, typer.Option(min=1, help="Untimed runs of each configuration right before it is "
                                                    "timed (at least one: no first-configuration artefact).")] = 1,
    warmup_s: Annotated[float | None, typer.Option(min=0.0, help="And at least this many seconds of warm-up per "
                                                                 "configuration, more runs for fast ones (default: "
                                                                 "bench.mc_bench.WARMUP_S, 5 s).")] = None,
    dropout_sites: Annotated[str | None, typer.Option(help="Override the config's dropout sites, e.g. dec0 (a "
                                                           "later first site = more trunk reuse).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch / ONNX Runtime.")] = None,
    baselines: Annotated[bool, typer.Option(help="Also measure the naive loop and trunk reuse off.")] = True,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Windows per runner call (default: the config's; "
                                                             "rows per call = windows x samples).")] = None,
    memory_gb: Annotated[float | None, typer.Option(min=0.01, help="Engine memory budget, GB (default: the "
                                                                   "config's).")] = None,
    alternate: Annotated[int, typer.Option(min=0, help="Rounds of the naive loop and the engine at the reference S "
                                                       "timed alternately (A/B/A/B) per backend; 0: off.")] = 0,
    conv_floor: Annotated[bool, typer.Option(help="Time the network's own conv shapes (second floor).")] = True,
) -> None:
    """Whole-volume MC latency per backend x precision x samples, with stages, memory, floor and baselines."""
    if ctx.invoked_subcommand is not None:
        return
    from tunepp_deploy.bench.mc_bench import BenchSettings, run_mc_bench
    from tunepp_deploy.bench.report import rich_table, target_word

    console = Console(stderr=True)
    settings = BenchSettings(
        out=out, config=config, model=model, volume=_volume(volume) if volume else None,
        samples=_ints(samples, "--samples"), backends=_csv(backends), precisions=_csv(precision),
        repeats=repeats, warmup=warmup, **({} if warmup_s is None else {"warmup_s": warmup_s}),
        dropout_sites=_csv(dropout_sites) if dropout_sites is not None else None,
        device=device, threads=threads, baselines=baselines, max_batch=max_batch, memory_gb=memory_gb,
        alternate=alternate, conv_floor=conv_floor,
    )
    result = run_mc_bench(settings, log=lambda msg: console.print(msg, highlight=False))
    Console().print(rich_table(result))
    for r in result["ratios"]:
        if "target" in r:
            console.print(f"{r['name']}: {r['value']:.2f}x at {r.get('threads')} threads (target >= {r['target']}: "
                          f"{target_word(r)})")
    console.print(f"wrote [bold]{out}[/] (bench.json, bench.md, bench_latency.png, bench_stages.png)")


@app.command("kernels")
@user_errors
def kernels(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (kernels.json, kernels.md, kernels.png).")]
    = Path("bench_out"),
    sizes: Annotated[str, typer.Option(help="Comma-separated DxHxW sizes.")] = "96x96x96,256x256x128",
    repeats: Annotated[int, typer.Option(min=1, help="Timed calls per implementation.")] = 5,
) -> None:
    """Topology kernels (EDT, CCL, Euler, Betti) against scipy, edt, cc3d, scikit-image, GUDHI, cripser."""
    from tunepp_deploy.bench.kernels import run_kernel_bench

    shapes = [_volume(s, "--sizes") for s in _csv(sizes)]
    run_kernel_bench(shapes, repeats, out)
    typer.echo((out / "kernels.md").read_text())


@app.command("memory")
@user_errors
def memory(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (memory[_TAG].json and .md).")]
    = Path("bench/results"),
    tag: Annotated[str, typer.Option(help="File name suffix: memory_TAG.json.")] = "",
    config: Annotated[Path, typer.Option("--config", "-c", help="Config (classes, window, spacing, sites).")]
    = Path("configs/synapse.yaml"),
    volume: Annotated[str, typer.Option(help="Model-grid scan size DxHxW.")] = "240x240x160",
    samples: Annotated[int, typer.Option(min=1, help="MC samples S.")] = 25,
    memory_gb: Annotated[float, typer.Option(min=0.01, help="Budget of the streamed run, GB.")] = 4.0,
    max_rows: Annotated[int, typer.Option(min=0, help="Rows per runner call in both runs (0: the runner's own "
                                                     "cap).")] = 4,
    widths: Annotated[str, typer.Option(help="Widths of the tiny random network.")] = "4,8,16,32",
    full_res_channels: Annotated[int, typer.Option(min=1, help="Its full-resolution channels.")] = 4,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per run.")] = 2,
    runs: Annotated[str, typer.Option(help="streamed, per_sample, or both.")] = "streamed,per_sample",
    timeout: Annotated[float | None, typer.Option(min=1.0, help="Seconds per run before it is stopped.")] = None,
    maps_dir: Annotated[Path | None, typer.Option(help="Keep each run's maps and record here.")] = None,
    reuse: Annotated[Path | None, typer.Option(help="An earlier --maps-dir: runs left out of --runs are taken "
                                                    "from it (same workload only).")] = None,
) -> None:
    """Peak RSS of mc_predict streaming sample chunks (--memory-gb) vs all S samples in one chunk; maps compared."""
    from tunepp_deploy.bench.memory import RUNS, MemorySettings, markdown, run_memory_bench

    chosen = _csv(runs)
    if not chosen or any(r not in RUNS for r in chosen):
        raise TuneppError(f"--runs takes {', '.join(RUNS)}, got {runs!r}")
    settings = MemorySettings(out=out, tag=tag, config=config, volume=_volume(volume), samples=samples,
                              memory_gb=memory_gb, max_rows=max_rows, widths=_ints(widths, "--widths"),
                              full_res_channels=full_res_channels, threads=threads, timeout_s=timeout,
                              runs=chosen, maps_dir=maps_dir, reuse=reuse)
    console = Console(stderr=True)
    result = run_memory_bench(settings, log=lambda msg: console.print(msg, highlight=False))
    typer.echo(markdown(result))


@app.command("gpu")
@user_errors
def gpu(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (gpu.json, gpu.md, gpu.png): $OUT on "
                                                          "the device.")] = Path("gpu_out"),
    dry: Annotated[bool, typer.Option("--dry", help="CPU rehearsal at tiny sizes (every path that needs no GPU).")]
    = False,
    budget_s: Annotated[float | None, typer.Option(min=10.0, help="Wall seconds before the remaining sections "
                                                                   "are skipped (default 420; dry 600).")] = None,
    paths: Annotated[str | None, typer.Option(help="MC paths: fp32, tf32, bf16, bf16_graphs, bf16_compile, "
                                                   "fp32_compile.")] = None,
    samples: Annotated[str | None, typer.Option(help="MC sample counts (default 25,1; dry 3,1).")] = None,
    volume: Annotated[str | None, typer.Option(help="Model-grid size DxHxW (default 240x240x160).")] = None,
    kernel_sizes: Annotated[str | None, typer.Option(help="Kernel sizes (default 96x96x96,256x256x128,"
                                                          "512x512x256).")] = None,
    repeats: Annotated[int | None, typer.Option(min=1, help="Timed runs per configuration (default 3).")] = None,
    memory_gb: Annotated[float | None, typer.Option(min=0.01, help="Engine budget of the speed runs (default 64).")]
    = None,
    tests: Annotated[str | None, typer.Option(help="GPU test files for pytest -m gpu ('' for none).")] = None,
    install_record: Annotated[Path | None, typer.Option(help="bench/device/install.py's --record, for the "
                                                             "report.")] = None,
    naive: Annotated[bool, typer.Option(help="Also run the seed's naive loop once.")] = True,
) -> None:
    """The GPU suite: kernels vs cupyx and CPU, torch CUDA MC paths at Synapse size, 4 GB budget, GPU tests."""
    from tunepp_deploy.bench.gpu import GpuSettings, dry_settings, run_gpu_suite
    from tunepp_deploy.bench.gpu_report import summary_text

    given = {"budget_s": budget_s, "repeats": repeats, "memory_gb": memory_gb, "install_record": install_record,
             "paths": _csv(paths) if paths is not None else None,
             "samples": _ints(samples, "--samples") if samples is not None else None,
             "volume": _volume(volume) if volume else None,
             "kernel_sizes": tuple(_volume(v, "--kernel-sizes") for v in _csv(kernel_sizes)) if kernel_sizes else None,
             "tests": _csv(tests) if tests is not None else None}
    kw = {k: v for k, v in given.items() if v is not None}
    settings = dry_settings(out, naive=naive, **kw) if dry else GpuSettings(out=out, naive=naive, **kw)
    from tunepp_deploy.bench.gpu_mc import PATHS

    bad = [p for p in settings.paths if p not in PATHS]
    if bad:
        raise TuneppError(f"unknown --paths {bad} (use {', '.join(PATHS)})")
    console = Console(stderr=True)
    result = run_gpu_suite(settings, log=lambda msg: console.print(msg, highlight=False))
    typer.echo(summary_text(result))
    typer.echo(f"wrote {out}/gpu.json, gpu.md, gpu.png")


__all__ = ["app"]
