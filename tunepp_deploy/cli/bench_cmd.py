"""``tunepp bench`` (MC-inference latency) and ``tunepp bench kernels`` (topology kernels).

Thin wrappers: the logic is :func:`tunepp_deploy.bench.mc_bench.run_mc_bench` and
:func:`tunepp_deploy.bench.kernels.run_kernel_bench`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors
from tunepp_deploy.errors import TuneppError

app = typer.Typer(help="Benchmarks: MC inference end to end (default) or the topology kernels.")


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
    backends: Annotated[str, typer.Option(help="Backends: torch, ort, trt.")] = "torch,ort,trt",
    precision: Annotated[str, typer.Option(help="Precisions: fp32, fp16, int8 (skipped where unsupported).")]
    = "fp32,fp16,int8",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per configuration.")] = 3,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before them.")] = 1,
    dropout_sites: Annotated[str | None, typer.Option(help="Override the config's dropout sites, e.g. dec0 (a "
                                                           "later first site = more trunk reuse).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch / ONNX Runtime.")] = None,
    baselines: Annotated[bool, typer.Option(help="Also measure the naive loop and trunk reuse off.")] = True,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Windows per runner call (default: the config's; "
                                                             "rows per call = windows x samples).")] = None,
    memory_gb: Annotated[float | None, typer.Option(min=0.01, help="Engine memory budget, GB (default: the "
                                                                   "config's).")] = None,
) -> None:
    """Whole-volume MC latency per backend x precision x samples, with stages, memory, floor and baselines."""
    if ctx.invoked_subcommand is not None:
        return
    from tunepp_deploy.bench.mc_bench import BenchSettings, run_mc_bench
    from tunepp_deploy.bench.report import rich_table

    console = Console(stderr=True)
    settings = BenchSettings(
        out=out, config=config, model=model, volume=_volume(volume) if volume else None,
        samples=_ints(samples, "--samples"), backends=_csv(backends), precisions=_csv(precision),
        repeats=repeats, warmup=warmup, dropout_sites=_csv(dropout_sites) if dropout_sites is not None else None,
        device=device, threads=threads, baselines=baselines, max_batch=max_batch, memory_gb=memory_gb,
    )
    result = run_mc_bench(settings, log=lambda msg: console.print(msg, highlight=False))
    Console().print(rich_table(result))
    for r in result["ratios"]:
        if "target" in r:
            console.print(f"{r['name']}: {r['value']:.2f} (target >= {r['target']}: "
                          f"{'met' if r['met'] else 'missed'})")
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


__all__ = ["app"]
