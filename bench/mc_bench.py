"""``tunepp bench``: end-to-end MC-inference latency per backend x precision x sample count.

For every configuration the same synthetic scan (:mod:`tunepp_deploy.bench.workload`) goes through
preprocessing, the sliding-window MC engine, resampling to the input grid and the topology report;
``warmup`` untimed runs are followed by ``repeats`` timed ones (median and spread reported). In the
same run, on the same scan and with the same dropout masks, it measures the baselines that the
ratios need:

* ``single``: the deterministic single pass (S = 1, all-ones masks) on every backend;
* ``naive``: the seed's loop of S eager ``model.forward`` passes (torch, fp32), at the reference
  sample count (25 when it is in ``samples``, else the largest);
* ``reuse_off``: the engine's batched calls with the trunk recomputed per sample row, per backend.

Ratios are always computed from two recorded medians (``numerator_s / denominator_s``, both stored
next to the ratio) — never constants. The compute floor (:mod:`tunepp_deploy.bench.floor`) uses a
matmul rate measured in the same run.

**Defaults depend on the device** (``--config`` / ``--volume`` left out). With CUDA: the Synapse
config (UNETR++-sized, 180 GFLOPs per 96^3 window) on a 240 x 240 x 160 scan, the workload of the
published A100 figures. Without CUDA: the phantom config on its phantoms' 64 x 64 x 48 grid —
measured on the 2-core CI CPU, one Synapse window takes about 10 s on ONNX Runtime, so the Synapse
scan's 48 windows x (1 + 5 + 10 + 25 + 50 samples, three backends, baselines, repeats) would run for
many hours. ``bench/README.md`` lists the commands and figures measured here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tunepp_deploy.export.metadata import ModelMeta, meta_for

from tunepp_deploy import __version__
from tunepp_deploy.config import load_config
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import identity_masks, sample_masks
from tunepp_deploy.infer.mc import MCSettings
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.load import model_kind, read_onnx_meta, resolve_device
from tunepp_deploy.infer.sliding_window import count_windows
from tunepp_deploy.model.network import TUNEPP, build_network

from .conv_floor import measure_conv_floor
from .floor import WindowFlops, measure_matmul_gflops, peak_dtype, window_flops
from .machine import read_cpu_facts
from .probes import ReuseOffRunner, RssSampler, minor_faults, spread, synchronize
from .workload import STAGES, EagerForward, RunResult, Scan, make_scan, preprocessed_shape, run_engine, run_naive

#: Relative to the working directory, like the other commands' ``configs/phantom.yaml`` defaults.
REPO_CONFIGS = Path("configs")
BACKENDS = ("torch", "ort", "openvino", "trt")
PRECISIONS = ("fp32", "fp16", "int8")
GPU_DEFAULTS = ("synapse.yaml", (240, 240, 160))
CPU_DEFAULTS = ("phantom.yaml", (64, 64, 48))
#: Published figures of the seed (A100, other hardware): whole-volume seconds.
PUBLISHED_A100 = {"single_s": 1.1, "mc25_s": 2.8, "source": "TUNE++ seed README (A100)"}
#: CPU targets of issue 6 (figures to report, not tests).
TARGETS = {"batched_vs_loop": 3.0, "ort_vs_torch_single": 1.3,
           # issue 14's acceptance: the default CPU backend (auto -> OpenVINO for ONNX) vs the seed's loop
           "naive_over_openvino_fp32": 3.0, "alt_naive_over_openvino_fp32": 3.0}
#: Minimum untimed seconds per configuration (besides ``warmup`` runs): on the AVX2 EPYC of 2026-12-04 the first
#: configuration's single pass took 2.00, 1.98, 1.44, then 0.78 s per run after one warm-up run (bench/results/
#: mc_phantom_v7/NOTE.md), so a run count alone did not reach the steady state of sub-second configurations.
WARMUP_S = 5.0
#: Cap on warm-up runs when ``warmup_s`` asks for more (tiny test workloads take milliseconds per run).
MAX_WARMUP_RUNS = 20
#: What each entry records of the engine's run (the predictor's report info, and the FLOP counts).
INFO_FIELDS = ("sample_chunk", "sample_chunks", "trunk", "noise_draws", "trunk_windows", "head_rows")


@dataclass(frozen=True)
class BenchSettings:
    """Everything ``tunepp bench`` takes (the CLI flags map 1:1; None = the documented default)."""

    out: Path
    config: Path | None = None
    model: Path | None = None
    volume: tuple[int, int, int] | None = None
    samples: tuple[int, ...] = (1, 5, 10, 25, 50)
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = PRECISIONS
    repeats: int = 3
    warmup: int = 1
    #: and at least this much warm-up time per configuration (:func:`warm_up`)
    warmup_s: float = WARMUP_S
    dropout_sites: tuple[str, ...] | None = None
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    baselines: bool = True
    max_batch: int | None = None  # windows per runner call (default: the config's infer.max_batch)
    memory_gb: float | None = None  # the engine's memory budget (default: the config's infer.memory_gb)
    alternate: int = 0  # rounds of naive / engine S_ref timed alternately (A/B/A/B) per backend
    conv_floor: bool = True  # time the network's own conv shapes (the second floor)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_samples(self) -> int:
        """Sample count of the naive-loop and trunk-reuse baselines: 25 if measured, else the most."""
        return 25 if 25 in self.samples else max(self.samples)


@dataclass
class LoadedModel:
    """The model under test: its config/metadata, the torch module when there is one, its file kind."""

    cfg: TuneppConfig
    meta: ModelMeta
    net: TUNEPP | None
    kind: str  # fresh, checkpoint, onnx, engine
    path: Path | None
    onnx_bytes: bytes | None = None


def resolve_defaults(s: BenchSettings, device: torch.device) -> tuple[Path, tuple[int, int, int]]:
    """Config and volume after applying the device-dependent defaults (module docstring)."""
    cfg_name, vol = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    return (s.config or REPO_CONFIGS / cfg_name), (s.volume or vol)


def load_model(s: BenchSettings, config: Path, progress: Callable[[str], None]) -> LoadedModel:
    """Fresh network (seeded) from ``config``, or the checkpoint / ONNX / engine given as ``--model``."""
    overrides = {"model.dropout.sites": list(s.dropout_sites)} if s.dropout_sites is not None else None
    if s.model is None:
        cfg = load_config(config, overrides)
        torch.manual_seed(s.seed)
        net = build_network(cfg).eval()
        return LoadedModel(cfg, meta_for(net, cfg), net, "fresh", None)
    kind = model_kind(s.model)
    if kind == "checkpoint":
        from tunepp_deploy.export.onnx_export import load_checkpoint_network

        from tunepp_deploy.config.load import config_from_dict, config_to_dict

        net, cfg = load_checkpoint_network(s.model)
        if overrides:  # dropout sites hold no weights: rebuild with other sites and copy the weights
            d = config_to_dict(cfg)
            d["model"]["dropout"]["sites"] = list(s.dropout_sites or ())
            cfg = config_from_dict(d, str(s.model))
            state = net.state_dict()
            net = build_network(cfg).eval()
            net.load_state_dict(state)
        return LoadedModel(cfg, meta_for(net, cfg), net, "checkpoint", s.model)
    if s.dropout_sites is not None:
        raise TuneppError("--dropout-sites needs a checkpoint or a fresh network (an exported graph fixes its sites)")
    if kind == "onnx":
        _, meta = read_onnx_meta(s.model)
        return LoadedModel(meta.config, meta, None, "onnx", s.model)
    from tunepp_deploy.export.engine_sidecar import read_sidecar

    meta = read_sidecar(s.model).meta
    return LoadedModel(meta.config, meta, None, "engine", s.model)


def skip_reason(backend: str, precision: str, device: torch.device, model: LoadedModel) -> str | None:
    """Why ``backend`` x ``precision`` cannot run here, or None when it can."""
    if backend == "trt":
        if device.type != "cuda":
            return "TensorRT needs a CUDA device"
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed"
        if model.kind == "engine":
            from tunepp_deploy.export.engine_sidecar import read_sidecar

            built = read_sidecar(model.path).precision  # type: ignore[arg-type]
            return None if built == precision else f"the given engine was built for {built}"
        if model.net is None and model.kind != "onnx":
            return "no ONNX graph to build an engine from"
        return None
    if model.kind == "engine":
        return "a TensorRT engine runs only on trt"
    if backend == "torch":
        if model.net is None:
            return "the torch backend needs a checkpoint or a fresh network (got an ONNX file)"
        if precision == "fp16" and device.type != "cuda":
            return "torch AMP (fp16) runs on CUDA only; CPU inference is fp32"
        if precision == "int8":
            return "no int8 path for eager torch (int8 runs through TensorRT)"
        return None
    if backend == "openvino":
        if device.type != "cpu":
            return "the OpenVINO runner runs on the CPU"
        from tunepp_deploy.infer.runners.openvino_runner import openvino_version

        if openvino_version() is None:
            return "openvino is not installed (pip install 'tunepp-deploy[openvino]')"
        if precision != "fp32":
            return "the bench runs OpenVINO in f32 (pinned); int8 needs a Q/DQ graph (bench/int8.py)"
        if model.net is None and model.kind != "onnx":
            return "no ONNX graph for OpenVINO"
        return None
    if backend == "ort":
        if precision != "fp32":
            return "the exported graph is fp32; reduced precision runs through TensorRT"
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider here (CPU build)"
        return None
    return f"unknown backend {backend}"


def open_bench_runner(backend: str, precision: str, device: torch.device, model: LoadedModel, mc: MCSettings,
                      samples: int, scan_pre: np.ndarray, tmp: Path, threads: int | None) -> Runner:
    """A runner for one backend x precision (the checks of :func:`skip_reason` have passed)."""
    if backend == "torch":
        from tunepp_deploy.infer.runners.torch_runner import TorchRunner

        runner = TorchRunner(model.net, model.meta, device, amp=precision == "fp16")  # type: ignore[arg-type]
        runner.amp_dtype = torch.float16  # fp16 means fp16 (TorchRunner would pick bf16 where supported)
        return runner
    if backend == "ort":
        from tunepp_deploy.infer.runners.ort_runner import OrtRunner

        graph = str(model.path) if model.kind == "onnx" else onnx_bytes(model)
        return OrtRunner(graph, model.meta, device, threads)
    if backend == "openvino":
        from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner

        graph = str(model.path) if model.kind == "onnx" else onnx_bytes(model)
        return OpenVinoRunner(graph, model.meta, device, threads, precision)
    from tunepp_deploy.infer.runners.trt_runner import TrtRunner

    if model.kind == "engine":
        return TrtRunner(model.path, device)  # type: ignore[arg-type]
    return TrtRunner(build_trt_engine(model, precision, mc, samples, scan_pre, tmp), device)


def onnx_bytes(model: LoadedModel) -> bytes:
    """The exported graph of ``model`` (exported once, in memory, on a copy of the network)."""
    if model.onnx_bytes is None:
        import copy

        from tunepp_deploy.export.onnx_export import build_onnx

        model.onnx_bytes = build_onnx(copy.deepcopy(model.net).cpu(), model.meta).SerializeToString()  # type: ignore[arg-type]
    return model.onnx_bytes


def build_trt_engine(model: LoadedModel, precision: str, mc: MCSettings, samples: int, scan_pre: np.ndarray,
                     tmp: Path) -> Path:
    """UNVERIFIED (no TensorRT here): build an engine for ``precision`` via ``tunepp export trt``'s code."""
    from tunepp_deploy.export.trt_build import build_engine

    onnx_path = model.path if model.kind == "onnx" else tmp / "model.onnx"
    if model.kind != "onnx" and not onnx_path.exists():  # type: ignore[union-attr]
        onnx_path.write_bytes(onnx_bytes(model))  # type: ignore[union-attr]
    calib = None
    if precision == "int8":  # calibrate on windows of the benchmark scan itself
        calib = tmp / "calib"
        calib.mkdir(exist_ok=True)
        win = model.meta.window
        for i in range(4):
            sl = tuple(slice(min(i * w // 4, max(0, n - w)), min(i * w // 4, max(0, n - w)) + w)
                       for n, w in zip(scan_pre.shape, win, strict=True))
            crop = scan_pre[sl]
            pad = [(0, w - c) for c, w in zip(crop.shape, win, strict=True)]
            np.save(calib / f"w{i}.npy", np.pad(crop, pad)[None].astype(np.float32))
    res = build_engine(onnx_path, tmp / f"model_{precision}.engine", precision, calib, mc.max_batch, samples)  # type: ignore[arg-type]
    return res.engine


def warm_up(fn: Callable[[], RunResult], runs: int, min_seconds: float = 0.0) -> list[float]:
    """Untimed runs of one configuration right before it is timed; returns their seconds.

    Why per configuration: the first timed configuration of a process used to absorb one-off costs
    (thread pools, oneDNN primitive creation for new shapes, allocator growth), so the seed's bench
    read a single torch pass at 7.53 s where the same pass took 1.51 s later in the same process.
    Every configuration has its own shapes, so each gets its own warm-up (the tests spy on this).
    Why also ``min_seconds``: one run was not enough for a sub-second configuration (:data:`WARMUP_S`);
    at least ``runs`` runs, then more until ``min_seconds`` have passed (at most :data:`MAX_WARMUP_RUNS`).
    """
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - t0 < min_seconds and len(times) < MAX_WARMUP_RUNS):
        t1 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t1)
    return times


