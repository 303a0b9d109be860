"""What one benchmark measurement runs: a synthetic scan through ``tunepp infer``'s stages, minus file I/O.

**The scan.** A CT-like volume (air, an elliptical body, a few soft-tissue ellipsoids, 20 HU noise)
at a *raw* spacing that the preprocessing resamples to the requested model-grid ``volume``: raw
spacing = model spacing x (0.46875, 0.46875, 1.25). For the Synapse config (1.5 x 1.5 x 2.0 mm)
that is a 512 x 512 x 128 scan at 0.70 x 0.70 x 2.5 mm — a typical abdominal CT of the Synapse set
(512 x 512 in-plane, 85-198 slices, 0.54-0.98 mm pixels, 2.5-5 mm slices) — which resamples to the
default 240 x 240 x 160. So the preprocess stage does the real work of a real case: trilinear
resampling from a larger grid and HU windowing.

**The stages** (:data:`STAGES`) are those of :func:`tunepp_deploy.infer.case.run_case` without
loading and writing NIfTI files (disk and gzip speed are not what is being compared): preprocess,
then :meth:`TuneppPredictor.predict <tunepp_deploy.predictors.tunepp.TuneppPredictor.predict>` —
the streamed MC engine :func:`tunepp_deploy.infer.mc.mc_predict` — split into network / stitching /
uncertainty (see :mod:`tunepp_deploy.bench.probes`), then resampling the probabilities and maps back
to the input grid (:func:`~tunepp_deploy.infer.case.to_input_grid` and the predictor's
``finish_maps``), then the topology report. All of it is the toolkit's own code, the predictor that
``tunepp infer`` opens for a TUNE++ model.

**The naive baseline** (:func:`run_naive`) is the seed's MC loop, ``preds = [model(x) for _ in
range(25)]``: S complete sliding-window passes of ``model.forward`` with one sample's masks each —
the trunk recomputed for every sample and no sample batching. Each sample's predictive gets the same
logit noise as the engine's (:func:`~tunepp_deploy.infer.logit_noise.sampled_softmax` with
``draw_logit_noise(seed, range(S), noise_draws, K)``, the run's seed) and the engine's window grid
and per-window masks (element-mode sites depend on the window's position), the S stitched predictives are kept
(``S x K x V``, as the seed did) and turned into maps by the reference formula
:func:`~tunepp_deploy.infer.uncertainty.maps_from_samples`; then the same resampling and report. So
its total compares like for like with the engine's, and its maps must equal the engine's exactly
(both are the per-sample blend; the ``checks`` of ``bench.json``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tunepp_deploy.export.metadata import ModelMeta

from tunepp_deploy.data.preprocess import preprocess_image
from tunepp_deploy.infer.case import DEFAULT_FLAG_THRESHOLD, to_input_grid
from tunepp_deploy.infer.logit_noise import draw_logit_noise, sampled_softmax
from tunepp_deploy.infer.masks import SampleMasks, mask_alignment
from tunepp_deploy.infer.mc import MCSettings, plan_calls
from tunepp_deploy.infer.report import build_report
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.sliding_window import count_windows, sliding_window
from tunepp_deploy.infer.uncertainty import UncertaintyMaps, clamp_and_sum, maps_from_samples
from tunepp_deploy.model.network import TUNEPP
from tunepp_deploy.predictors.base import Prediction
from tunepp_deploy.predictors.settings import RunSettings
from tunepp_deploy.predictors.tunepp import TuneppPredictor

from .probes import TimedRunner, synchronize

STAGES = ("preprocess", "network", "stitching", "uncertainty", "resample_to_input", "report")
#: Raw scan spacing relative to the model spacing (module docstring: 512x512x128 -> 240x240x160).
RAW_SPACING_FACTOR = (0.46875, 0.46875, 1.25)


@dataclass(frozen=True)
class Scan:
    """A synthetic raw scan: HU values, its spacing (mm) and affine."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


@dataclass
class RunResult:
    """One timed end-to-end run: seconds per stage, the total, and what the engine did."""

    stages: dict[str, float]
    total: float
    windows: int
    calls: int
    windows_per_call: int
    samples_per_call: int
    blend: str
    mean_probs: torch.Tensor  # model grid, for cross-checking the naive loop against the engine
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # model grid, the same check for every map
    info: dict[str, Any] = field(default_factory=dict)  # sample_chunk, trunk, ... (the predictor's report info)


