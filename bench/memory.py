"""Memory of the exact per-sample blend: streamed sample chunks against all S samples in one chunk.

``tunepp bench memory`` (or ``python -m tunepp_deploy.bench.memory``). The exact blend stitches each
MC sample's predictive over the whole scan; holding all ``S`` stitched samples (``S x K x V`` float32,
plus their normalised copies) is what the per-sample design costs, 16.6 GB for a 240 x 240 x 160
model grid, K = 9, S = 25. The MC engine (:func:`tunepp_deploy.infer.mc.mc_predict`) instead streams
the samples in chunks sized to ``memory_gb`` (:func:`tunepp_deploy.infer.sampling.plan_chunk`) and
folds each chunk into ``K + 2`` float64 statistics. This benchmark measures both on the same scan:

* **(a) streamed**: ``mc_predict`` under ``--memory-gb`` (default 4, as ``configs/synapse.yaml``);
* **(b) per-sample**: the same engine, the same call plan, with a budget just large enough that
  ``plan_chunk`` returns S — all samples in one chunk, i.e. the per-sample design's footprint.

**Workload.** The synthetic CT scan of :func:`tunepp_deploy.bench.workload.make_scan`, preprocessed
to the ``--volume`` model grid (default 240 x 240 x 160, the Synapse size), the Synapse config's
classes (K = 9), spacing, intensity window, 96^3 windows, overlap and dropout sites, but a *tiny*
randomly initialised TUNE++ network (``--widths 4,8,16,32``, ``full_res_channels`` 4, one block per
stage, 8 projected tokens) so that it runs on a CPU; the maps' memory does not depend on the widths.

**Measurement.** Each run is a fresh child process (``--child``) that builds the network, makes and
preprocesses the scan, then runs ``mc_predict`` once. Reported per run: the child's lifetime peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, read by the child at its end — the parent's
``RUSAGE_CHILDREN`` is a maximum over *all* children, so it cannot tell two runs apart — or psutil's
peak if that read a few KiB more), the RSS just
before ``mc_predict`` and the peak RSS during it (psutil polled every 5 ms: a lower bound), the
engine's own memory model (stats + chunk + runner calls + trunk cache, the terms of ``plan_chunk``),
the sample chunk, how the trunk ran (``once`` / ``cached`` / ``recomputed``), runner calls and seconds.
The parent compares the two runs' maps (max |diff| over the probabilities and every map: both are the
exact blend, so it must be round-off, ~1e-6) and writes ``memory[_TAG].json`` and ``.md`` atomically.

**Runner calls.** The engine sizes a call to a share of the budget (``infer/mc.py: CALL_SHARE``) and
the runner's row cap; (b)'s larger budget would give it larger calls. So with ``--max-rows N`` (default
4) both runs get (a)'s call size — (a)'s plan under a cap of N rows — and differ only in the chunking.
``--max-rows 0`` leaves the engine's own plan in both runs (recorded; ``same_call_plan`` says whether
they matched). Each run records the plan the engine actually made.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

#: The maps compared between the two runs (``mean_probs`` is [K, ...], the others [...]).
MAP_NAMES = ("mean_probs", "epistemic", "aleatoric", "total", "predictive_entropy", "mutual_information")
DEFAULT_OUT = Path("bench/results")
RUNS = ("streamed", "per_sample")
#: Model-config overrides of the tiny network (module docstring); ``model.widths`` comes from the settings.
TINY_MODEL = {"model.depths": [1, 1, 1, 1], "model.decoder_depths": [1, 1, 1], "model.proj_tokens": 8}


@dataclass(frozen=True)
class MemorySettings:
    """``tunepp bench memory``'s flags (1:1)."""

    out: Path = DEFAULT_OUT
    tag: str = ""
    config: Path = Path("configs/synapse.yaml")
    volume: tuple[int, int, int] = (240, 240, 160)
    samples: int = 25
    memory_gb: float = 4.0
    max_rows: int = 4  # 0: the runner's own cap
    widths: tuple[int, ...] = (4, 8, 16, 32)
    full_res_channels: int = 4
    threads: int = 2
    seed: int = 0
    noise_draws: int | None = None  # None: the engine's default
    timeout_s: float | None = None  # per child run
    runs: tuple[str, ...] = RUNS  # which of the two runs (both: the comparison)
    maps_dir: Path | None = None  # keep each run's maps and record here (<label>.npz / .json)
    reuse: Path | None = None  # a maps_dir of an earlier run: take the runs not in ``runs`` from it

    @property
    def name(self) -> str:
        return "memory" + (f"_{self.tag}" if self.tag else "")


