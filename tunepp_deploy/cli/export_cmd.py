"""``tunepp export onnx|trt|int8|triton``: thin wrappers over :mod:`tunepp_deploy.export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors
from tunepp_deploy.cli.export_int8_cmd import int8

app = typer.Typer(help="Export a checkpoint to ONNX, an ONNX file to a TensorRT engine, a Q/DQ INT8 ONNX or a "
                  "Triton model repository.", no_args_is_help=True)
app.command("int8")(int8)


@app.command("onnx")
@user_errors
def onnx(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint of `tunepp train`, `train-vi` or "
                                                                        "`train-head`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write (model.onnx).")],
    opset: Annotated[int | None, typer.Option(min=17, max=20, help="ONNX opset (TensorRT 10 parses 9..20; default "
                                                                   "18, variational 17).")] = None,
) -> None:
    """One self-describing graph, dynamic batch, no random ops: dropout masks (TUNE++) or weight noise
    (variational) as inputs; SegWithU as one single-pass graph. The method is read from the checkpoint."""
    from tunepp_deploy.export.dispatch import export_any_checkpoint

    Console().print(export_any_checkpoint(checkpoint, out, opset).summary)


@app.command("trt")
@user_errors
def trt(
    onnx_path: Annotated[Path, typer.Option("--onnx", help="ONNX file from `tunepp export onnx`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Engine file to write (model.engine).")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp16",
    calib: Annotated[Path | None, typer.Option(help="Folder of .npy windows [C,*window] for int8.")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most windows per call in the profile.")] = 4,
    samples: Annotated[int, typer.Option(min=1, help="Samples per call the profile is tuned for.")] = 25,
    workspace_gb: Annotated[float, typer.Option(min=0.1, help="Builder workspace limit.")] = 4.0,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file (default: <out>.timing.cache).")]
    = None,
) -> None:
    """Build a TensorRT engine (TensorRT 10 or 11) with a batch profile, timing cache and a JSON sidecar."""
    from tunepp_deploy.export.trt_build import build_engine

    res = build_engine(onnx_path, out, precision=precision, calib_dir=calib, max_batch=max_batch,
                       samples=samples, workspace_gb=workspace_gb, timing_cache=timing_cache)
    Console().print(f"wrote [bold]{res.engine}[/] and {res.sidecar.name} in {res.seconds:.0f} s "
                    f"(TensorRT {res.info.tensorrt_version}, sm {res.info.compute_capability}, {res.info.precision})")


@app.command("triton")
@user_errors
def triton(
    model: Annotated[Path, typer.Option("--model", "-m", help="ONNX file from `tunepp export onnx` (TUNE++, masks as "
                                                              "inputs).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model repository folder to write.")],
    samples: Annotated[int, typer.Option(min=1, help="MC samples the tunepp_mc model draws per window.")] = 25,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most windows per tunepp_mc batch (dynamic "
                                                            "batching joins requests up to this).")] = 8,
    noise_draws: Annotated[int, typer.Option(min=0, help="Logit-noise draws per sample (as `tunepp infer "
                                                         "--noise-draws`).")] = 8,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime intra-op threads in tunepp_mc (0: ORT's "
                                                     "default).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """A Triton Inference Server model repository: the graph for the ONNX Runtime and TensorRT backends (masks
    as inputs) and a Python-backend model that draws the masks from a request seed and returns mean probabilities
    and uncertainty maps per window (docs/triton.md)."""
    from tunepp_deploy.export.triton_repo import write_repository

    Console().print(write_repository(model, out, samples=samples, max_batch_size=max_batch_size,
                                     noise_draws=noise_draws, threads=threads, force=force).summary)