def make_scan(volume: Sequence[int], model_spacing: Sequence[float], seed: int = 0) -> Scan:
    """The raw scan that preprocesses to ``volume`` voxels at ``model_spacing`` (module docstring)."""
    spacing = tuple(float(s * f) for s, f in zip(model_spacing, RAW_SPACING_FACTOR, strict=True))
    shape = tuple(max(1, round(v / f)) for v, f in zip(volume, RAW_SPACING_FACTOR, strict=True))
    rng = np.random.default_rng(seed)
    # normalised coordinates in [-1, 1] per axis, as broadcastable 1-D grids (no full meshgrid);
    # axis 2 is the slice axis (512 x 512 x slices), as in the NIfTI files the toolkit reads
    a0, a1, a2 = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    a0, a1, a2 = a0[:, None, None], a1[None, :, None], a2[None, None, :]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = np.broadcast_to((a0 / 0.9) ** 2 + (a1 / 0.75) ** 2 <= 1.0, shape)  # elliptic cylinder along axis 2
    hu[body] = 40.0
    for _ in range(5):
        c = rng.uniform(-0.4, 0.4, size=3).astype(np.float32)
        r = rng.uniform(0.1, 0.25, size=3).astype(np.float32)
        inside = ((a0 - c[0]) / r[0]) ** 2 + ((a1 - c[1]) / r[1]) ** 2 + ((a2 - c[2]) / r[2]) ** 2 <= 1.0
        hu[inside] = rng.uniform(60.0, 180.0)
    hu += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    return Scan(hu, spacing, affine)  # type: ignore[arg-type]


def preprocessed_shape(scan: Scan, runner_meta_spacing: Sequence[float]) -> tuple[int, ...]:
    """Model-grid shape of ``scan`` (what the sliding window tiles)."""
    from tunepp_deploy.data.preprocess import resampled_shape

    return resampled_shape(scan.hu.shape, scan.spacing, runner_meta_spacing)


def prediction_maps(m: UncertaintyMaps) -> dict[str, torch.Tensor]:
    """The maps a TUNE++ prediction carries (what :class:`TuneppPredictor` returns)."""
    return {"aleatoric": m.aleatoric, "epistemic": m.epistemic, "total": m.total,
            "predictive_entropy": m.predictive_entropy, "mutual_information": m.mutual_information}


def _finish(pred: Prediction, scan: Scan, classes: list[str], stages: dict[str, float], t: float) -> float:
    """Resample to the input grid and build the report as ``run_case`` does, adding both stages;
    returns the clock."""
    seg, _probs, maps = to_input_grid(pred, scan.hu.shape)
    maps = clamp_and_sum(maps)
    now = time.perf_counter()
    stages["resample_to_input"] = now - t
    report_maps = {"total": maps["total"], **{k: v for k, v in maps.items() if k != "total"}}
    build_report(seg, report_maps, classes, scan.spacing, scan.affine, DEFAULT_FLAG_THRESHOLD)
    end = time.perf_counter()
    stages["report"] = end - now
    return end


def _preprocess(scan: Scan, meta: ModelMeta, device: torch.device,
                stages: dict[str, float]) -> tuple[np.ndarray, float, float]:
    """Resample + normalise the scan as inference does, recording the ``preprocess`` stage; returns
    the preprocessed volume (host, as ``run_case`` hands it to the predictor) and the stage's start
    and end clock readings."""
    synchronize(device)
    t0 = time.perf_counter()
    pre = preprocess_image(scan.hu, scan.spacing, meta.spacing, meta.intensity)
    t1 = time.perf_counter()
    stages["preprocess"] = t1 - t0
    return pre, t0, t1


def settings_of(mc: MCSettings) -> RunSettings:
    """The predictor's resolved settings for engine settings ``mc``."""
    return RunSettings(samples=mc.samples, seed=mc.seed, overlap=mc.overlap, max_batch=mc.max_batch,
                       memory_gb=mc.memory_gb, blend=mc.blend, noise_draws=mc.noise_draws)