@dataclass
class RunSpec:
    """What one child run does."""

    label: str
    memory_gb: float
    settings: dict[str, Any]
    maps_path: str
    result_path: str
    rows_cap: int = 0  # rows per runner call (0: the runner's own cap)
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- shared pieces
def _settings_from(d: dict[str, Any]) -> MemorySettings:
    d = dict(d)
    d["out"], d["config"] = Path(d["out"]), Path(d["config"])
    for k in ("maps_dir", "reuse"):
        d[k] = None if d.get(k) is None else Path(d[k])
    d["volume"], d["widths"], d["runs"] = tuple(d["volume"]), tuple(d["widths"]), tuple(d.get("runs", RUNS))
    return MemorySettings(**d)


def _jsonable(s: MemorySettings) -> dict[str, Any]:
    d = asdict(s)
    d["out"], d["config"] = str(s.out), str(s.config)
    d["volume"], d["widths"], d["runs"] = list(s.volume), list(s.widths), list(s.runs)
    d["maps_dir"] = None if s.maps_dir is None else str(s.maps_dir)
    d["reuse"] = None if s.reuse is None else str(s.reuse)
    return d


def build_model(s: MemorySettings):
    """The tiny TUNE++ network on the config (seeded) and its metadata."""
    import torch
    from tunepp_deploy.export.metadata import meta_for

    from tunepp_deploy.config import load_config
    from tunepp_deploy.model import build_network

    overrides = {**TINY_MODEL, "model.widths": list(s.widths), "model.full_res_channels": s.full_res_channels}
    if len(s.widths) != 4:
        overrides["model.depths"] = [1] * len(s.widths)
        overrides["model.decoder_depths"] = [1] * (len(s.widths) - 1)
    cfg = load_config(s.config, overrides)
    torch.manual_seed(s.seed)
    net = build_network(cfg).eval()
    return net, cfg, meta_for(net, cfg)


def call_share() -> float:
    """The share of the budget the engine gives one runner call in the exact blend (1 where it has none)."""
    from tunepp_deploy.infer import mc

    return float(getattr(mc, "CALL_SHARE", 1.0))


def memory_model(shape: Sequence[int], window: Sequence[int], classes: int, chunk: int, call_bytes: int,
                 cache_bytes: float = 0.0, per_sample_bytes: int = 0) -> dict[str, float]:
    """The engine's own accounting (the terms of :func:`~tunepp_deploy.infer.sampling.plan_chunk`), GB."""
    from tunepp_deploy.infer.sampling import STATS_EXTRA_MAPS, slab_bytes

    v = math.prod(max(int(a), int(w)) for a, w in zip(shape, window, strict=True))
    gb = 2.0**30
    terms = {
        "stats_gb": (classes + STATS_EXTRA_MAPS) * 8 * v / gb,
        "stats_slabs_gb": slab_bytes(classes, v) / gb,
        "chunk_gb": chunk * 2 * 4 * classes * v / gb,
        "chunk_window_outputs_gb": chunk * per_sample_bytes / gb,
        "runner_calls_gb": call_bytes / gb,
        "trunk_cache_gb": cache_bytes / gb,
        "volume_norm_importance_gb": 3 * 4 * v / gb,
    }
    terms["total_gb"] = sum(terms.values())
    return terms


