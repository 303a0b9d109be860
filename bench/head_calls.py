"""Head call size: how many rows (window x sample) per head call run MC-S of one window fastest.

``python -m tunepp_deploy.bench.head_calls --config configs/synapse.yaml [--threads 2] [--out DIR]``

Why: a runner that splits trunk and head (torch; ONNX Runtime's trunk / head graph pair) runs the
trunk once per window batch whatever the head's call size, so the call size only trades per-call
overhead against the size of the head's activations — and on a large window (synapse 96^3: one head
row's full-resolution maps are ~30 MB each) a 25-row call is slower than five 5-row calls (issue #14).
The fastest size depends on the window, the network, the runtime and the CPU, so it is measured:

* :func:`time_head_calls` — for one runner and window: the trunk once, then the head over all S rows
  in calls of each candidate size, after a warm-up of every size, sizes alternated round-robin over
  the repeats (no first-configuration advantage); medians;
* :func:`choose_rows_per_call` — the fastest candidate (what ``--rows-per-call auto`` uses);
* :func:`run` / ``main`` — the report: S full passes (trunk + head per sample, the naive loop) against
  trunk once + head in each size, for torch and ONNX Runtime (one graph and the trunk / head pair), in
  one process, alternated, written to ``head_calls.json`` / ``head_calls.md`` (temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tunepp_deploy.bench.machine import read_cpu_facts

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.allocator import tune_malloc
from tunepp_deploy.infer.masks import SampleMasks, sample_masks
from tunepp_deploy.infer.mc import CALL_SHARE, check_rows_per_call, plan_calls
from tunepp_deploy.infer.runners.base import Runner, default_rows_per_call
from tunepp_deploy.metrics.intervals import format_mean_ci, t_half_width

#: Row counts tried per head call (25 = all of MC-25 in one call; 5 and 13 split it evenly-ish).
CANDIDATES = (1, 2, 4, 5, 8, 13, 25)


def head_call_plan(samples: int, rows: int) -> list[range]:
    """The sample indices of each head call for ``samples`` rows in calls of at most ``rows``."""
    rows = check_rows_per_call(rows) or 1
    return [range(i, min(samples, i + rows)) for i in range(0, samples, rows)]


def _window_and_masks(runner: Runner, samples: int, seed: int) -> tuple[torch.Tensor, SampleMasks]:
    meta = runner.meta
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, meta.in_channels, *meta.window, generator=g).to(runner.device)
    return x, sample_masks(meta.sites, meta.window, samples, seed=seed)


def _mc_window(runner: Runner, x: torch.Tensor, masks: SampleMasks, rows: int) -> Callable[[], float]:
    """One window's MC-S in calls of ``rows`` rows; returns the seconds it took. A split runner runs
    the trunk once and only the head per call; a one-graph runner runs its whole graph per call."""
    plan = head_call_plan(masks.samples, rows)
    calls = [masks.rows(list(sub), 1, runner.device) for sub in plan]

    def once() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            if runner.splits:
                feats = runner.trunk(x)
                for m in calls:
                    runner.head(feats, m)
            else:
                for m in calls:
                    runner(x, m)
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
        return time.perf_counter() - t

    return once


def _naive(runner: Runner, x: torch.Tensor, masks: SampleMasks, passes: int) -> Callable[[], float]:
    """``passes`` full passes of one row each (trunk + head per sample: the naive MC loop)."""
    rows = [masks.rows([s % masks.samples], 1, runner.device) for s in range(passes)]

    def once() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for m in rows:
                if runner.splits:
                    runner.head(runner.trunk(x), m)
                else:
                    runner(x, m)
        return time.perf_counter() - t

    return once


def alternate(fns: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Every ``fns[name]()`` (returning its own seconds) ``warmup`` times, then ``repeats`` rounds in
    turn — each round in a rotated order, so no configuration always runs first or after the same one."""
    if repeats < 1:
        raise TuneppError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(fns[n]())
    return times