def _measure(fn: Callable[[], RunResult], warmup: int, repeats: int, device: torch.device,
             warmup_s: float = 0.0) -> dict[str, Any]:
    """Warm up, then time ``repeats`` runs under the RSS sampler and CUDA peak-memory counter."""
    warm = warm_up(fn, warmup, warmup_s)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    runs: list[RunResult] = []
    faults: list[int] = []
    with RssSampler() as rss:
        for _ in range(repeats):
            f0 = minor_faults()
            runs.append(fn())
            faults.append(minor_faults() - f0)
    last = runs[-1]
    totals = [r.total for r in runs]
    stages = {st: spread([r.stages[st] for r in runs])["median"] for st in STAGES}
    engine = stages["network"] + stages["stitching"] + stages["uncertainty"]
    fault_median = float(np.median(faults))
    return {
        "latency_s": spread(totals),
        "latency_runs_s": totals,
        "warmup_runs_s": warm,
        "stages_s": stages,
        # the engine's non-network share (issue 14: under 10% of MC-25); medians of the stages
        "stitch_uncertainty_s": stages["stitching"] + stages["uncertainty"],
        "stitch_uncertainty_share": (stages["stitching"] + stages["uncertainty"]) / engine if engine else None,
        # minor page faults (ru_minflt) of a whole timed run, median; per call: those inside the runner
        # calls (trunk + head) of the last run, divided by its calls
        "minor_faults_per_run": fault_median,
        "minor_faults_per_call": last.info.get("call_faults", 0) / max(1, last.calls),
        "minor_faults_outside_calls_per_run": max(0, faults[-1] - last.info.get("call_faults", 0)),
        "windows": last.windows,
        "runner_calls": last.calls,
        "windows_per_call": last.windows_per_call,
        "samples_per_call": last.samples_per_call,
        "blend": last.blend,
        **{k: last.info[k] for k in INFO_FIELDS},
        "peak_rss_mb": rss.peak_bytes / 2**20,
        "rss_increase_mb": (rss.peak_bytes - rss.start_bytes) / 2**20,
        "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "_result": last,
    }