def run_engine(runner: Runner, scan: Scan, masks: SampleMasks, mc: MCSettings) -> RunResult:
    """The TUNE++ predictor (the streamed MC engine) end to end on ``runner`` (module docstring),
    timed per stage. ``masks`` replace the predictor's own (for the single pass: all-ones masks)."""
    meta, dev = runner.meta, runner.device
    timed = TimedRunner(runner)
    predictor = TuneppPredictor(timed, settings_of(mc))  # opened once per model in `tunepp infer`: not timed
    predictor.masks = masks
    stages: dict[str, float] = {}
    pre, t0, t1 = _preprocess(scan, meta, dev, stages)
    last = [t1]

    def stitched(_done: int, _total: int) -> None:
        synchronize(dev)
        last[0] = time.perf_counter()

    pred = predictor.predict(pre, stitched)
    t2 = time.perf_counter()  # mc_predict synchronises before returning on CUDA
    stages["network"] = timed.seconds()
    stages["uncertainty"] = t2 - last[0]
    stages["stitching"] = max(0.0, (t2 - t1) - stages["network"] - stages["uncertainty"])
    end = _finish(pred, scan, meta.classes, stages, t2)
    info = pred.info
    return RunResult(stages, end - t0, info["windows"], info["runner_calls"], info["windows_per_call"],
                     info["samples_per_call"], info["blend"], pred.probs, dict(pred.maps),
                     {**{k: info[k] for k in ("sample_chunk", "sample_chunks", "trunk", "noise_draws")},
                      "trunk_windows": timed.trunk_windows, "head_rows": timed.head_rows,
                      "call_faults": timed.call_faults})


class EagerForward(Runner):
    """``net.forward(x, masks)`` as a runner: the whole network per call, the seed's ``model(x)``."""

    name = "torch-eager-forward"

    def __init__(self, net: TUNEPP, meta, device: torch.device) -> None:
        super().__init__(meta, device)
        self.net = net.to(device).eval()

    @torch.inference_mode()
    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x.to(self.device), [m.to(self.device) for m in masks], with_aux=False)
        return out.logits, out.log_var


def run_naive(forward: EagerForward, scan: Scan, masks: SampleMasks, mc: MCSettings) -> RunResult:
    """The seed's loop: S full sliding-window passes, one sample each (module docstring)."""
    meta, dev = forward.meta, forward.device
    stages: dict[str, float] = {}
    pre, t0, _ = _preprocess(scan, meta, dev, stages)
    x = torch.from_numpy(pre)[None].to(dev)
    synchronize(dev)
    t1 = time.perf_counter()
    stages["preprocess"] = t1 - t0  # with the copy to the device, which the engine's predictor does itself

    timed = TimedRunner(forward)
    batch = plan_calls(meta, 1, mc.max_batch, mc.memory_gb, None).windows_per_call
    k = meta.num_classes
    noise = torch.from_numpy(draw_logit_noise(mc.seed, range(masks.samples), mc.noise_draws, k))  # the engine's
    align = mask_alignment(meta.sites)  # element-mode masks: the engine's window grid and per-window masks
    probs = []
    for s in range(masks.samples):
        def predictor(xb: torch.Tensor, starts: list[tuple[int, ...]], s: int = s) -> list[torch.Tensor]:
            logits, log_var = timed(xb, masks.rows([s], xb.shape[0], dev, starts=starts))
            return [sampled_softmax(logits, log_var, noise[[s]].expand(xb.shape[0], -1, -1))]

        (p,) = sliding_window(x, predictor, meta.window, overlap=mc.overlap, batch=batch, align=align,
                              with_starts=True)
        probs.append(p)
    synchronize(dev)
    t2 = time.perf_counter()
    maps = maps_from_samples(torch.stack(probs))
    synchronize(dev)
    t3 = time.perf_counter()
    stages["network"] = timed.seconds()
    stages["uncertainty"] = t3 - t2
    stages["stitching"] = max(0.0, (t2 - t1) - stages["network"])
    pred = Prediction(maps.mean_probs, prediction_maps(maps))
    end = _finish(pred, scan, meta.classes, stages, t3)
    windows = count_windows(tuple(x.shape[1:]), meta.window, mc.overlap, align)
    return RunResult(stages, end - t0, windows, timed.calls, batch, 1, "naive loop", maps.mean_probs,
                     dict(pred.maps), {"sample_chunk": masks.samples, "sample_chunks": 1, "trunk": "per sample",
                                       "noise_draws": mc.noise_draws, "trunk_windows": timed.trunk_windows,
                                       "head_rows": timed.head_rows, "call_faults": timed.call_faults})


Measure = Callable[[], RunResult]

__all__ = [
    "RAW_SPACING_FACTOR",
    "STAGES",
    "EagerForward",
    "RunResult",
    "Scan",
    "make_scan",
    "prediction_maps",
    "preprocessed_shape",
    "run_engine",
    "run_naive",
]