def time_head_calls(runner: Runner, samples: int = 25, sizes: Sequence[int] = CANDIDATES, repeats: int = 3,
                    warmup: int = 1, seed: int = 0) -> dict[int, float]:
    """Median seconds of one window's MC-``samples`` per head-call size (module docstring).

    Sizes above ``samples`` are the same plan as ``samples`` and are dropped; a size that is not an
    integer >= 1 is a one-line error.
    """
    if samples < 1:
        raise TuneppError(f"samples must be >= 1, got {samples}")
    chosen = sorted({min(int(check_rows_per_call(s) or 1), samples) for s in sizes})
    if not chosen:
        raise TuneppError("no head call sizes to try")
    tune_malloc()  # the engine's start-up: without it large calls page-fault, which the engine's do not
    x, masks = _window_and_masks(runner, samples, seed)
    times = alternate({str(s): _mc_window(runner, x, masks, s) for s in chosen}, repeats, warmup)
    return {s: statistics.median(times[str(s)]) for s in chosen}


def choose_rows_per_call(runner: Runner, samples: int = 25, sizes: Sequence[int] = CANDIDATES,
                         repeats: int = 3, warmup: int = 1, seed: int = 0) -> int:
    """The candidate size with the smallest median (ties: the larger size, fewer calls)."""
    med = time_head_calls(runner, samples, sizes, repeats, warmup, seed)
    return min(med, key=lambda s: (med[s], -s))


def _runners(config: Path, threads: int) -> tuple[dict[str, Runner], dict[str, object]]:
    """Untrained network of ``config`` (speed does not depend on training) on torch, ORT one graph and
    ORT trunk / head pair, all on the CPU with ``threads`` threads."""
    from tunepp_deploy.export.metadata import meta_for
    from tunepp_deploy.export.onnx_export import build_onnx

    from tunepp_deploy.config import load_config
    from tunepp_deploy.infer.runners.ort_runner import OrtRunner
    from tunepp_deploy.infer.runners.torch_runner import TorchRunner
    from tunepp_deploy.model import build_network

    cfg = load_config(config)
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    meta = meta_for(net, cfg)
    cpu = torch.device("cpu")
    t = time.perf_counter()
    onnx_bytes = build_onnx(net, meta).SerializeToString()
    info: dict[str, object] = {"export_seconds": round(time.perf_counter() - t, 1)}
    runners: dict[str, Runner] = {"torch": TorchRunner(net, meta, cpu),
                                  "ort": OrtRunner(onnx_bytes, meta, cpu, threads),
                                  "ort_pair": OrtRunner(onnx_bytes, meta, cpu, threads, split=True)}
    from tunepp_deploy.infer.runners.openvino_runner import openvino_version

    if openvino_version() is not None:  # the CPU default for ONNX files when installed (one graph, fp32 pinned)
        from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner

        runners["openvino"] = OpenVinoRunner(onnx_bytes, meta, cpu, threads)
        runners["openvino_pair"] = OpenVinoRunner(onnx_bytes, meta, cpu, threads, split=True)
    return runners, info