def all_samples_budget(shape: Sequence[int], window: Sequence[int], classes: int, samples: int,
                       call_bytes: int, per_sample_bytes: int = 0) -> float:
    """The smallest budget (GB, rounded up to 0.01) at which ``plan_chunk`` returns all ``samples``."""
    from tunepp_deploy.infer.sampling import plan_chunk

    need = memory_model(shape, window, classes, samples, call_bytes, per_sample_bytes=per_sample_bytes)["total_gb"]
    gb = math.ceil(need * 100 + 1e-9) / 100
    while plan_chunk(shape, window, classes, samples, gb, call_bytes, per_sample_bytes) < samples:  # round-off
        gb += 0.01
    return round(gb, 2)


def engine_version() -> dict[str, Any]:
    """The commit the engine was run at, and the engine files that differ from it (the figures belong to both)."""
    root = Path(__file__).resolve().parents[1]
    out: dict[str, Any] = {"commit": None, "modified": None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                       check=True, timeout=30).stdout.strip()
        st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "tunepp_deploy/infer",
                             "tunepp_deploy/predictors", "bench"], capture_output=True, text=True, check=True,
                            timeout=30).stdout
        out["modified"] = sorted(line[3:] for line in st.splitlines() if line.strip())
    return out


def _rss_kb_to_mb(kb: int) -> float:
    return kb / 1024.0  # Linux: ru_maxrss is in KiB


# ------------------------------------------------------------------------------------ child process
def run_child(spec: RunSpec) -> dict[str, Any]:
    """One ``mc_predict`` run in this (fresh) process; writes its maps and returns its record."""
    import torch

    from tunepp_deploy.data.preprocess import preprocess_image
    from tunepp_deploy.infer.masks import sample_masks
    from tunepp_deploy.infer.mc import MCSettings, mc_predict, plan_calls, window_output_bytes
    from tunepp_deploy.infer.runners.torch_runner import TorchRunner

    from .probes import RowCapRunner, RssSampler
    from .workload import make_scan

    s = _settings_from(spec.settings)
    torch.set_num_threads(s.threads)
    net, cfg, meta = build_model(s)
    scan = make_scan(s.volume, meta.spacing, s.seed)
    pre = preprocess_image(scan.hu, scan.spacing, meta.spacing, meta.intensity)
    del scan
    x = torch.from_numpy(pre)[None]
    base = TorchRunner(net, meta, torch.device("cpu"))
    runner = RowCapRunner(base, spec.rows_cap) if spec.rows_cap else base
    kw = {} if s.noise_draws is None else {"noise_draws": s.noise_draws}
    mc = MCSettings(samples=s.samples, seed=cfg.infer.seed, overlap=cfg.infer.overlap, max_batch=cfg.infer.max_batch,
                    memory_gb=spec.memory_gb, **kw)
    masks = sample_masks(meta.sites, meta.window, s.samples, mc.seed)
    rec: dict[str, Any] = {
        "label": spec.label, "memory_gb": spec.memory_gb, "model_grid": list(pre.shape),
        "runner": runner.describe(), "noise_draws": mc.noise_draws, "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()), "engine": engine_version(), **spec.extra,
    }
    t0 = time.perf_counter()
    with RssSampler() as rss:
        try:
            res = mc_predict(x, runner, masks, mc)
        except Exception as e:
            rec.update(error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)
            res = None
    rec.update(
        rss_before_mc_mb=rss.start_bytes / 2**20, mc_peak_rss_mb=rss.peak_bytes / 2**20,
        mc_rss_increase_mb=(rss.peak_bytes - rss.start_bytes) / 2**20,
        ru_maxrss_mb=_rss_kb_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        loadavg_end=list(os.getloadavg()),
    )
    # the kernel's high-water mark and psutil's samples are read differently (a few KiB apart): the larger
    rec["peak_rss_mb"] = max(rec["ru_maxrss_mb"], rec["mc_peak_rss_mb"])
    # the call plan the engine made (what it would have made, when it refused the run)
    plan = res.plan if res is not None else plan_calls(meta, s.samples, mc.max_batch, mc.memory_gb * call_share(),
                                                       runner.max_rows)
    call_bytes = plan.windows_per_call * plan.samples_per_call * plan.row_bytes
    rec.update(windows_per_call=plan.windows_per_call, samples_per_call=plan.samples_per_call,
               row_bytes=plan.row_bytes, call_bytes=call_bytes)
    if res is not None:
        m = res.maps
        maps = {n: getattr(m, n).float().numpy() for n in MAP_NAMES}
        np.savez(spec.maps_path, **maps)
        rec.update(
            seconds=res.seconds, windows=res.windows, runner_calls=res.calls, blend=res.blend,
            sample_chunk=res.sample_chunk, sample_chunks=int(res.extra["sample_chunks"]), trunk=res.trunk,
            trunk_cache_bytes=int(res.extra["trunk_cache_bytes"]),
            engine_model=memory_model(pre.shape, meta.window, meta.num_classes, res.sample_chunk, call_bytes,
                                      res.extra["trunk_cache_bytes"],
                                      window_output_bytes(meta, plan.windows_per_call)),
        )
    Path(spec.result_path).write_text(json.dumps(rec, indent=2))
    return rec


