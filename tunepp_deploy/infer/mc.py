"""Sliding-window Monte-Carlo inference of TUNE++ on any :class:`~tunepp_deploy.infer.runners.Runner`.

For a preprocessed volume (model spacing, normalised), the S dropout samples flow in chunks through
the stitched volume (:func:`tunepp_deploy.infer.sampling.stream_chunks`): per chunk of ``n`` samples,
one sliding-window pass whose runner calls take ``B`` windows x ``S'`` samples (the trunk once for
the B windows, the head for all rows). Each row's logits become the sample's predictive with the
heteroscedastic logit noise averaged in (:func:`~tunepp_deploy.infer.logit_noise.sampled_softmax`),
each sample's predictive is stitched over the whole scan, and the chunk is folded into float64
sufficient statistics (:class:`~tunepp_deploy.infer.moments.SampleStats`). So:

* **exact at any size** (``blend="sample"``, the default; ``auto`` means the same): the maps equal
  the per-sample blend for every chunk size, and memory is O(K x V) plus one chunk;
* **trunk across chunks**: with one chunk the trunk runs once per window batch; with several, a
  runner that :attr:`~Runner.splits` (torch) caches the trunk outputs of every window batch when
  they fit a quarter of the budget, else — and always for exported one-graph runners (ONNX Runtime,
  TensorRT) — the trunk is recomputed once per chunk. ``MCResult.trunk`` says which;
* **head call size**: ``MCSettings.rows_per_call`` (default: the runner's, on a CPU a head budget of
  rows x window voxels for runners that split, :func:`~tunepp_deploy.infer.runners.base.default_rows_per_call`)
  caps the rows of one call; with a split runner the trunk still runs once per window batch and only
  the head runs per call, so a large window's head runs in small calls (bench/head_calls.py measures
  the fastest size, bench/results/head_calls.md). The maps do not depend on it;
* ``blend="window"`` (explicit only) blends per-window moments: one pass, cheaper, approximate in the
  epistemic/aleatoric split (:mod:`tunepp_deploy.infer.uncertainty`), named in the report.

A stored temperature divides every sample's logits, and shifts the log-variance by ``-2 log T``
(``(z + sigma eps) / T``), before the softmax. Everything stays on the runner's device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.export.metadata import ModelMeta
from tunepp_deploy.infer.allocator import Workspace, tune_malloc
from tunepp_deploy.infer.logit_noise import DEFAULT_NOISE_DRAWS, draw_logit_noise, sampled_softmax
from tunepp_deploy.infer.masks import SampleMasks, mask_alignment
from tunepp_deploy.infer.moments import SampleStats
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.sampling import plan_chunk, sample_chunks, stream_chunks
from tunepp_deploy.infer.sliding_window import count_windows
from tunepp_deploy.infer.uncertainty import UncertaintyMaps, entropy

Blend = Literal["auto", "sample", "window"]
#: Share of the memory budget the trunk cache may take when samples run in several chunks.
TRUNK_CACHE_SHARE = 0.25
#: Share of the memory budget one runner call may take in the exact blend (the stitched chunk and the
#: float64 statistics need the rest: on a 240x240x160 scan they are ~1.5 GB before the first sample).
CALL_SHARE = 0.25


@dataclass(frozen=True)
class MCSettings:
    """How to run MC inference (CLI flags map 1:1)."""

    samples: int = 25
    seed: int = 0
    overlap: float = 0.5
    max_batch: int = 8
    memory_gb: float = 4.0
    blend: Blend = "auto"
    noise_draws: int = DEFAULT_NOISE_DRAWS
    #: Samples per stitched chunk; None = the largest the budget allows (set it to compare designs).
    sample_chunk: int | None = None
    #: Rows (window x sample) per runner call; None = the runner's default (:meth:`Runner.max_rows`:
    #: on a CPU, a head budget for runners that split trunk and head). On a split runner the trunk still
    #: runs once per window batch; on a one-graph runner fewer rows than S rerun the trunk per call.
    #: ``bench/head_calls.py`` measures the fastest (``tunepp infer --rows-per-call auto``).
    rows_per_call: int | None = None


@dataclass(frozen=True)
class CallPlan:
    """Windows and samples per runner call."""

    windows_per_call: int
    samples_per_call: int
    samples: int
    row_bytes: int

    @property
    def sample_chunks(self) -> int:
        """Runner calls per window batch and sample chunk; above 1 a one-graph runner reruns the trunk."""
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
    sample_chunk: int = 0
    trunk: str = "once"
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


def check_rows_per_call(rows: object) -> int | None:
    """``rows`` as a row count (None stays None); anything but an integer >= 1 is a one-line error."""
    if rows is None:
        return None
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise TuneppError(f"rows per call must be an integer >= 1 (or auto), got {rows!r}")
    return int(rows)


def parse_rows_per_call(text: str) -> int | Literal["auto"]:
    """A ``--rows-per-call`` value: ``auto`` (measure, :mod:`tunepp_deploy.bench.head_calls`) or N >= 1."""
    t = str(text).strip().lower()
    if t == "auto":
        return "auto"
    try:
        n = int(t)
    except ValueError:
        n = 0
    if n < 1:
        raise TuneppError(f"--rows-per-call must be an integer >= 1 or auto, got {text!r}")
    return n


def row_cap(runner: Runner, rows_per_call: int | None) -> int | None:
    """The engine's row cap: the chosen rows per call, bounded by a backend's own hard limit (a runner
    class that overrides :attr:`Runner.max_rows`, e.g. a TensorRT profile), else the runner's default."""
    rows = check_rows_per_call(rows_per_call)
    if rows is None:
        return runner.max_rows
    hard = runner.max_rows if type(runner).max_rows is not Runner.max_rows else None
    return rows if hard is None else min(rows, hard)