def run(config: Path, samples: int = 25, sizes: Sequence[int] = (1, 5, 25), repeats: int = 3,
        threads: int = 2, naive_passes: int | None = None,
        backends: Sequence[str] = ("torch", "ort", "openvino")) -> dict[str, object]:
    """The report's measurements for one config's window (module docstring).

    ``naive_passes`` (default ``samples``): the naive loop's passes actually run per repeat; fewer are
    scaled to ``samples`` (linear: every pass is the same work) and the report says so.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    load0 = list(os.getloadavg())
    malloc = tune_malloc()  # as mc_predict at start-up: the calls timed under the engine's allocator
    try:
        runners, info = _runners(config, threads)
        for name in list(runners):  # the runtimes asked for (each with its pair); torch always (the window, masks)
            if name != "torch" and name.removesuffix("_pair") not in backends:
                runners.pop(name).close()
        some = runners["torch"]
        x, masks = _window_and_masks(some, samples, 0)
        passes = samples if naive_passes is None else max(1, min(samples, int(naive_passes)))
        fns: dict[str, Callable[[], float]] = {}
        graphs = [n for n in ("ort", "openvino") if n in runners]
        for name in ("torch", *graphs):
            fns[f"{name}/naive"] = _naive(runners[name], x, masks, passes)
        for name in graphs:  # one-graph runners: the rows per call `tunepp infer` plans by default (its memory
            # budget; fewer than S rerun the trunk per call) -- all S rows of a 96^3 window in one call need ~23 GB
            r = runners[name]
            n = plan_calls(r.meta, samples, 1, r.meta.config.infer.memory_gb * CALL_SHARE, r.max_rows).samples_per_call
            if n > 1:  # one row per call is the naive loop itself (S full passes), already timed
                fns[f"{name}/one_graph_rows{n}"] = _mc_window(r, x, masks, n)
            else:
                info[f"{name}_one_graph"] = "1 row per call under the memory budget: the naive loop itself"
        for name in [n for n in ("torch", "ort_pair", "openvino_pair") if n in runners]:
            for s in sizes:
                fns[f"{name}/rows{s}"] = _mc_window(runners[name], x, masks, s)
        times = alternate(fns, repeats)
        scale = samples / passes
        for k in [f"{n}/naive" for n in ("torch", *graphs)]:
            times[k] = [t * scale for t in times[k]]
        rows = {k: {"median_s": statistics.median(v), "mean_s": statistics.fmean(v), "ci95_s": t_half_width(v),
                    "runs_s": v} for k, v in times.items()}
        for k, r in rows.items():
            base = rows[f"{k.split('/')[0].removesuffix('_pair')}/naive"]["median_s"]  # a pair vs its own runtime
            r["speedup_vs_naive"] = base / r["median_s"]
        meta = some.meta
        for r in runners.values():
            r.close()
        return {
            "config": str(config), "window": list(meta.window), "window_voxels": math.prod(meta.window),
            "samples": samples, "sizes": list(sizes), "repeats": repeats, "threads": threads,
            "naive_passes_run": passes, "naive_scaled_to": samples,
            "default_rows_per_call_split": default_rows_per_call(meta.window, True),
            "cpu": read_cpu_facts().summary(), "python": platform.python_version(), "torch": torch.__version__,
            "malloc": malloc, "loadavg_start": load0, "loadavg_end": list(os.getloadavg()), "results": rows, **info,
        }
    finally:
        torch.set_num_threads(old)



def _load(res: dict, key: str) -> str:
    v = res.get(key)
    return "/".join(f"{x:.2f}" for x in v) if v else "not recorded"


def markdown(results: Sequence[dict]) -> str:
    """The report table (one section per window)."""
    out = ["# Head call size (issue #14 item 6)", ""]
    for res in results:
        win = "x".join(str(n) for n in res["window"])
        out += [f"## {Path(str(res['config'])).stem}, one {win} window, MC-{res['samples']}, "
                f"{res['threads']} threads",
                "", f"CPU: {res['cpu']}; torch {res['torch']}; median of {res['repeats']} alternated runs after "
                f"one warm-up each; untrained network; load average (1/5/15 min) {_load(res, 'loadavg_start')} at "
                f"start, {_load(res, 'loadavg_end')} at the end. Naive = "
                f"{res['naive_passes_run']} full passes run, scaled to {res['naive_scaled_to']}. "
                f"Default rows per call (split runners) for this window: {res['default_rows_per_call_split']}. "
                f"Allocator: {res.get('malloc', 'not recorded')}.",
                "", "| configuration | median s | mean ± 95% CI s | x vs naive (same runtime) |", "|---|---|---|---|"]
        for k, r in res["results"].items():
            out.append(f"| {k} | {r['median_s']:.3f} | {format_mean_ci(r['mean_s'], r['ci95_s'], len(r['runs_s']))} | "
                       f"{r['speedup_vs_naive']:.2f}x |")
        out += [f"- {k.removesuffix('_one_graph')} one graph: {v}" for k, v in res.items() if k.endswith("_one_graph")]
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, action="append", required=True)
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--sizes", type=str, default="1,5,25")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--naive-passes", type=int, default=None)
    ap.add_argument("--backends", type=str, default="torch,ort,openvino",
                    help="runtimes besides torch (each with its trunk/head pair): ort, openvino")
    ap.add_argument("--out", type=Path, default=Path("bench/results/head_calls"))
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    results = []
    for cfg in a.config:
        results.append(run(cfg, a.samples, sizes, a.repeats, a.threads, a.naive_passes,
                           [b for b in a.backends.split(",") if b]))
        for suffix, text in ((".json", json.dumps(results, indent=2)), (".md", markdown(results))):
            write_atomic(a.out.with_suffix(suffix), lambda t, text=text: t.write_text(text))  # after every config
        print(markdown(results[-1:]), flush=True)


if __name__ == "__main__":
    main()
