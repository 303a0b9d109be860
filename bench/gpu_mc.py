"""The GPU suite's MC part: the torch paths at Synapse size, their parity, the 4 GB budget, the naive loop.

**Paths** (:data:`PATHS`), each the TUNE++ predictor (the streamed MC engine, trunk once per window
batch) on :class:`~tunepp_deploy.infer.runners.torch_runner.TorchRunner`: ``fp32`` (TF32 off in
cuBLAS and cuDNN), ``tf32`` (on), ``bf16`` (autocast), ``bf16_graphs`` (CUDA graphs captured per trunk
/ head shape), ``bf16_compile`` (``torch.compile``, inductor, of the trunk and the head). Per path and
sample count (S = 1 with all-ones masks, the deterministic single pass; S = 25): ``warmup`` untimed
runs (graph capture and compilation happen there), then ``repeats`` timed ones: latency (host clock
after a device synchronise, and CUDA events around the same call), the stage split of
:mod:`tunepp_deploy.bench.probes` (network = inside runner calls, by CUDA events; uncertainty = after
the last stitched batch; stitching = the rest), windows/s, peak device memory (``max_memory_allocated``
reset before the timed runs) and measured/floor against matmul rates measured in the same run
(:func:`matmul_rate`: 8192^2 on random data, median of 10 after 3 warm-ups).

The timed call is the engine on the preprocessed volume (what ``tunepp infer`` spends on the device);
the CPU stages around it (preprocessing a 512x512x128 scan, resampling back, the topology report) are
measured once end to end (:func:`~tunepp_deploy.bench.workload.run_engine`) and reported beside it.

**Parity**: every path's S = 25 maps against the fp32 path's (same masks, same logit noise), and on a
tiny network the device against the CPU (:func:`tiny_parity`, also what ``tests/bench/test_gpu_parity.py``
asserts). **Jetson budget**: MC-25 under ``memory_gb = 4`` (the engine plans calls and streams sample
chunks into float64 statistics): the engine's planned bytes (:func:`~tunepp_deploy.bench.memory.memory_model`,
the terms of its own accounting) beside the measured device peak. **Naive**: the seed's S passes of
``model.forward`` (fp32), once.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tunepp_deploy.export.metadata import ModelMeta, meta_for

from tunepp_deploy.config import load_config
from tunepp_deploy.infer.masks import SampleMasks, identity_masks, sample_masks
from tunepp_deploy.infer.mc import (
    CALL_SHARE,
    TRUNK_CACHE_SHARE,
    MCSettings,
    mc_predict,
    plan_calls,
    window_output_bytes,
)
from tunepp_deploy.infer.runners.torch_runner import TorchRunner
from tunepp_deploy.infer.sliding_window import count_windows
from tunepp_deploy.model.network import TUNEPP, build_network
from tunepp_deploy.predictors.tunepp import TuneppPredictor

from .floor import window_flops
from .probes import TimedRunner, spread, synchronize
from .workload import EagerForward, make_scan, run_engine, run_naive, settings_of

#: Published whole-volume seconds of the seed on an A100 (other hardware than any run here).
PUBLISHED_A100 = {"single_s": 1.1, "mc25_s": 2.8, "source": "TUNE++ seed README (A100)"}
#: Issue 15's goals on an H100 / H200 (figures to report, not tests).
GOALS = {"mc25_s": 0.28, "single_s": 0.1, "mc25_peak_gb": 4.0}
#: Seconds a compiled path needs at least (inductor's build of the Synapse trunk and head is a guess:
#: no device has run it yet).
COMPILE_RESERVE_S = 120.0
MAP_NAMES = ("aleatoric", "epistemic", "total", "predictive_entropy", "mutual_information")
#: A tiny network for the device-vs-CPU parity (as the CPU tests use).
TINY = {"model.widths": [8, 16], "model.depths": [1, 1], "model.decoder_depths": [1],
        "model.dropout.sites": ["dec0"], "data.crop_size": [32, 32, 32]}


@dataclass(frozen=True)
class PathSpec:
    """One way of running the torch backend."""

    amp: bool = False
    tf32: bool = False
    graphs: bool = False
    compile: bool = False
    cuda_only: bool = False
    rate: str = "fp32"  # the matmul rate that bounds it
    #: Parity tolerance (max |diff| of the probabilities) against fp32 on the CPU, tiny network.
    tol: float = 1e-4


PATHS: dict[str, PathSpec] = {
    "fp32": PathSpec(),
    "tf32": PathSpec(tf32=True, cuda_only=True, rate="tf32", tol=5e-3),
    "bf16": PathSpec(amp=True, cuda_only=True, rate="bf16", tol=5e-2),
    "bf16_graphs": PathSpec(amp=True, graphs=True, cuda_only=True, rate="bf16", tol=5e-2),
    "bf16_compile": PathSpec(amp=True, compile=True, cuda_only=True, rate="bf16", tol=5e-2),
    "fp32_compile": PathSpec(compile=True, tol=1e-4),  # the CPU dry run's compile path
}


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 in cuBLAS and cuDNN on or off for the block (cuDNN's default is on: fp32 must turn it off)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def matmul_rate(device: torch.device, dtype: torch.dtype, allow_tf32: bool = False, n: int = 8192,
                repeats: int = 10) -> float:
    """GFLOP/s of an ``n x n`` product on random data (METHOD.md: median after warm-ups; events on CUDA)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    with tf32(allow_tf32):
        for i in range(3 + repeats):
            if device.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                torch.mm(a, b)
                e.record()
                e.synchronize()
                dt = s.elapsed_time(e) / 1e3
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                dt = time.perf_counter() - t0
            if i >= 3:
                times.append(dt)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def skip_reason(name: str, device: torch.device) -> str | None:
    """Why path ``name`` cannot run on ``device`` (None when it can)."""
    if name not in PATHS:
        return f"unknown path {name!r} (use {', '.join(PATHS)})"
    if PATHS[name].cuda_only and device.type != "cuda":
        return "needs a CUDA device"
    return None