def plan_calls(meta: ModelMeta, samples: int, max_batch: int, memory_gb: float, max_rows: int | None) -> CallPlan:
    """Windows x samples per call under the memory budget and the runner's row limit."""
    rb = row_bytes(meta)
    budget_rows = max(1, int(memory_gb * 2**30 // rb))
    if max_rows is not None:
        budget_rows = min(budget_rows, max_rows)
    s_call = min(samples, budget_rows)
    b_call = max(1, min(max_batch, budget_rows // s_call))
    return CallPlan(b_call, s_call, samples, rb)


def engine_plan(runner: Runner, settings: MCSettings) -> CallPlan:
    """The call plan :func:`mc_predict` uses for ``settings`` on ``runner`` (the exact blend's calls get
    :data:`CALL_SHARE` of the budget, the per-window blend all of it)."""
    call_gb = settings.memory_gb * (1.0 if settings.blend == "window" else CALL_SHARE)
    return plan_calls(runner.meta, settings.samples, settings.max_batch, call_gb,
                      row_cap(runner, settings.rows_per_call))


def window_output_bytes(meta: ModelMeta, windows_per_call: int) -> int:
    """What each sample of a chunk costs besides its stitched maps: its window batch's outputs
    ``[n, B, K, *window]`` float32, counted twice. Since the engine reuses one output buffer and the
    blend reads its ``[n, B, K]`` layout directly (no transposed copy any more), the second copy is
    headroom: an over-estimate kept so that budgets planned before stay valid (not re-measured).
    Likewise ``plan_chunk`` still counts a normalised copy that the exact blend's fused fold no longer
    makes (the other samplers still do)."""
    return 2 * int(windows_per_call) * meta.num_classes * math.prod(meta.window) * 4


def _tempered(logits: torch.Tensor, log_var: torch.Tensor, temperature: torch.Tensor | None):
    if temperature is None:
        return logits, log_var
    t = temperature.to(logits.device)
    shape = (1, -1) + (1,) * (logits.dim() - 2)
    # one T: sigma / T; per-class T_k: the shared log-variance is scaled by the mean log T (documented)
    return logits.float() / t.view(shape), log_var.float() - 2.0 * torch.log(t).mean()


def mc_predict(
    volume: torch.Tensor,
    runner: Runner,
    masks: SampleMasks,
    settings: MCSettings,
    progress: Callable[[int], None] | None = None,
    temperature: Sequence[float] | None = None,
) -> MCResult:
    """MC-dropout maps of ``volume`` ``[C, D, H, W]`` (preprocessed) on ``runner``'s device (module docstring).

    ``progress(n)`` is called with the windows x samples each pass completed.
    """
    meta = runner.meta
    t0 = time.perf_counter()
    tune_malloc()  # once per process: large blocks from the heap, reused (infer/allocator.py)
    work = Workspace(runner.device)  # the run's reusable per-call buffers
    S, K = masks.samples, meta.num_classes
    if masks.sites and tuple(s.name for s in masks.sites) != tuple(s.name for s in meta.sites):
        raise TuneppError("masks were drawn for other dropout sites than the model's")
    if settings.blend not in ("auto", "sample", "window"):
        raise TuneppError(f"unknown blend '{settings.blend}' (use auto, sample or window)")
    blend = "window" if settings.blend == "window" else "sample"
    plan = engine_plan(runner, settings)
    noise = torch.from_numpy(draw_logit_noise(settings.seed, range(S), settings.noise_draws, K))
    temp = None if temperature is None else torch.tensor([float(t) for t in temperature], dtype=torch.float32)
    shape = tuple(int(n) for n in volume.shape[1:])
    align = mask_alignment(meta.sites)  # element masks: windows on the stride grid (infer/masks.py)
    call_bytes = plan.windows_per_call * plan.samples_per_call * plan.row_bytes
    calls = 0

    chunk = S
    trunk = "once"
    cache_budget = 0
    # the trunk outputs of every window, if the runner can cache them and they fit their share
    n_win = count_windows(shape, meta.window, settings.overlap, align)
    need = runner.trunk_bytes(n_win) if runner.splits else None
    if need is not None:  # all window batches if they fit their share, else as many as do
        cache_budget = int(min(need, TRUNK_CACHE_SHARE * settings.memory_gb * 2**30))
    if blend == "sample" and settings.sample_chunk is not None:
        chunk = max(1, min(S, int(settings.sample_chunk)))
    elif blend == "sample":
        window_out = window_output_bytes(meta, plan.windows_per_call)
        chunk = plan_chunk(shape, meta.window, K, S, settings.memory_gb, call_bytes, window_out)
        if chunk < S and cache_budget:
            try:  # the cache takes its share from the chunk; without room for one sample, no cache
                chunk = plan_chunk(shape, meta.window, K, S, settings.memory_gb, call_bytes + cache_budget,
                                   window_out)
            except TuneppError:
                cache_budget = 0
    n_chunks = math.ceil(S / chunk)
    use_cache = n_chunks > 1 and cache_budget > 0
    cache: dict[int, tuple[torch.Tensor, ...]] = {}
    cache_bytes = 0
    state = {"ids": -1, "batch": 0}

    def probs_rows(x: torch.Tensor, sub: list[int], feats: tuple[torch.Tensor, ...] | None,
                   starts: Sequence[tuple[int, ...]] | None, into: torch.Tensor) -> torch.Tensor:
        """The rows' predictives written into ``into [len(sub), b, K, *window]`` (contiguous)."""
        nonlocal calls
        b = x.shape[0]
        rows = masks.rows(sub, b, runner.device, starts=starts)
        logits, log_var = runner.head(feats, rows) if feats is not None else runner(x, rows)
        calls += 1
        logits, log_var = _tempered(logits, log_var, temp)
        eps = noise[sub].repeat_interleave(b, dim=0)  # row j * b + w: sample sub[j]
        sampled_softmax(logits, log_var, eps, out=into.view(len(sub) * b, K, *x.shape[2:]), work=work)
        return into

    def trunk_of(x: torch.Tensor, ids: Sequence[int]) -> tuple[torch.Tensor, ...] | None:
        nonlocal cache_bytes
        if not runner.splits:
            return None
        if state["ids"] != ids[0]:
            state["ids"], state["batch"] = ids[0], 0
        i = state["batch"]
        state["batch"] += 1
        if i in cache:
            return cache[i]
        feats = runner.trunk(x)
        if use_cache:
            size = sum(t.numel() * t.element_size() for t in feats)
            if cache_bytes + size <= cache_budget:
                cache[i] = feats
                cache_bytes += size
        return feats

    def per_sample(x: torch.Tensor, ids: Sequence[int], starts: Sequence[tuple[int, ...]] | None) -> list[torch.Tensor]:
        feats = trunk_of(x, ids)
        # one buffer for every window batch: the blend has added the previous batch before this call
        out = work.get("window_out", (len(ids), x.shape[0], K, *x.shape[2:]))
        for sub in sample_chunks(len(ids), plan.samples_per_call):
            probs_rows(x, [ids[j] for j in sub], feats, starts, out[sub[0] : sub[-1] + 1])
        return [out]

    def window_moments(x: torch.Tensor, ids: Sequence[int],
                       starts: Sequence[tuple[int, ...]] | None) -> list[torch.Tensor]:
        feats = trunk_of(x, ids)
        b = x.shape[0]
        mean = torch.zeros((b, K, *x.shape[2:]), dtype=torch.float64, device=runner.device)
        sq = torch.zeros((b, *x.shape[2:]), dtype=torch.float64, device=runner.device)
        ent = torch.zeros_like(sq)
        for sub in sample_chunks(len(ids), plan.samples_per_call):
            into = work.get("window_out", (len(sub), b, K, *x.shape[2:]))
            p = probs_rows(x, [ids[j] for j in sub], feats, starts, into).double()
            mean += p.sum(0)
            sq += (p * p).sum((0, 2))
            ent += entropy(p, 2).sum(0)
        n = float(len(ids))
        return [torch.cat([mean / n, (sq / n)[:, None], (ent / n)[:, None]], 1).float()[None]]

    vol = volume.to(runner.device, torch.float32)
    stats = SampleStats()
    if blend == "sample":  # the chunk's sums fold straight into the statistics (no normalised copy)
        for _ids, sums in stream_chunks(vol, per_sample, meta.window, S, chunk, overlap=settings.overlap,
                                        batch=plan.windows_per_call, progress=progress, align=align, sums=True):
            stats.add_stitched(sums.accs[0], sums.norm, sums.spatial)
    else:
        for _ids, (out,) in stream_chunks(vol, window_moments, meta.window, S, chunk, overlap=settings.overlap,
                                          batch=plan.windows_per_call, progress=progress, reduced=True,
                                          align=align):
            stats.add_moments(out[0, :K], out[0, K], out[0, K + 1], S)
    work.clear()  # the run's buffers go before the maps are made, not when the caller drops them
    if n_chunks > 1:  # a one-graph runner, or a trunk too big to cache, recomputes (some of) it per chunk
        batches = math.ceil(n_win / plan.windows_per_call)
        trunk = "cached" if len(cache) == batches else ("partly cached" if cache else "recomputed")
    cache.clear()  # the trunk cache (up to a quarter of the budget) must not coexist with the final maps
    del vol
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return MCResult(stats.maps(), blend, n_win, calls, plan,
                    time.perf_counter() - t0, sample_chunk=chunk, trunk=trunk,
                    extra={"trunk_cache_bytes": float(cache_bytes), "sample_chunks": float(n_chunks)})


__all__ = ["Blend", "CallPlan", "MCResult", "MCSettings", "check_rows_per_call", "engine_plan", "mc_predict",
           "parse_rows_per_call", "plan_calls", "row_bytes", "row_cap", "window_output_bytes"]
