"""Export backbone + SegWithU head as one single-pass ONNX graph (no masks, no noise inputs).

Graph: input ``x [B, in, *window]`` (B dynamic); outputs ``logits`` (raw backbone logits),
``tempered_logits`` (= logits / T), ``temperature`` (>= 1), ``u_cal``, ``u_rnk``, ``u_epi`` (all
``[B, 1, *window]`` but the logits). The K probe codes are constants, so the graph is deterministic.
Exporter: dynamo with its ONNX optimiser on (with ``optimize=False`` ONNX Runtime 1.23 rejected a Conv
"bias must be 1D" here; the TUNE++ backbone does not export with the TorchScript exporter, see
``export/onnx_export.py``); the backbone's decoder hooks are traced like any Python code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from tunepp_deploy.config.load import config_to_dict
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.export.onnx_export import ACCURATE_NORMS
from tunepp_deploy.methods.segwithu.model import SegWithU

OUTPUTS = ("logits", "tempered_logits", "temperature", "u_cal", "u_rnk", "u_epi")


class SegWithUGraph(nn.Module):
    """``forward(x) -> OUTPUTS`` as a tuple of tensors."""

    def __init__(self, model: SegWithU) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        logits, o = self.model(x)
        return logits, o.tempered_logits, o.temperature, o.u_cal, o.u_rnk, o.u_epi


def export_segwithu(
    model: SegWithU, cfg: TuneppConfig, window: Sequence[int], path: str | Path, opset: int = 18
) -> Path:
    """Write the single-pass graph for windows of ``window``; returns the path."""
    import contextlib
    import io
    import logging
    import warnings

    model = model.to("cpu").float().eval()
    x = torch.zeros(2, cfg.model.in_channels, *window)  # batch 1 would be specialised by torch.export
    batch = torch.export.Dim("batch", min=1, max=1024)
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(SegWithUGraph(model), (x,), None, input_names=["x"],
                                        output_names=list(OUTPUTS), dynamic_shapes=({0: batch},),
                                        opset_version=opset, dynamo=True, optimize=True, verbose=False,
                                        custom_translation_table=ACCURATE_NORMS)  # ORT's InstanceNorm drifts
    except Exception as e:  # the exporter raises many types; the first line says what failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuneppError(f"ONNX export of SegWithU failed: {first[:200]}") from None
    finally:
        logging.getLogger("torch.onnx").setLevel(level)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {
        "tunepp_method": "segwithu", "window": json.dumps(list(window)),
        "config": json.dumps(config_to_dict(cfg)),
    })
    p = Path(path)
    write_atomic(p, lambda t: onnx.save(proto, str(t)), suffix=".onnx")
    return p


__all__ = ["OUTPUTS", "SegWithUGraph", "export_segwithu"]