def open_path(name: str, net: TUNEPP, meta: ModelMeta, device: torch.device,
              compile_backend: str = "inductor") -> TorchRunner:
    """The runner of path ``name`` (bf16 means bf16: TorchRunner would fall back to fp16 without it)."""
    p = PATHS[name]
    r = TorchRunner(net, meta, device, amp=p.amp, cuda_graphs=p.graphs, compile=p.compile,
                    compile_backend=compile_backend)
    if r.amp:
        r.amp_dtype = torch.bfloat16
    return r


def build_model(config: Path, overrides: dict[str, Any] | None, seed: int = 0) -> tuple[TUNEPP, ModelMeta]:
    """A freshly initialised network (seeded, weights spread a little so the outputs are not constant)."""
    cfg = load_config(config, overrides)
    torch.manual_seed(seed)
    net = build_network(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return net, meta_for(net, cfg)


@dataclass
class EngineRun:
    """One timed engine run."""

    total: float
    events: float | None
    stages: dict[str, float]
    info: dict[str, Any]
    trunk_windows: int
    head_rows: int
    probs: torch.Tensor | None = None
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


def engine_once(runner: TorchRunner, pre: np.ndarray, masks: SampleMasks, mc: MCSettings,
                keep: bool = False) -> EngineRun:
    """The TUNE++ predictor on the preprocessed volume ``pre`` (module docstring), timed and split."""
    dev = runner.device
    timed = TimedRunner(runner)
    predictor = TuneppPredictor(timed, settings_of(mc))
    predictor.masks = masks
    last = [0.0]

    def stitched(_done: int, _total: int) -> None:
        synchronize(dev)
        last[0] = time.perf_counter()

    synchronize(dev)
    ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if dev.type == "cuda" else None
    t0 = time.perf_counter()
    if ev:
        ev[0].record()
    pred = predictor.predict(pre, stitched)
    if ev:
        ev[1].record()
    synchronize(dev)
    t1 = time.perf_counter()
    network = timed.seconds()
    unc = t1 - (last[0] or t1)
    stages = {"network": network, "stitching": max(0.0, t1 - t0 - network - unc), "uncertainty": unc}
    run = EngineRun(t1 - t0, ev[0].elapsed_time(ev[1]) / 1e3 if ev else None, stages, dict(pred.info),
                    timed.trunk_windows, timed.head_rows)
    if keep:
        run.probs = pred.probs.float().cpu()
        run.maps = {k: pred.maps[k].float().cpu() for k in MAP_NAMES if k in pred.maps}
    return run


def measure(runner: TorchRunner, pre: np.ndarray, masks: SampleMasks, mc: MCSettings, warmup: int,
            repeats: int) -> tuple[dict[str, Any], EngineRun]:
    """``warmup`` untimed runs, ``repeats`` timed ones (peak device memory over the timed runs)."""
    dev = runner.device
    for _ in range(warmup):
        engine_once(runner, pre, masks, mc)
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    runs = [engine_once(runner, pre, masks, mc, keep=i == repeats - 1) for i in range(repeats)]
    last = runs[-1]
    out = {
        "latency_s": spread([r.total for r in runs]),
        "events_s": spread([r.events for r in runs])["median"] if last.events is not None else None,
        "stages_s": {k: statistics.median(r.stages[k] for r in runs) for k in last.stages},
        "peak_device_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "reserved_device_mb": torch.cuda.max_memory_reserved(dev) / 2**20 if dev.type == "cuda" else None,
        "trunk_windows": last.trunk_windows, "head_rows": last.head_rows,
        **{k: last.info[k] for k in ("windows", "runner_calls", "windows_per_call", "samples_per_call",
                                     "sample_chunk", "sample_chunks", "trunk")},
    }
    return out, last


def _diff(a: EngineRun | dict[str, Any], b: EngineRun | dict[str, Any]) -> dict[str, float]:
    pa, pb = (a.probs, a.maps) if isinstance(a, EngineRun) else (a["probs"], a["maps"])
    qa, qb = (b.probs, b.maps) if isinstance(b, EngineRun) else (b["probs"], b["maps"])
    out = {"max_abs_diff_probs": float((pa - qa).abs().max()), "mean_abs_diff_probs": float((pa - qa).abs().mean()),
           "argmax_agreement": float((pa.argmax(0) == qa.argmax(0)).float().mean())}
    out["max_abs_diff_maps"] = max(float((pb[k] - qb[k]).abs().max()) for k in pb if k in qb)
    return out


def planned_memory(runner: TorchRunner, grid: Sequence[int], mc: MCSettings, chunk: int) -> dict[str, float]:
    """The engine's own accounting of one run (the terms ``mc_predict`` plans with), GB, plus the weights."""
    from .memory import memory_model

    meta = runner.meta
    plan = plan_calls(meta, mc.samples, mc.max_batch, mc.memory_gb * CALL_SHARE, runner.max_rows)
    call = plan.windows_per_call * plan.samples_per_call * plan.row_bytes
    n_win = count_windows(tuple(grid), meta.window, mc.overlap)
    cache = min(runner.trunk_bytes(n_win), TRUNK_CACHE_SHARE * mc.memory_gb * 2**30) if chunk < mc.samples else 0
    terms = memory_model(grid, meta.window, meta.num_classes, chunk, call, cache,
                         window_output_bytes(meta, plan.windows_per_call))
    terms["weights_gb"] = sum(p.numel() * p.element_size() for p in runner.net.parameters()) / 2**30
    return terms


def tiny_parity(device: torch.device, paths: Sequence[str], config: Path, compile_backend: str = "inductor",
                samples: int = 3) -> dict[str, dict[str, Any]]:
    """MC maps of a tiny network on ``device`` per path against fp32 eager on the CPU (same masks and noise)."""
    net, meta = build_model(config, TINY)
    vol = torch.rand(meta.in_channels, 48, 48, 48, generator=torch.Generator().manual_seed(5))
    masks = sample_masks(meta.sites, meta.window, samples, seed=7)
    mc = MCSettings(samples=samples, seed=7, max_batch=2, noise_draws=2)

    def maps_of(runner: TorchRunner, use_tf32: bool = False) -> dict[str, Any]:
        with tf32(use_tf32):
            m = mc_predict(vol, runner, masks, mc).maps
        return {"probs": m.mean_probs.float().cpu(), "maps": {k: getattr(m, k).float().cpu() for k in MAP_NAMES}}

    ref = maps_of(TorchRunner(net, meta, torch.device("cpu")))
    out: dict[str, dict[str, Any]] = {}
    for name in paths:
        why = skip_reason(name, device)
        if why:
            out[name] = {"skipped": why}
            continue
        d = _diff(maps_of(open_path(name, net, meta, device, compile_backend), PATHS[name].tf32), ref)
        out[name] = {**d, "tol": PATHS[name].tol, "ok": d["max_abs_diff_probs"] <= PATHS[name].tol}
    return out


@dataclass(frozen=True)
class McSuiteSettings:
    """What the MC part runs (:func:`run_mc`)."""

    config: Path
    overrides: dict[str, Any] | None = None
    volume: tuple[int, int, int] = (240, 240, 160)
    samples: tuple[int, ...] = (25, 1)
    paths: tuple[str, ...] = ("fp32", "tf32", "bf16", "bf16_graphs", "bf16_compile")
    repeats: int = 3
    warmup: int = 1
    memory_gb: float = 64.0
    jetson_gb: float = 4.0
    matmul_n: int = 8192
    compile_backend: str = "inductor"
    naive: bool = True
    seed: int = 0
    dry_run: bool = False


def run_mc(s: McSuiteSettings, device: torch.device, time_left: Callable[[], float],
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """The MC part (module docstring); a section skipped for the deadline says so."""
    from tunepp_deploy.data.preprocess import preprocess_image

    net, meta = build_model(s.config, s.overrides, s.seed)
    with torch.device("meta"):
        flops = window_flops(build_network(meta.config), meta.window, meta.in_channels)
    rates = {"fp32": matmul_rate(device, torch.float32, False, s.matmul_n)}
    if device.type == "cuda":
        rates["tf32"] = matmul_rate(device, torch.float32, True, s.matmul_n)
        rates["bf16"] = matmul_rate(device, torch.bfloat16, False, s.matmul_n)
    log("matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    scan = make_scan(s.volume, meta.spacing, s.seed)
    pre = preprocess_image(scan.hu, scan.spacing, meta.spacing, meta.intensity)
    grid = tuple(int(n) for n in pre.shape[-3:])
    cfg = meta.config.infer
    s_ref = max(s.samples)
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    kept: dict[str, EngineRun] = {}
    walls: dict[int, float] = {}
    out: dict[str, Any] = {"grid": list(grid), "scan_shape": list(scan.hu.shape), "window": list(meta.window),
                           "windows": count_windows(grid, meta.window, cfg.overlap), "classes": meta.num_classes,
                           "sites": [x.name for x in meta.sites], "config": meta.config.name,
                           "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
                           "flops": {"trunk_gflops_per_window": flops.trunk_gflops,
                                     "head_gflops_per_window": flops.head_gflops},
                           "matmul_gflops_per_s": rates, "memory_gb": s.memory_gb}

    def masks_for(n: int) -> SampleMasks:
        return identity_masks(meta.sites, meta.window, 1) if n == 1 else sample_masks(meta.sites, meta.window, n,
                                                                                       cfg.seed)

    def mc_for(n: int, gb: float) -> MCSettings:
        return MCSettings(samples=n, seed=cfg.seed, overlap=cfg.overlap, max_batch=cfg.max_batch, memory_gb=gb)

    def entry(kind: str, path: str, n: int, m: dict[str, Any], runner: TorchRunner) -> dict[str, Any]:
        med = m["latency_s"]["median"]
        floor = flops.counted_gflops(m["trunk_windows"], m["head_rows"]) / rates[PATHS[path].rate]
        e = {"key": f"{kind}/{path}/S{n}", "kind": kind, "path": path, "samples": n, "runner": runner.describe(),
             **m, "windows_per_s": m["windows"] / med, "floor_s": floor,
             "measured_over_floor": med / floor if floor else None,
             "network_over_floor": m["stages_s"]["network"] / floor if floor else None}
        entries.append(e)
        log(f"  {e['key']}: {med:.3f} s (events {m['events_s'] or float('nan'):.3f} s), "
            f"peak {m['peak_device_mb'] or 0:.0f} MB, {m['runner_calls']} calls, trunk {m['trunk']}")
        return e

    def run_paths(names: Sequence[str]) -> None:
        for path in names:
            why = skip_reason(path, device)
            if why:
                skipped.append({"what": path, "reason": why})
                continue
            runner = open_path(path, net, meta, device, s.compile_backend)
            for n in s.samples:
                # start only what should end before the deadline: 1.5x the last path's wall time at this S
                # (warm-up included), and for a compiled path at least COMPILE_RESERVE_S for inductor's build
                need = 1.5 * walls.get(n, 0.0) + (COMPILE_RESERVE_S if PATHS[path].compile and not s.dry_run else 0.0)
                if time_left() <= need:
                    skipped.append({"what": f"{path} S={n}", "reason": f"suite deadline ({time_left():.0f} s left, "
                                                                       f"~{need:.0f} s needed)"})
                    continue
                t0 = time.perf_counter()
                with tf32(PATHS[path].tf32):
                    m, last = measure(runner, pre, masks_for(n), mc_for(n, s.memory_gb), s.warmup, s.repeats)
                e = entry("mc", path, n, m, runner)
                e["wall_s_with_warmup"] = walls[n] = time.perf_counter() - t0
                if n == s_ref:
                    kept[path] = last
            runner.close()

    # compiled paths last: their build may eat the budget that the 4 GB run and the baselines need
    run_paths([p for p in s.paths if not PATHS.get(p, PATHS['fp32']).compile])

    best = next((p for p in ("bf16_graphs", "bf16", "fp32") if p in s.paths and skip_reason(p, device) is None),
                None)
    if best and time_left() > 0:  # the Jetson-shaped budget: MC-S_ref within jetson_gb
        runner = open_path(best, net, meta, device, s.compile_backend)
        mcj = mc_for(s_ref, s.jetson_gb)
        m, last = measure(runner, pre, masks_for(s_ref), mcj, 1, 1)
        e = entry("jetson", best, s_ref, m, runner)
        planned = planned_memory(runner, grid, mcj, int(m["sample_chunk"]))
        e["planned_gb"] = planned
        e["measured_peak_gb"] = m["peak_device_mb"] / 1024 if m["peak_device_mb"] is not None else None
        if best in kept:
            e["parity_vs_unbounded"] = _diff(last, kept[best])
        runner.close()
    elif best:
        skipped.append({"what": "jetson budget", "reason": "suite deadline"})

    if best and time_left() > 0:  # end to end once: preprocess + engine + resample + report (CPU stages)
        runner = open_path(best, net, meta, device, s.compile_backend)
        e2e = []
        for n in s.samples:
            r = run_engine(runner, scan, masks_for(n), mc_for(n, s.memory_gb))
            e2e.append({"path": best, "samples": n, "total_s": r.total, "stages_s": r.stages})
        out["end_to_end"] = e2e
        runner.close()

    if s.naive and meta.sites and time_left() > 0:
        n = s_ref
        with tf32(False):
            r = run_naive(EagerForward(net, meta, device), scan, masks_for(n), mc_for(n, s.memory_gb))
        engine_part = r.total - sum(r.stages[k] for k in ("preprocess", "resample_to_input", "report"))
        out["naive"] = {"samples": n, "total_s": r.total, "engine_equivalent_s": engine_part, "stages_s": r.stages,
                        "runner": "torch eager model.forward fp32, one sample per pass (the seed's loop)"}
        log(f"  naive S={n}: {engine_part:.3f} s without the CPU stages ({r.total:.3f} s end to end)")
    elif s.naive:
        skipped.append({"what": "naive loop", "reason": "suite deadline" if meta.sites else "no dropout sites"})

    run_paths([p for p in s.paths if PATHS.get(p, PATHS["fp32"]).compile])
    ref_path = next((p for p in ("fp32", *s.paths) if p in kept), None)
    out["parity_vs"] = ref_path
    out["parity"] = {p: _diff(r, kept[ref_path]) for p, r in kept.items() if ref_path and p != ref_path}

    out["entries"] = entries
    out["skipped"] = skipped
    out["published"] = PUBLISHED_A100
    out["goals"] = GOALS
    out["vs_published"] = [
        {"path": e["path"], "samples": e["samples"], "median_s": e["latency_s"]["median"],
         "published_s": PUBLISHED_A100["mc25_s" if e["samples"] == 25 else "single_s"],
         "published_over_measured": PUBLISHED_A100["mc25_s" if e["samples"] == 25 else "single_s"]
         / e["latency_s"]["median"],
         "goal_s": GOALS["mc25_s" if e["samples"] == 25 else "single_s"],
         "goal_met": e["latency_s"]["median"] < GOALS["mc25_s" if e["samples"] == 25 else "single_s"]}
        for e in entries if e["kind"] == "mc" and e["samples"] in (1, 25)]
    return out


__all__ = ["GOALS", "PATHS", "PUBLISHED_A100", "McSuiteSettings", "matmul_rate", "planned_memory", "run_mc",
           "skip_reason", "tiny_parity"]
