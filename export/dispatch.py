"""``tunepp export onnx`` for a checkpoint of any method: the checkpoint's ``"method"`` key picks the exporter.

* TUNE++ (no key): :func:`.onnx_export.export_checkpoint` — unchanged, masks as inputs, opset 18;
* ``variational``: :func:`tunepp_deploy.methods.variational.export.export_variational_checkpoint` —
  weight noise as inputs, config and settings in the metadata, opset 17 by default;
* ``segwithu``: :func:`tunepp_deploy.methods.segwithu.export.export_segwithu` — one deterministic
  single-pass graph at the config's window, opset 18.

Every one writes atomically and leaves a file that ``tunepp infer --method auto`` recognises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tunepp_deploy.errors import TuneppError

from .onnx_export import DEFAULT_OPSET, export_checkpoint


@dataclass(frozen=True)
class Exported:
    """What was written, by which method's exporter, and one line saying so."""

    path: Path
    method: str
    seconds: float
    summary: str


def export_any_checkpoint(checkpoint: str | Path, out: str | Path, opset: int | None = None) -> Exported:
    """Export ``checkpoint`` with its method's exporter (module docstring); ``opset`` None = that exporter's default."""
    from tunepp_deploy.data.nifti import check_output_file
    from tunepp_deploy.model_file import detect_method

    ckpt, dst = Path(checkpoint), Path(out)
    if not ckpt.is_file():
        raise TuneppError(f"{ckpt}: checkpoint not found")
    # before the export (tens of seconds on a CPU): a folder, an unwritable place or a bad name is one
    # line now, not after the work
    check_output_file(dst, (".onnx",), "ONNX file")
    method = detect_method(ckpt)
    if method == "variational":
        from tunepp_deploy.methods.variational.export import DEFAULT_OPSET as VI_OPSET
        from tunepp_deploy.methods.variational.export import export_variational_checkpoint

        v = export_variational_checkpoint(ckpt, dst, opset or VI_OPSET)
        return Exported(v.path, method, v.seconds, f"wrote {v.path} in {v.seconds:.1f} s (variational {v.arch}, "
                        f"opset {v.opset}, window {v.window}, {v.noise_inputs} weight-noise inputs)")
    if method == "segwithu":
        from tunepp_deploy.methods.segwithu.export import export_segwithu
        from tunepp_deploy.methods.segwithu.model import load_segwithu

        t0 = time.perf_counter()
        model, cfg = load_segwithu(ckpt)
        path = export_segwithu(model, cfg, tuple(cfg.window), dst, opset or DEFAULT_OPSET)
        secs = time.perf_counter() - t0
        return Exported(path, method, secs, f"wrote {path} in {secs:.1f} s (segwithu single pass, opset "
                        f"{opset or DEFAULT_OPSET}, window {tuple(cfg.window)})")
    res = export_checkpoint(ckpt, dst, opset or DEFAULT_OPSET)
    return Exported(res.path, method, res.seconds,
                    f"wrote {res.path} in {res.seconds:.1f} s (opset {res.opset}, {len(res.op_types)} op types, "
                    f"window {res.meta.window}, sites {[s.name for s in res.meta.sites]}, sha256 {res.sha256[:12]})")


__all__ = ["Exported", "export_any_checkpoint"]
