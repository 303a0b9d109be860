"""Sliding-window Monte-Carlo inference on any :class:`~tunepp_deploy.infer.runners.Runner`.

For a preprocessed volume (model spacing, normalised), windows overlapping by ``overlap`` are
evaluated in calls of ``B`` windows x ``S'`` samples: the runner runs the trunk once for the B
windows and the head for all ``S' * B`` rows. Tiling and Gaussian blending are
:func:`tunepp_deploy.infer.sliding_window.sliding_window`'s; this module only decides what each
window contributes and how many rows go into a call:

* **batch plan** (:func:`plan_calls`): ``S' = S`` samples per call unless one window's S rows exceed
  the memory budget (then samples are chunked and — the price of the one-graph export — the trunk
  is recomputed per chunk); ``B = min(max_batch, budget // (S' * row bytes))`` windows per call.
* **blend** (:mod:`tunepp_deploy.infer.uncertainty` explains why): ``sample`` accumulates every
  sample's softmax separately (exact MC over the stitched volume; ``S * K`` maps held on the
  device); ``window`` accumulates per-window moments (mean, summed variance, expected entropy;
  ``K + 3`` maps); ``auto`` picks ``sample`` when its accumulators fit in half the budget.

Everything stays on the runner's device; the caller resamples the maps to the input grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.export.metadata import ModelMeta
from tunepp_deploy.infer.masks import SampleMasks
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.sliding_window import count_windows, sliding_window
from tunepp_deploy.infer.uncertainty import (
    UncertaintyMaps,
    aleatoric_variance,
    entropy,
    from_moments,
    from_samples,
)

Blend = Literal["auto", "sample", "window"]


@dataclass(frozen=True)
class MCSettings:
    """How to run MC inference (CLI flags map 1:1)."""

    samples: int = 25
    seed: int = 0
    overlap: float = 0.5
    max_batch: int = 8
    memory_gb: float = 4.0
    blend: Blend = "auto"


@dataclass(frozen=True)
class CallPlan:
    """Windows and samples per runner call."""

    windows_per_call: int
    samples_per_call: int
    samples: int
    row_bytes: int

    @property
    def sample_chunks(self) -> int:
        """Calls per window batch; above 1 the trunk is recomputed for every chunk."""
        return math.ceil(self.samples / self.samples_per_call)


@dataclass
class MCResult:
    """Maps on the model grid plus what the run did."""

    maps: UncertaintyMaps
    blend: str
    windows: int
    calls: int
    plan: CallPlan
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def row_bytes(meta: ModelMeta) -> int:
    """Rough activation memory of one head row (one window, one sample), fp32.

    The head ends at full resolution: about eight full-resolution feature maps of the full-res width
    are alive at its peak, plus logits, log-variance and their softmax. Deliberately generous — it
    only sizes batches.
    """
    voxels = math.prod(meta.window)
    c_full = meta.config.model.full_res_channels or max(meta.config.model.widths[0] // 2, 4)
    return voxels * 4 * (8 * c_full + 3 * meta.num_classes + 4)


def plan_calls(meta: ModelMeta, samples: int, max_batch: int, memory_gb: float, max_rows: int | None) -> CallPlan:
    """Windows x samples per call under the memory budget and the runner's row limit."""
    rb = row_bytes(meta)
    budget_rows = max(1, int(memory_gb * 2**30 // rb))
    if max_rows is not None:
        budget_rows = min(budget_rows, max_rows)
    s_call = min(samples, budget_rows)
    b_call = max(1, min(max_batch, budget_rows // s_call))
    return CallPlan(b_call, s_call, samples, rb)


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def mc_predict(
    volume: torch.Tensor,
    runner: Runner,
    masks: SampleMasks,
    settings: MCSettings,
    progress: Callable[[int], None] | None = None,
) -> MCResult:
    """MC-dropout maps of ``volume`` ``[C, D, H, W]`` (preprocessed) on ``runner``'s device."""
    meta = runner.meta
    t0 = time.perf_counter()
    S, K = masks.samples, meta.num_classes
    if masks.sites and tuple(s.name for s in masks.sites) != tuple(s.name for s in meta.sites):
        raise TuneppError("masks were drawn for other dropout sites than the model's")
    plan = plan_calls(meta, S, settings.max_batch, settings.memory_gb, runner.max_rows)
    padded = [max(s, w) for s, w in zip(volume.shape[1:], meta.window, strict=True)]
    accum_bytes = S * K * math.prod(padded) * 4
    blend = settings.blend
    if blend == "auto":
        blend = "sample" if accum_bytes <= settings.memory_gb * 2**30 / 2 else "window"
    chunks = _chunks(S, plan.samples_per_call)
    calls = 0

    def run_chunks(x: torch.Tensor):
        nonlocal calls
        b = x.shape[0]
        for ids in chunks:
            logits, log_var = runner(x, masks.rows(ids, b, runner.device))
            calls += 1
            p = torch.softmax(logits.float(), dim=1)
            a = aleatoric_variance(p, log_var)[:, 0]
            yield ids, p.view(len(ids), b, K, *p.shape[2:]), a.view(len(ids), b, *a.shape[1:])

    def per_sample(x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        probs = torch.empty((S, b, K, *x.shape[2:]), device=runner.device)
        ale = torch.zeros((b, 1, *x.shape[2:]), device=runner.device)
        for ids, p, a in run_chunks(x):
            probs[ids[0] : ids[-1] + 1] = p
            ale[:, 0] += a.sum(0)
        return [probs.transpose(0, 1).reshape(b, S * K, *x.shape[2:]), ale / S]

    def moments(x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        s1 = torch.zeros((b, K, *x.shape[2:]), device=runner.device)
        s2 = torch.zeros_like(s1)
        h = torch.zeros((b, 1, *x.shape[2:]), device=runner.device)
        ale = torch.zeros_like(h)
        for _, p, a in run_chunks(x):
            s1 += p.sum(0)
            s2 += (p * p).sum(0)
            h[:, 0] += entropy(p, 2).sum(0)
            ale[:, 0] += a.sum(0)
        mean = s1 / S
        var = (s2 / S - mean * mean).clamp_min(0.0).sum(1, keepdim=True)
        return [mean, var, h / S, ale / S]

    vol = volume.to(runner.device, torch.float32)
    outs = sliding_window(
        vol, per_sample if blend == "sample" else moments, meta.window, overlap=settings.overlap,
        batch=plan.windows_per_call, progress=progress,
    )
    if blend == "sample":
        probs = outs[0].view(S, K, *outs[0].shape[1:])
        maps = from_samples(probs, outs[1][0])
    else:
        maps = from_moments(outs[0], outs[1][0], outs[2][0], outs[3][0])
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return MCResult(maps, blend, count_windows(tuple(volume.shape[1:]), meta.window, settings.overlap), calls, plan,
                    time.perf_counter() - t0)


__all__ = ["Blend", "CallPlan", "MCResult", "MCSettings", "mc_predict", "plan_calls", "row_bytes"]