def _entry(kind: str, backend: str, precision: str, samples: int, runner: str, m: dict[str, Any],
           flops: WindowFlops, peak: float, conv_rate: float | None = None) -> dict[str, Any]:
    med = m["latency_s"]["median"]
    gflops = flops.counted_gflops(m["trunk_windows"], m["head_rows"])
    floor = gflops / peak
    conv_floor = gflops / conv_rate if conv_rate else None
    return {
        "key": f"{kind}/{backend}/{precision}/S{samples}",
        "kind": kind, "backend": backend, "precision": precision, "samples": samples, "runner": runner,
        **{k: v for k, v in m.items() if not k.startswith("_")},
        "windows_per_s": m["windows"] / med,
        "window_samples_per_s": m["windows"] * samples / med,
        "gflops": gflops, "floor_s": floor, "peak_gflops_per_s": peak,
        "measured_over_floor": med / floor if floor else None,
        "network_over_floor": m["stages_s"]["network"] / floor if floor else None,
        "conv_floor_s": conv_floor, "conv_rate_gflops_per_s": conv_rate,
        "measured_over_conv_floor": med / conv_floor if conv_floor else None,
        "network_over_conv_floor": m["stages_s"]["network"] / conv_floor if conv_floor else None,
    }


def _ratio(name: str, num: dict[str, Any] | None, den: dict[str, Any] | None, meaning: str,
           stage: str | None = None, threads: int | None = None) -> dict[str, Any] | None:
    """``num / den`` of two entries' median latencies (or of one stage's medians, e.g. ``network``)."""
    if num is None or den is None:
        return None
    if stage is None:
        a, b = num["latency_s"]["median"], den["latency_s"]["median"]
    else:
        a, b = num["stages_s"][stage], den["stages_s"][stage]
    out = {"name": name, "value": a / b, "numerator": num["key"], "denominator": den["key"],
           "numerator_s": a, "denominator_s": b, "of": stage or "latency", "threads": threads,
           "meaning": f"{meaning} ({threads_text(threads)})"}
    unsettled = [e["key"] for e in (num, den) if not e["latency_s"].get("settled", True)]
    if unsettled:
        out["unsettled"] = unsettled
    if name in TARGETS:
        out["target"] = TARGETS[name]
        # a median of runs that never reached one steady state is not judged against a target
        out["met"] = a / b >= TARGETS[name] if not unsettled else None
    return out


