"""A variational (Bayesian-weight) network with S weight-noise samples as a :class:`~.base.Predictor`.

Sample ``s`` is one network ``f_s`` (the weights ``mu + sigma * eps_s``, the same noise in every
window of the scan), so its softmax is stitched over the whole scan with the Gaussian blend and the
maps are statistics over the S stitched volumes — the exact per-sample blend. The samples run in
chunks through :func:`tunepp_deploy.infer.sampling.stream_chunks` into
:class:`tunepp_deploy.infer.moments.SampleStats`, so memory does not grow with S; the chunk size
comes from :func:`~tunepp_deploy.infer.sampling.plan_chunk` and the ``memory_gb`` budget, and any
chunk size gives the same maps (tested).

Maps (:mod:`tunepp_deploy.infer.uncertainty`; the network has no aleatoric head, so each sample's
predictive is its plain softmax ``p_s``): **aleatoric** ``= mean_s (1 - sum_k p_{s,k}^2)``,
**epistemic** ``= sum_k Var_s p_{s,k}``, **total** ``= aleatoric + epistemic = 1 - sum_k pbar_k^2``;
predictive entropy and mutual information for the report. The noise is drawn once from the seed
(:func:`~tunepp_deploy.methods.variational.noise.sample_weight_noise` of the kernel shapes) and is
identical on torch and ONNX Runtime. One runner call is one sample for a batch of windows (the noise
is a static graph input), so a chunk of ``n`` samples is ``n`` calls per window batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.moments import SampleStats
from tunepp_deploy.infer.sampling import plan_chunk, stream_chunks
from tunepp_deploy.infer.sliding_window import count_windows
from tunepp_deploy.infer.uncertainty import clamp_and_sum
from tunepp_deploy.methods.variational.noise import sample_weight_noise
from tunepp_deploy.methods.variational.runners import INPUT, OUTPUT, VariationalGraph, open_variational_runner
from tunepp_deploy.predictors.base import Prediction, Predictor, Progress, counting
from tunepp_deploy.predictors.settings import RunOptions, RunSettings, resolve

MAP_NAMES = ("aleatoric", "epistemic", "total")
DEFINITIONS = ("see tunepp_deploy/infer/uncertainty.py (p_s = softmax of weight sample s): "
               "aleatoric = mean_s(1 - sum_k p_sk^2), epistemic = sum_k Var_s p_sk, "
               "total = aleatoric + epistemic = 1 - sum_k pbar_k^2")
#: Window-level buffers per sample and window of one call: the softmax, its stack and stream_chunks' copy.
_CALL_COPIES = 3


class VariationalPredictor(Predictor):
    """A variational graph runner plus S seeded noise sets; the runner is closed with the predictor.

    ``chunk`` fixes the samples per sliding-window pass (tests, benchmarks); None plans it from
    ``settings.memory_gb`` per volume.
    """

    method = "variational"
    map_names = MAP_NAMES
    flag_map = "total"
    definitions = DEFINITIONS

    def __init__(self, graph: VariationalGraph, settings: RunSettings, chunk: int | None = None) -> None:
        super().__init__(graph.cfg, graph.window, graph.runner.name, graph.runner.device)  # type: ignore[arg-type]
        if settings.blend == "window":
            raise TuneppError("--blend window applies to TUNE++ MC dropout; variational samples always use the "
                              "exact per-sample blend (--blend sample)")
        self.graph, self.runner, self.settings, self.chunk = graph, graph.runner, settings, chunk
        self.noise = sample_weight_noise(graph.noise_shapes, settings.samples, settings.seed)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sample_chunk(self, shape: Sequence[int]) -> int:
        """Samples per pass for a volume of ``shape``: ``chunk``, else the most the budget allows."""
        s = self.settings
        if self.chunk is not None:
            return max(1, min(int(self.chunk), s.samples))
        k = self.num_classes
        call = _CALL_COPIES * 4 * k * math.prod(self.window) * s.max_batch
        return plan_chunk(shape, self.window, k, s.samples, s.memory_gb, per_sample_bytes=call,
                          hint="raise --memory-gb")

    def _chunk(self, x: torch.Tensor, ids: Sequence[int], _starts: object) -> list[torch.Tensor]:
        outs = []
        for s in ids:
            feeds = {INPUT: x, **dict(zip(self.graph.noise_names, self.noise.sample(s), strict=True))}
            outs.append(torch.softmax(self.runner.run(feeds)[OUTPUT], 1))
        return [torch.stack(outs)]

    def predict(self, image: np.ndarray, progress: Progress | None = None) -> Prediction:
        s = self.settings
        vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        windows = count_windows(image.shape, self.window, s.overlap)
        chunk = self.sample_chunk(image.shape)
        step = counting(progress, windows * s.samples)

        stats = SampleStats()
        for _ids, (p,) in stream_chunks(vol, self._chunk, self.window, s.samples, chunk, s.overlap, s.max_batch,
                                        step):
            stats.add(p)
        m = stats.maps()
        maps = {"aleatoric": m.aleatoric, "epistemic": m.epistemic, "total": m.total,
                "predictive_entropy": m.predictive_entropy, "mutual_information": m.mutual_information}
        info: dict[str, Any] = {"samples": s.samples, "seed": s.seed, "overlap": s.overlap, "windows": windows,
                                "blend": "sample", "sample_chunk": chunk, "arch": self.graph.settings.get("arch")}
        return Prediction(m.mean_probs, maps, info)

    def finish_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return clamp_and_sum(maps)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "arch": self.graph.settings.get("arch")}

    def describe_runner(self) -> str:
        return f"{self.runner.describe()}, variational {self.graph.settings.get('arch')}"

    def close(self) -> None:
        self.runner.close()


def open_variational_predictor(path: Path, backend: str, device: torch.device, threads: int | None,
                               opts: RunOptions) -> VariationalPredictor:
    """``vi.pt`` (torch) or ``vi.onnx`` (ONNX Runtime) as a predictor; ``backend`` is ``auto|torch|ort``
    and must match the file. ``opts`` over the model config's ``infer`` defaults."""
    graph = open_variational_runner(path, backend, device, threads)
    try:
        return VariationalPredictor(graph, resolve(graph.cfg, opts))
    except BaseException:
        graph.runner.close()
        raise


__all__ = [
    "DEFINITIONS",
    "MAP_NAMES",
    "VariationalPredictor",
    "open_variational_predictor",
]