def _child_main(spec_path: str) -> None:
    spec = RunSpec(**json.loads(Path(spec_path).read_text()))
    run_child(spec)


# ----------------------------------------------------------------------------------- parent process
def _spawn(spec: RunSpec, tmp: Path, timeout_s: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; the parent polls the child's RSS too (every 0.2 s), so a run
    stopped by ``timeout_s`` still says how much memory it had reached (``polled_peak_rss_mb``)."""
    import psutil

    spec_path = tmp / f"{spec.label}.spec.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    cmd = [sys.executable, "-m", "tunepp_deploy.bench.memory", "--child", str(spec_path)]
    log(f"  run {spec.label}: memory_gb {spec.memory_gb:g} ...")
    t0 = time.perf_counter()
    err_path = tmp / f"{spec.label}.stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        polled, timed_out = 0, False
        with contextlib.suppress(psutil.Error):
            child = psutil.Process(proc.pid)
            while proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    polled = max(polled, child.memory_info().rss)
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    proc.kill()
                    timed_out = True
                    break
                time.sleep(0.2)
        proc.wait()
    wall = time.perf_counter() - t0
    base = {"label": spec.label, "memory_gb": spec.memory_gb, "wall_s": wall, "polled_peak_rss_mb": polled / 2**20}
    if timed_out:
        log(f"    stopped after {wall:.0f} s; polled peak RSS {polled / 2**20:.0f} MB")
        return {**base, "error": f"stopped after {timeout_s:g} s (--timeout)"}
    if proc.returncode != 0 or not Path(spec.result_path).is_file():
        tail = err_path.read_text().strip().splitlines()[-3:]
        return {**base, "error": f"child exited with {proc.returncode}: {' | '.join(tail)}"}
    rec = {**json.loads(Path(spec.result_path).read_text()), **base}
    log(f"    peak RSS {rec['peak_rss_mb']:.0f} MB, chunk {rec.get('sample_chunk')}, trunk {rec.get('trunk')}, "
        f"{rec.get('seconds', float('nan')):.1f} s" + (f", {rec['error']}" if "error" in rec else ""))
    return rec


def _reused(s: MemorySettings, label: str, grid: list[int], plan: Any) -> dict[str, Any] | None:
    """Run ``label`` of an earlier ``--maps-dir`` (``s.reuse``) when it ran the same workload, else None."""
    if s.reuse is None or not (s.reuse / f"{label}.json").is_file() or not (s.reuse / f"{label}.npz").is_file():
        return None
    rec = json.loads((s.reuse / f"{label}.json").read_text())
    same = (rec.get("model_grid") == grid and rec.get("windows_per_call") == plan.windows_per_call
            and rec.get("samples_per_call") == plan.samples_per_call and rec.get("row_bytes") == plan.row_bytes)
    if not same or "error" in rec:
        return None
    return {**rec, "reused_from": str(s.reuse)}


def compare_maps(a: Path, b: Path) -> dict[str, float]:
    """Max |a - b| per map, and over all of them (``max``)."""
    with np.load(a) as fa, np.load(b) as fb:
        out = {n: float(np.abs(fa[n].astype(np.float64) - fb[n].astype(np.float64)).max()) for n in MAP_NAMES}
    out["max"] = max(out.values())
    return out


def run_memory_bench(s: MemorySettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both runs (module docstring); writes ``<out>/<name>.json`` and ``.md``; returns the result."""
    import torch

    from tunepp_deploy.data.preprocess import resampled_shape
    from tunepp_deploy.infer.mc import plan_calls, window_output_bytes
    from tunepp_deploy.infer.runners.base import CPU_ROWS_PER_CALL
    from tunepp_deploy.infer.sampling import plan_chunk
    from tunepp_deploy.infer.sliding_window import count_windows

    from .mc_bench import machine_info
    from .workload import RAW_SPACING_FACTOR

    if s.samples < 1 or s.memory_gb <= 0 or s.max_rows < 0 or (not s.runs and s.reuse is None) \
            or any(r not in RUNS for r in s.runs):
        from tunepp_deploy.errors import TuneppError

        raise TuneppError(f"--samples must be >= 1, --memory-gb > 0, --max-rows >= 0 and --runs in {', '.join(RUNS)}")
    net, cfg, meta = build_model(s)
    n_params = sum(p.numel() for p in net.parameters())
    del net
    raw_spacing = [m * f for m, f in zip(meta.spacing, RAW_SPACING_FACTOR, strict=True)]
    raw_shape = [max(1, round(v / f)) for v, f in zip(s.volume, RAW_SPACING_FACTOR, strict=True)]
    grid = resampled_shape(tuple(raw_shape), tuple(raw_spacing), meta.spacing)
    rows = min(CPU_ROWS_PER_CALL, s.max_rows) if s.max_rows else CPU_ROWS_PER_CALL
    # (a)'s call plan as the engine makes it; with --max-rows both runs are capped to (a)'s call size, so they
    # differ only in the chunking (the engine would give (b)'s larger budget larger calls)
    plan = plan_calls(meta, s.samples, cfg.infer.max_batch, s.memory_gb * call_share(), rows)
    cap = plan.windows_per_call * plan.samples_per_call if s.max_rows else 0
    call_bytes = plan.windows_per_call * plan.samples_per_call * plan.row_bytes
    k = meta.num_classes
    # (b) never below (a)'s budget: if (a) already holds all S, the two runs are the same design (noted)
    per_sample = window_output_bytes(meta, plan.windows_per_call)
    budget_b = max(s.memory_gb, all_samples_budget(grid, meta.window, k, s.samples, call_bytes, per_sample))
    try:
        planned_a = plan_chunk(grid, meta.window, k, s.samples, s.memory_gb, call_bytes, per_sample)
    except Exception as e:
        planned_a = f"{type(e).__name__}: {e}"
    windows = count_windows(grid, meta.window, cfg.infer.overlap)
    log(f"memory bench: grid {grid}, {windows} windows of {meta.window}, K = {k}, S = {s.samples}, "
        f"{n_params} parameters; (a) {s.memory_gb:g} GB, (b) {budget_b:g} GB")
    machine = machine_info(torch.device("cpu"), s.threads)
    engine = engine_version()
    s.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tunepp_memory_") as tmpdir:
        store = s.maps_dir or Path(tmpdir)
        store.mkdir(parents=True, exist_ok=True)
        maps: dict[str, Path] = {}
        for label, gb in (("streamed", s.memory_gb), ("per_sample", budget_b)):
            if label not in s.runs:
                runs[label] = _reused(s, label, list(grid), plan) or {"label": label, "memory_gb": gb,
                                                                       "error": "not run (--runs)"}
                if "reused_from" in runs[label]:
                    maps[label] = s.reuse / f"{label}.npz"  # type: ignore[operator]
                continue
            spec = RunSpec(label, gb, _jsonable(s), str(store / f"{label}.npz"), str(store / f"{label}.json"), cap)
            runs[label] = _spawn(spec, Path(tmpdir), s.timeout_s, log)
            maps[label] = store / f"{label}.npz"
        a, b = runs["streamed"], runs["per_sample"]
        ok = "error" not in a and "error" not in b and all(m.is_file() for m in maps.values()) and len(maps) == 2
        diff = compare_maps(maps["streamed"], maps["per_sample"]) if ok else None
    machine["loadavg_end"] = list(os.getloadavg())
    if not s.runs:  # only re-rendered here: the engine is the one the reused runs ran at
        engine = {**(a.get("engine") or {"commit": None}), "reused": True}

    plans = [(r.get("windows_per_call"), r.get("samples_per_call")) for r in (a, b)]
    same_plan = plans[0] == plans[1] and None not in plans[0]

    def ratio(key: str) -> float | None:
        if a.get(key) and b.get(key):
            return b[key] / a[key]
        return None

    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "engine": engine,
        "settings": {
            **_jsonable(s), "config_name": cfg.name, "model_grid": list(grid), "raw_scan_shape": raw_shape,
            "raw_spacing_mm": raw_spacing, "window": list(meta.window), "windows": windows, "classes": k,
            "overlap": cfg.infer.overlap, "dropout_sites": [x.name for x in meta.sites], "parameters": n_params,
            "tiny_model_overrides": {**TINY_MODEL, "model.widths": list(s.widths),
                                     "model.full_res_channels": s.full_res_channels},
            "rows_cap": cap or rows, "call_share": call_share(),
            "call_plan": {"windows_per_call": plan.windows_per_call, "samples_per_call": plan.samples_per_call,
                          "call_bytes": call_bytes, "row_bytes": plan.row_bytes},
            "same_call_plan": same_plan, "per_sample_memory_gb": budget_b,
            "planned_chunk_streamed_without_cache": planned_a,
        },
        "runs": runs,
        "peak_rss_ratio": ratio("peak_rss_mb"),
        "mc_rss_increase_ratio": ratio("mc_rss_increase_mb"),
        "maps_max_abs_diff": diff,
    }
    write_outputs(result, s.out / f"{s.name}.json", s.out / f"{s.name}.md")
    return result


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ratio_text(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def markdown(r: dict[str, Any]) -> str:
    """The ``.md`` next to the JSON: settings, one row per run, the ratio and the maps' difference."""
    st, m = r["settings"], r["machine"]
    lines = [
        "# Memory: streamed exact blend vs all samples in one chunk",
        "",
        f"Machine: {m.get('cpu_model', m['processor'])}, {m['cpu_count']} CPUs, {m['memory_gb']:.0f} GB; torch "
        f"{m['torch']} ({st['threads']} threads). Load average at start "
        f"{'/'.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end {'/'.join(f'{x:.2f}' for x in m['loadavg_end'])}"
        " (shared machine: seconds are noisy, memory is not).",
        f"Engine at commit `{(r.get('engine') or {}).get('commit')}`"
        + (f", modified: {', '.join(r['engine']['modified'])}" if (r.get("engine") or {}).get("modified") else "")
        + ".",
        "",
        f"Workload: `{st['config_name']}` config with a tiny random TUNE++ ({st['parameters']} parameters, widths "
        f"{st['widths']}, full_res_channels {st['full_res_channels']}), synthetic scan "
        f"{'x'.join(map(str, st['raw_scan_shape']))} -> model grid {'x'.join(map(str, st['model_grid']))}, "
        f"K = {st['classes']}, window {'x'.join(map(str, st['window']))}, overlap {st['overlap']}, "
        f"{st['windows']} windows, dropout sites {st['dropout_sites']}, S = {st['samples']}. Runner calls: "
        f"{st['call_plan']['windows_per_call']} window x {st['call_plan']['samples_per_call']} samples "
        f"(cap {st['rows_cap']} rows; same plan in both runs: {st['same_call_plan']}).",
        "",
        "| run | memory_gb | peak RSS MB | RSS before mc MB | mc peak RSS MB | mc increase MB | engine model GB | "
        "sample_chunk | chunks | trunk | runner calls | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for label, run in r["runs"].items():
        if "error" in run and "peak_rss_mb" not in run:
            polled = run.get("polled_peak_rss_mb")
            lines.append(f"| {label} | {run['memory_gb']:g} | "
                         f"{'—' if not polled else f'>= {polled:.0f} (polled, stopped)'} | — | — | — | — | — | — | — | "
                         f"— | {_fmt(run.get('wall_s'))} (wall) |")
            continue
        model = run.get("engine_model", {}).get("total_gb")
        lines.append(
            f"| {label} | {run['memory_gb']:g} | {_fmt(run['peak_rss_mb'], 0)} | {_fmt(run['rss_before_mc_mb'], 0)} | "
            f"{_fmt(run['mc_peak_rss_mb'], 0)} | {_fmt(run['mc_rss_increase_mb'], 0)} | {_fmt(model, 2)} | "
            f"{_fmt(run.get('sample_chunk'))} | {_fmt(run.get('sample_chunks'))} | {_fmt(run.get('trunk'))} | "
            f"{_fmt(run.get('runner_calls'))} | {_fmt(run.get('seconds'))} |")
    for label, run in r["runs"].items():
        if "error" in run:
            lines.append(f"\n{label}: **{run['error']}**")
        if "reused_from" in run:
            eng = (run.get("engine") or {}).get("commit") or "not recorded"
            lines.append(f"\n{label}: reused from `{run['reused_from']}` (an earlier run of the same workload and "
                         f"call plan, engine `{eng}`; its load average and seconds are that run's).")
    d = r["maps_max_abs_diff"]
    if (a_chunk := r["runs"]["streamed"].get("sample_chunk")) and a_chunk >= st["samples"]:
        lines.append(f"\nNote: the streamed run held all {st['samples']} samples in one chunk at "
                     f"{st['memory_gb']:g} GB, so both runs are the per-sample design here.")
    lines += [
        "",
        f"Peak RSS per-sample / streamed: **{_ratio_text(r['peak_rss_ratio'])}**; RSS increase during `mc_predict`: "
        f"{_ratio_text(r['mc_rss_increase_ratio'])}.",
        "Max |diff| of the maps, streamed vs per-sample: "
        + ("n/a (a run failed)" if d is None else f"**{d['max']:.2e}** ("
           + ", ".join(f"{k} {v:.1e}" for k, v in d.items() if k != "max") + ")."),
        "",
        "Peak RSS is the child process's lifetime maximum (`ru_maxrss`: network, scan and preprocessing "
        "included); `mc` columns are psutil samples around `mc_predict` alone (a lower bound). The engine model "
        "is plan_chunk's accounting (stats + chunk + runner calls + trunk cache + volume).",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], json_path: Path, md_path: Path) -> None:
    """The JSON and the Markdown, each written atomically."""
    from tunepp_deploy.data.nifti import write_atomic

    text = json.dumps(result, indent=2)
    write_atomic(json_path, lambda tmp: tmp.write_text(text))
    md = markdown(result)
    write_atomic(md_path, lambda tmp: tmp.write_text(md))


def _parse_volume(text: str) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v.strip())
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"volume must be DxHxW, got {text!r}")
    return dims  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    d = MemorySettings()
    ap.add_argument("--out", type=Path, default=d.out)
    ap.add_argument("--tag", default=d.tag)
    ap.add_argument("--config", type=Path, default=d.config)
    ap.add_argument("--volume", type=_parse_volume, default=d.volume)
    ap.add_argument("--samples", type=int, default=d.samples)
    ap.add_argument("--memory-gb", type=float, default=d.memory_gb)
    ap.add_argument("--max-rows", type=int, default=d.max_rows)
    ap.add_argument("--widths", type=lambda t: tuple(int(v) for v in t.split(",")), default=d.widths)
    ap.add_argument("--full-res-channels", type=int, default=d.full_res_channels)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--noise-draws", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=None, dest="timeout_s")
    ap.add_argument("--runs", type=lambda t: tuple(v.strip() for v in t.split(",") if v.strip()), default=d.runs,
                    help="streamed, per_sample or both (default)")
    ap.add_argument("--maps-dir", type=Path, default=None, help="keep each run's maps and record here")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier --maps-dir: runs left out of --runs are taken from it (same workload only)")
    args = ap.parse_args(argv)
    if args.child:
        _child_main(args.child)
        return
    kw = {k: v for k, v in vars(args).items() if k != "child"}
    s = replace(MemorySettings(), **kw)
    res = run_memory_bench(s)
    print(markdown(res))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
