"""``tunepp export int8``: a Q/DQ INT8 ONNX graph from ``tunepp calibrate int8`` windows.

Kept in its own module (registered in :mod:`tunepp_deploy.cli.export_cmd` with
``app.command("int8")(int8)``) so the quantizer's options do not crowd the float exporters' file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunepp_deploy.cli.errors import user_errors


@user_errors
def int8(
    model: Annotated[Path, typer.Option("--model", "-m", help="Float ONNX file from `tunepp export onnx`.")],
    calib: Annotated[Path, typer.Option("--calib", help="Folder of `tunepp calibrate int8` (batch_*.npy windows).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Q/DQ ONNX file to write (model_int8.onnx).")],
    method: Annotated[str, typer.Option(help="Activation range calibration: minmax, percentile or entropy.")]
    = "minmax",
    masks: Annotated[str, typer.Option(help="Dropout masks fed while calibrating: drawn (the MC rows inference "
                                            "feeds, default) or ones.")] = "drawn",
    all_ops: Annotated[bool, typer.Option("--all-ops", help="Quantize every op ONNX Runtime can (default: only "
                                                            "Conv/ConvTranspose/MatMul/Gemm; masks, norms and "
                                                            "softmax stay float).")] = False,
    symmetric: Annotated[bool, typer.Option(help="Symmetric activations (zero point 0): what TensorRT needs and "
                                                 "OpenVINO compiles; --no-symmetric (zero points) runs on ONNX "
                                                 "Runtime only.")] = True,
    batch: Annotated[int, typer.Option(min=1, help="Windows per calibration run.")] = 4,
) -> None:
    """Quantize the float graph to static int8 (Q/DQ, per-channel weights) for OpenVINO / TensorRT 11; the mask
    inputs stay float, so MC dropout stays stochastic. Never the default: run it with --backend openvino
    --precision int8 (or ort) explicitly."""
    from tunepp_deploy.errors import TuneppError
    from tunepp_deploy.export.int8_qdq import HEAVY_OPS, quantize_qdq

    if masks not in ("drawn", "ones"):
        raise TuneppError(f"unknown --masks '{masks}' (use drawn or ones)")
    res = quantize_qdq(model, calib, out, method=method, masks=masks,  # type: ignore[arg-type]
                       op_types=None if all_ops else HEAVY_OPS, symmetric=symmetric, batch=batch)
    Console().print(res.summary)


__all__ = ["int8"]