def threads_text(threads: int | None) -> str:
    """How a headline names its threads: a ratio without them was how a 2-thread figure got quoted as general."""
    return f"{threads} thread{'s' if threads != 1 else ''}" if threads else "threads unknown"


def machine_info(device: torch.device, threads: int | None) -> dict[str, Any]:
    """Host, device and library versions, threads and load (the figures depend on all of them)."""
    import onnx
    import onnxruntime as ort
    import psutil

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "torch": torch.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "numpy": np.__version__, "tunepp_deploy": __version__,
        "torch_threads": torch.get_num_threads(), "ort_threads": threads or "default (physical cores)",
        "device": str(device),
        "loadavg_start": list(os.getloadavg()),
    }
    facts = read_cpu_facts()
    info["cpu"] = facts.to_dict()
    info["cpu_model"] = facts.model_name
    info["cpu_summary"] = facts.summary()
    info["threads_used"] = torch.get_num_threads()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    from tunepp_deploy.infer.runners.openvino_runner import openvino_version

    info["openvino"] = openvino_version()
    with contextlib.suppress(ImportError):
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    return info


def run_mc_bench(s: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark (module docstring); writes ``bench.json``, ``bench.md`` and plots into ``s.out``."""
    from .report import write_outputs

    if not s.samples or min(s.samples) < 1:
        raise TuneppError("--samples must be positive integers")
    if s.repeats < 1 or s.warmup < 0:
        raise TuneppError("--repeats must be >= 1 and --warmup >= 0")
    for b in s.backends:
        if b not in BACKENDS:
            raise TuneppError(f"unknown backend '{b}' (use {', '.join(BACKENDS)})")
    for p in s.precisions:
        if p not in PRECISIONS:
            raise TuneppError(f"unknown precision '{p}' (use {', '.join(PRECISIONS)})")
    device = resolve_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    config, volume = resolve_defaults(s, device)
    model = load_model(s, config, log)
    cfg, meta = model.cfg, model.meta
    with torch.device("meta"):
        flop_net = build_network(cfg)
    flops = window_flops(flop_net, meta.window, meta.in_channels)
    mc = MCSettings(samples=1, seed=cfg.infer.seed, overlap=cfg.infer.overlap,
                    max_batch=s.max_batch or cfg.infer.max_batch, memory_gb=s.memory_gb or cfg.infer.memory_gb)
    scan: Scan = make_scan(volume, meta.spacing, s.seed)
    grid = preprocessed_shape(scan, meta.spacing)
    windows = count_windows(grid, meta.window, mc.overlap)
    machine = machine_info(device, s.threads)
    log(f"{cfg.name} ({model.kind}), window {meta.window}, scan {scan.hu.shape} -> {grid}, {windows} windows, "
        f"sites {[x.name for x in meta.sites]} (trunk {flops.trunk_share:.0%} of FLOPs), device {device}")

    rates: dict[torch.dtype, float] = {}
    for p in s.precisions:  # one measurement per compute type (on CPU every precision is fp32)
        if peak_dtype(p, device) not in rates:
            rates[peak_dtype(p, device)] = measure_matmul_gflops(device, peak_dtype(p, device))
    peaks = {p: rates[peak_dtype(p, device)] for p in s.precisions}
    log("measured matmul peak: " + ", ".join(f"{p} {g:.1f} GFLOP/s" for p, g in peaks.items()))
    conv = (measure_conv_floor(flop_net, meta.window, meta.in_channels, device, batches=(1, max(2, mc.max_batch)))
            if s.conv_floor else None)
    conv_rate = conv.rate_gflops_per_s if conv and device.type == "cpu" else None  # CPU: fp32 everywhere
    if conv:
        log(f"measured conv rate (the network's {conv.distinct_shapes} conv shapes): {conv.rate_gflops_per_s:.1f} "
            f"GFLOP/s, {conv.conv_seconds_per_window:.3f} s of convs per window")
    threads = torch.get_num_threads()
    pre = None
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    s_ref = s.reference_samples
    kept: dict[str, dict[str, torch.Tensor]] = {}  # model-grid maps of the runs the checks compare (host)

    def record(kind: str, backend: str, precision: str, samples: int, runner: str,
               fn: Callable[[], RunResult]) -> dict[str, Any]:
        log(f"  {kind} {backend} {precision} S={samples} ...")
        m = _measure(fn, s.warmup, s.repeats, device, s.warmup_s)
        e = _entry(kind, backend, precision, samples, runner, m, flops, peaks[precision], conv_rate)
        if samples == s_ref and kind in ("mc", "reuse_off", "naive"):
            last: RunResult = m["_result"]
            kept[e["key"]] = {"mean_probs": last.mean_probs.cpu(), **{k: v.cpu() for k, v in last.maps.items()}}
        entries.append(e)
        log(f"    {e['latency_s']['median']:.3f} s (min {e['latency_s']['min']:.3f}, max {e['latency_s']['max']:.3f})")
        return e

    alternated: list[dict[str, Any]] = []
    fwd = EagerForward(model.net, meta, device) if model.net is not None and meta.sites else None
    with tempfile.TemporaryDirectory(prefix="tunepp_bench_") as tmpdir:
        for backend in s.backends:
            for precision in s.precisions:
                why = skip_reason(backend, precision, device, model)
                if why:
                    skipped.append({"backend": backend, "precision": precision, "reason": why})
                    log(f"  skip {backend} {precision}: {why}")
                    continue
                if pre is None:
                    from tunepp_deploy.data.preprocess import preprocess_image

                    pre = preprocess_image(scan.hu, scan.spacing, meta.spacing, meta.intensity)
                try:
                    runner = open_bench_runner(backend, precision, device, model, mc, max(s.samples), pre,
                                               Path(tmpdir), s.threads)
                except TuneppError as e:
                    skipped.append({"backend": backend, "precision": precision, "reason": str(e)})
                    log(f"  skip {backend} {precision}: {e}")
                    continue
                with runner:
                    desc = runner.describe()
                    ones = identity_masks(meta.sites, meta.window, 1)
                    record("single", backend, precision, 1, desc,
                           lambda r=runner, m=ones: run_engine(r, scan, m, mc))
                    for n in s.samples:
                        masks = sample_masks(meta.sites, meta.window, n, mc.seed)
                        mcn = MCSettings(n, mc.seed, mc.overlap, mc.max_batch, mc.memory_gb)
                        record("mc", backend, precision, n, desc,
                               lambda r=runner, m=masks, c=mcn: run_engine(r, scan, m, c))
                    if s.baselines and meta.sites:
                        masks = sample_masks(meta.sites, meta.window, s_ref, mc.seed)
                        mcn = MCSettings(s_ref, mc.seed, mc.overlap, mc.max_batch, mc.memory_gb)
                        off = ReuseOffRunner(runner)
                        record("reuse_off", backend, precision, s_ref, off.describe(),
                               lambda r=off, m=masks, c=mcn: run_engine(r, scan, m, c))
                    if s.alternate and fwd is not None:
                        masks = sample_masks(meta.sites, meta.window, s_ref, mc.seed)
                        mcn = MCSettings(s_ref, mc.seed, mc.overlap, mc.max_batch, mc.memory_gb)
                        log(f"  alternate naive / mc {backend} {precision} S={s_ref} x {s.alternate} ...")
                        alternated.append(alternate_ratio(
                            f"alt_naive_over_{backend}_{precision}",
                            lambda m=masks, c=mcn: run_naive(fwd, scan, m, c),  # type: ignore[arg-type]
                            lambda r=runner, m=masks, c=mcn: run_engine(r, scan, m, c),
                            s.alternate, threads,
                            f"seed's {s_ref}-pass eager loop / engine on {backend} {precision}, timed A/B/A/B"))
                        log(f"    {alternated[-1]['value']:.2f}x (per-round ratios {alternated[-1]['round_ratios']})")
        if s.baselines and fwd is not None:
            masks = sample_masks(meta.sites, meta.window, s_ref, mc.seed)
            mcn = MCSettings(s_ref, mc.seed, mc.overlap, mc.max_batch, mc.memory_gb)
            record("naive", "torch", "fp32", s_ref, "torch eager model.forward, one sample per pass (seed loop)",
                   lambda: run_naive(fwd, scan, masks, mcn))  # type: ignore[arg-type]
        elif s.baselines:
            skipped.append({"backend": "torch", "precision": "fp32", "reason": "naive loop needs a torch network "
                            "with dropout sites"})

    by_key = {e["key"]: e for e in entries}
    ratios = compute_ratios(by_key, s.backends, s.precisions, s_ref, threads) + alternated
    checks = compute_checks(kept, s_ref)
    machine["loadavg_end"] = list(os.getloadavg())
    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "config": str(config), "config_name": cfg.name, "model": str(s.model) if s.model else None,
            "model_kind": model.kind, "volume": list(volume), "scan_shape": list(scan.hu.shape),
            "scan_spacing_mm": list(scan.spacing), "model_grid": list(grid), "model_spacing_mm": list(meta.spacing),
            "window": list(meta.window), "windows": windows, "overlap": mc.overlap, "max_batch": mc.max_batch,
            "memory_gb": mc.memory_gb, "dropout_sites": [x.name for x in meta.sites], "samples": list(s.samples),
            "reference_samples": s_ref, "backends": list(s.backends), "precisions": list(s.precisions),
            "repeats": s.repeats, "warmup": s.warmup, "warmup_s": s.warmup_s, "seed": s.seed, "mask_seed": mc.seed,
            "defaults_for": device.type if (s.config is None or s.volume is None) else None,
        },
        "flops": {"trunk_gflops_per_window": flops.trunk_gflops, "head_gflops_per_window": flops.head_gflops,
                  "single_gflops_per_window": flops.single_gflops, "trunk_share": flops.trunk_share,
                  f"ideal_trunk_reuse_speedup_S{s_ref}": flops.ideal_speedup(s_ref)},
        "peak_gflops_per_s": {p: {"value": g, "how": f"measured {str(peak_dtype(p, device))[6:]} torch.mm on {device}"}
                              for p, g in peaks.items()},
        "conv_floor": conv.to_dict() if conv else None,
        "threads": threads,
        "published": PUBLISHED_A100,
        "stages": list(STAGES),
        "entries": entries,
        "ratios": ratios,
        "checks": checks,
        "skipped": skipped,
        **({"extra": s.extra} if s.extra else {}),
    }
    write_outputs(result, s.out)
    return result


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Max |a - b| of the mean probabilities, and over every map both have."""
    probs = float((a["mean_probs"] - b["mean_probs"]).abs().max())
    maps = max(float((a[k] - b[k]).abs().max()) for k in a if k in b)
    return probs, maps


def compute_checks(kept: dict[str, dict[str, torch.Tensor]], s_ref: int) -> dict[str, float]:
    """The same samples must give the same maps: the seed's naive loop (S full passes, reference formula
    :func:`~tunepp_deploy.infer.uncertainty.maps_from_samples`) against the streamed engine (torch fp32),
    and trunk reuse off against on, per backend — both the mean probabilities and every map."""
    checks: dict[str, float] = {}
    naive_key, batched_key = f"naive/torch/fp32/S{s_ref}", f"mc/torch/fp32/S{s_ref}"
    if naive_key in kept and batched_key in kept:
        p, m = _max_diff(kept[naive_key], kept[batched_key])
        checks["naive_vs_engine_max_abs_diff_mean_probs"] = p
        checks["naive_vs_engine_max_abs_diff_maps"] = m
    for key in kept:
        on = "mc/" + key.removeprefix("reuse_off/")
        if key.startswith("reuse_off/") and on in kept:
            tag = "_".join(key.split("/")[1:3])
            p, m = _max_diff(kept[key], kept[on])
            checks[f"reuse_off_vs_on_max_abs_diff_mean_probs_{tag}"] = p
            checks[f"reuse_off_vs_on_max_abs_diff_maps_{tag}"] = m
    return checks


def alternate_ratio(name: str, fn_a: Callable[[], RunResult], fn_b: Callable[[], RunResult], rounds: int,
                    threads: int | None, meaning: str) -> dict[str, Any]:
    """``A / B`` timed alternately (A, B, A, B, ...) after one warm-up of each: drift of a shared machine's
    load hits both sides of every round alike. The value is the median of the per-round ratios."""
    warm_up(fn_a, 1)
    warm_up(fn_b, 1)
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(fn_a().total)
        tb.append(fn_b().total)
    per = [a / b for a, b in zip(ta, tb, strict=True)]
    out = {"name": name, "value": float(np.median(per)), "numerator": "naive (alternated)",
            "denominator": name.removeprefix("alt_naive_over_") + " (alternated)",
            "numerator_s": float(np.median(ta)), "denominator_s": float(np.median(tb)), "of": "latency",
            "threads": threads, "round_ratios": [round(x, 3) for x in per], "numerator_runs_s": ta,
            "denominator_runs_s": tb, "meaning": f"{meaning} ({threads_text(threads)})"}
    if name in TARGETS:
        out["target"] = TARGETS[name]
        out["met"] = out["value"] >= TARGETS[name]
    return out


def compute_ratios(by_key: dict[str, dict[str, Any]], backends: Sequence[str], precisions: Sequence[str],
                   s_ref: int, threads: int | None = None) -> list[dict[str, Any]]:
    """Every ratio the report quotes, each from two recorded medians of this process, threads stated."""

    def ratio(*args: Any, **kw: Any) -> dict[str, Any] | None:
        return _ratio(*args, threads=threads, **kw)

    out = [
        ratio("batched_vs_loop", by_key.get(f"naive/torch/fp32/S{s_ref}"), by_key.get(f"mc/torch/fp32/S{s_ref}"),
               f"seed's {s_ref}-pass eager loop / engine (torch fp32, batched, trunk reuse); > 1: engine faster"),
        ratio("ort_vs_torch_single", by_key.get("single/torch/fp32/S1"), by_key.get("single/ort/fp32/S1"),
               "torch eager single pass / ONNX Runtime single pass (fp32); > 1: ORT faster"),
        ratio("ort_vs_torch_single_network", by_key.get("single/torch/fp32/S1"), by_key.get("single/ort/fp32/S1"),
               "the same, network stage only (the other stages are the same code on both)", stage="network"),
        ratio("batched_vs_loop_network", by_key.get(f"naive/torch/fp32/S{s_ref}"),
               by_key.get(f"mc/torch/fp32/S{s_ref}"), "batched_vs_loop, network stage only", stage="network"),
    ]
    for b in backends:
        for p in precisions:
            out.append(ratio(f"trunk_reuse_{b}_{p}", by_key.get(f"reuse_off/{b}/{p}/S{s_ref}"),
                              by_key.get(f"mc/{b}/{p}/S{s_ref}"),
                              f"trunk reuse off / on at S={s_ref}, both batched ({b} {p}); > 1: reuse saves"))
            out.append(ratio(f"mc{s_ref}_over_single_{b}_{p}", by_key.get(f"mc/{b}/{p}/S{s_ref}"),
                              by_key.get(f"single/{b}/{p}/S1"),
                              f"cost of {s_ref} MC samples in single passes ({b} {p}); the seed's A100: 2.8/1.1"))
            if (b, p) == ("torch", "fp32"):
                continue  # that one is batched_vs_loop
            out.append(ratio(f"naive_over_{b}_{p}", by_key.get(f"naive/torch/fp32/S{s_ref}"),
                              by_key.get(f"mc/{b}/{p}/S{s_ref}"),
                              f"seed's eager loop (torch fp32) / engine on {b} {p} at S={s_ref}"))
    return [r for r in out if r is not None]


__all__ = ["BACKENDS", "PRECISIONS", "PUBLISHED_A100", "BenchSettings", "alternate_ratio", "compute_checks",
           "compute_ratios", "run_mc_bench", "threads_text", "warm_up"]
