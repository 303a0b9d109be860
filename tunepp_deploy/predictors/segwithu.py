"""SegWithU (backbone + post-hoc head, one deterministic pass) as a :class:`~.base.Predictor`.

One sliding-window pass over the scan (:func:`~tunepp_deploy.infer.sliding_window.sliding_window`,
Gaussian blend) of the graph of :mod:`tunepp_deploy.methods.segwithu.runner`, on torch (``head.pt``)
or ONNX Runtime (``segwithu.onnx``). What is blended and returned:

* ``probs`` — the **tempered** softmax ``softmax(z / T)``: the calibrated probabilities SegWithU
  is for. T is one scalar per voxel, so within a window its argmax is the raw softmax's;
* ``temperature`` (T >= 1), ``calibration`` (U_cal, with ``T = sqrt(1 + U_cal)``) and ``ranking``
  (U_rnk, the error-ranking score).

The ranking map is the flag map (the report's "total"): it is what SegWithU trains to rank errors.
It is a score, not a probability variance, so ``flag_threshold`` is in its units (its floor is about
``exp(-4) ~ 0.02`` on confident voxels). No samples: an MC option other than ``samples = 1`` is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.runners.graph import GraphRunner
from tunepp_deploy.infer.sliding_window import count_windows, sliding_window
from tunepp_deploy.methods.segwithu.runner import INPUT, open_segwithu_runner
from tunepp_deploy.predictors.base import Prediction, Predictor, Progress, counting
from tunepp_deploy.predictors.settings import RunOptions, RunSettings, resolve

MAP_NAMES = ("temperature", "calibration", "ranking")
DEFINITIONS = ("see tunepp_deploy/methods/segwithu/head.py; the report's 'total' is the ranking map U_rnk, "
               "'calibration' is U_cal, 'temperature' is T = sqrt(1 + U_cal)")


class SegWithUPredictor(Predictor):
    """A SegWithU graph runner plus the overlap and batch; the runner is closed with the predictor."""

    method = "segwithu"
    map_names = MAP_NAMES
    flag_map = "ranking"
    definitions = DEFINITIONS

    def __init__(self, runner: GraphRunner, cfg: TuneppConfig, window: tuple[int, ...], settings: RunSettings) -> None:
        super().__init__(cfg, window, runner.name, runner.device)  # type: ignore[arg-type]
        self.runner, self.settings = runner, settings

    def _window(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.runner.run({INPUT: x})
        return [torch.softmax(out["tempered_logits"], 1), out["temperature"], out["u_cal"], out["u_rnk"]]

    def predict(self, image: np.ndarray, progress: Progress | None = None) -> Prediction:
        s = self.settings
        vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        windows = count_windows(image.shape, self.window, s.overlap)
        p, t, uc, ur = sliding_window(vol, self._window, self.window, overlap=s.overlap, batch=s.max_batch,
                                      progress=counting(progress, windows))
        return Prediction(p, {"temperature": t[0], "calibration": uc[0], "ranking": ur[0]},
                          {"samples": 1, "windows": windows, "overlap": s.overlap})

    def finish_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """T >= 1 holds exactly again after trilinear round-off."""
        out = dict(maps)
        out["temperature"] = np.maximum(out["temperature"], 1.0).astype(np.float32)
        return out

    def describe_runner(self) -> str:
        return f"{self.runner.describe()}, segwithu single pass"

    def close(self) -> None:
        self.runner.close()


def open_segwithu_predictor(path: Path, backend: str, device: torch.device, threads: int | None,
                            opts: RunOptions) -> SegWithUPredictor:
    """``head.pt`` (torch) or ``segwithu.onnx`` (ONNX Runtime) as a predictor; ``backend`` is
    ``auto|torch|ort`` and must match the file. ``opts``: overlap and max_batch; one pass, so
    ``samples`` other than 1 and ``--blend window`` are one-line errors."""
    if opts.samples not in (None, 1):
        raise TuneppError(f"--samples {opts.samples}: SegWithU is one deterministic pass (no samples)")
    if opts.blend == "window":
        raise TuneppError("--blend window applies to TUNE++ MC sampling, not SegWithU (one deterministic pass)")
    graph = open_segwithu_runner(path, backend, device, threads)
    return SegWithUPredictor(graph.runner, graph.cfg, graph.window, resolve(graph.cfg, opts).with_(samples=1))


__all__ = ["DEFINITIONS", "MAP_NAMES", "SegWithUPredictor", "open_segwithu_predictor"]
