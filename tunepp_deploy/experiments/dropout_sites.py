"""Dropout-site trade-off (issue #14 item 5): where the MC-dropout masks sit decides both how much
of the network the MC engine can run once per window (the trunk before the first site) and what the
samples vary, so the speed-up and the uncertainty quality must be measured together.

Protocol (``tunepp experiment dropout-sites --out DIR``; reading and figures: docs/results/dropout_sites.md):

1. Data, shared by every run: ``train_cases`` phantoms (each run splits them into train/val by its
   seed; validation Dice chooses the checkpoint) and ``test_cases`` phantoms from another data seed,
   so the test cases are disjoint from every validation case.
2. Per training seed: a **base** run without dropout (``model.dropout.sites: []``, ``base_epochs``),
   then per site variant a **fine-tune** of the base's last weights with the variant's sites
   (``finetune_epochs``, fresh optimiser, lr x ``finetune_lr_scale``; checkpoint: best validation
   Dice). A site changes training too (the masks act while training), so each variant is its own
   model; the dropout-free base is the same start for all of them and is what a 2-core CPU can
   afford (training every variant from scratch costs 3x the base's iterations).
3. Per run on the test cases: a deterministic pass (dropout off: Dice, fg ECE and the max-softmax
   ranking, the obvious baseline) and MC inference with ``samples`` samples (Dice, fg ECE, voxel
   AUROC/AURC of the total and epistemic maps near the foreground), scored with
   :mod:`.fidelity_metrics`.
4. Per run, speed on one window-sized centre crop of the first test volume, in the worker's
   process (one thread): the MC engine
   (``TuneppPredictor``, trunk reuse) against the seed's naive loop of ``samples`` eager full passes
   (:func:`tunepp_deploy.bench.workload.run_naive`), alternated ``time_repeats`` times, minimum of
   each; the maps of both must agree (recorded).
5. :mod:`.dropout_sites_summary` writes ``dropout_sites.json`` + ``.md``: mean +- 95% t-interval
   over seeds and paired differences against the first variant (the config default).

Runs execute in ``jobs`` spawned workers on one thread each (``jobs=1``: in this process, on one
thread); every stage skips work whose outputs exist, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import ConfigError, TuneppError
from tunepp_deploy.experiments.fidelity import _init_worker, _train_once
from tunepp_deploy.metrics.triage import FailureRule

#: The variants of issue #14: today's default first (the reference of every paired difference).
DEFAULT_VARIANTS = ("dec1+dec0", "dec0", "head")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class SitesSettings:
    """Sizes and schedule of the study (CLI flags map 1:1). A variant is its sites joined by ``+``."""

    config: Path = Path("configs/phantom.yaml")
    seeds: int = 3
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    base_epochs: int = 4
    finetune_epochs: int = 2
    iters_per_epoch: int = 15
    finetune_lr_scale: float = 1.0 / 3.0
    train_cases: int = 16
    test_cases: int = 4
    samples: int = 25
    time_repeats: int = 1
    jobs: int = 2
    data_seed: int = 0
    phantom_shape: tuple[int, int, int] = (64, 64, 48)
    rule: FailureRule = field(default_factory=FailureRule)


def variant_sites(variant: str) -> tuple[str, ...]:
    """``"dec1+dec0"`` -> ``("dec1", "dec0")``."""
    return tuple(x.strip() for x in variant.split("+") if x.strip())


def check_variants(s: SitesSettings) -> None:
    """One-line :class:`ConfigError` for an empty, duplicated or unknown site, before anything runs."""
    from tunepp_deploy.config.load import load_config

    cfg = load_config(s.config)
    n = len(cfg.model.widths)
    offered = ["bottleneck", *(f"dec{i}" for i in range(n - 2, -1, -1)), "head"]  # TUNEPP.positions
    if not s.variants:
        raise ConfigError("no dropout-site variant given")
    if len(set(s.variants)) != len(s.variants):
        raise ConfigError(f"duplicate variant in {list(s.variants)}")
    for v in s.variants:
        sites = variant_sites(v)
        if not sites:
            raise ConfigError(f"variant '{v}': no dropout site (join sites with '+', e.g. dec1+dec0)")
        bad = [x for x in sites if x not in offered]
        if bad:
            raise ConfigError(f"variant '{v}': unknown dropout site(s) {bad}; this network offers {offered}")
        if len(set(sites)) != len(sites):
            raise ConfigError(f"variant '{v}': duplicate site")
    if s.train_cases < 3:
        raise ConfigError("--train-cases must be at least 3 (train/val split)")


def run_dir(root: Path, seed: int, variant: str) -> Path:
    return root / "runs" / f"seed{seed}" / variant.replace("+", "-")


def _data(root: Path) -> dict[str, Path]:
    return {"train": root / "data" / "train", "test": root / "data" / "test"}


def write_data(root: Path, s: SitesSettings) -> dict[str, Path]:
    """The shared phantoms (kept when already written with the same size)."""
    from tunepp_deploy.data.phantom import write_phantom_dataset

    paths = _data(root)
    for name, n, seed in (("train", s.train_cases, s.data_seed), ("test", s.test_cases, s.data_seed + 1000)):
        meta = paths[name] / "dataset.json"
        if meta.is_file() and len(json.loads(meta.read_text())["cases"]) == n:
            continue
        write_phantom_dataset(paths[name], n, seed=seed, shape=s.phantom_shape)
    return paths


def _cfg(s: SitesSettings, seed: int, variant: str | None) -> Any:
    """The base's config (``variant`` None: no dropout site) or a variant's fine-tuning config."""
    from tunepp_deploy.config.load import load_config

    sites = [] if variant is None else list(variant_sites(variant))
    cfg = load_config(s.config, {"model.dropout.sites": sites})
    tc = cfg.train
    if variant is None:
        train = tc.model_copy(update={"epochs": s.base_epochs, "iters_per_epoch": s.iters_per_epoch, "seed": seed})
    else:
        train = tc.model_copy(update={"epochs": s.finetune_epochs, "iters_per_epoch": s.iters_per_epoch,
                                      "seed": seed, "lr": tc.lr * s.finetune_lr_scale, "warmup_epochs": 0})
    return cfg.model_copy(update={"train": train})


def base_dir(root: Path, seed: int) -> Path:
    return root / "runs" / f"seed{seed}" / "base"


def task_base(root: Path, s: SitesSettings, seed: int) -> dict[str, Any]:
    """Train one seed's dropout-free base."""
    return _train_once(_cfg(s, seed, None), base_dir(root, seed), _data(root)["train"], None)


def _init_for(root: Path, seed: int, variant: str, out: Path) -> Path:
    """The base's last weights under a config naming the variant's sites (``init.pt`` in the run).

    The trainer refuses an ``init`` checkpoint whose model config differs from the run's, and the
    sites are part of it; but a dropout site holds no weights (the network's state dict is the same
    for every site list), so only the recorded config changes.
    """
    import torch

    from tunepp_deploy.train.checkpoint import read_checkpoint

    path = out / "init.pt"
    if path.is_file():
        return path
    ckpt = read_checkpoint(base_dir(root, seed) / "last.pt")
    ckpt = {k: ckpt[k] for k in ("format", "version", "config", "state_dict") if k in ckpt}
    ckpt["config"]["model"]["dropout"]["sites"] = list(variant_sites(variant))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(ckpt, f), suffix=".pt")
    return path


def task_run(root: Path, s: SitesSettings, seed: int, variant: str) -> dict[str, Any]:
    """Train, predict, score and time one (seed, variant) (module docstring, steps 2-4)."""
    from tunepp_deploy.evaluation.run import predict_dataset
    from tunepp_deploy.predictors.settings import RunOptions

    data = _data(root)
    out = run_dir(root, seed, variant)
    t0 = time.perf_counter()
    info = _train_once(_cfg(s, seed, variant), out, data["train"], _init_for(root, seed, variant, out))
    t1 = time.perf_counter()
    ckpt = out / "best.pt"
    for folder, opts, n in (("det_test", RunOptions(deterministic=True), None), ("mc_test", RunOptions(), s.samples)):
        ran = predict_dataset(ckpt, data["test"], out / folder, samples=n, seed=0 if n else None, backend="torch",
                              device="cpu", use_temperature=False, overwrite=False, threads=1, options=opts)
        if ran.failed:
            raise TuneppError(f"{out / folder}: {len(ran.failed)} case(s) failed: {ran.failed[0][0]}: "
                              f"{ran.failed[0][1]}")
    t2 = time.perf_counter()
    score_run(out, data["test"], s)
    t3 = time.perf_counter()
    timing = time_run(out, data["test"], s)
    return {**info, "seconds_total_task": round(time.perf_counter() - t0, 1), "seconds_predict": round(t2 - t1, 1),
            "seconds_score": round(t3 - t2, 1), "mc_speedup": timing["speedup"]}


def score_run(out: Path, gt: Path, s: SitesSettings) -> Path:
    """``cases.json``: ``{"det": {case: metrics}, "mc": {case: metrics}}`` (:mod:`.fidelity_metrics`;
    the MC rows also rank the epistemic map)."""
    from tunepp_deploy.evaluation.cases import load_pair, pair_cases
    from tunepp_deploy.experiments.fidelity_metrics import det_case_metrics, mc_case_metrics
    from tunepp_deploy.metrics.taus import ranking_metrics

    path = out / "cases.json"
    if path.is_file():
        return path
    k = len(json.loads((gt / "dataset.json").read_text())["classes"])
    body: dict[str, dict[str, dict[str, Any]]] = {"det": {}, "mc": {}}
    for c in pair_cases(out / "det_test", gt):
        d = load_pair(c, k, with_image=False)
        if d.probs is None:
            raise TuneppError(f"{c.seg}: the deterministic output lacks probabilities")
        body["det"][c.name] = det_case_metrics(d.truth, d.spacing, k, d.pred, d.probs, s.rule)
    for c in pair_cases(out / "mc_test", gt):
        m = load_pair(c, k, with_image=False)
        if m.probs is None or "total" not in m.unc or "epistemic" not in m.unc:
            raise TuneppError(f"{c.seg}: the MC output lacks probabilities or the total/epistemic map")
        row = mc_case_metrics(m.truth, m.spacing, k, m.pred, m.probs, m.unc["total"], s.rule)
        row.update({f"{x}_epistemic": v for x, v in ranking_metrics(m.unc["epistemic"], m.pred, m.truth).items()})
        body["mc"][c.name] = row
    write_atomic(path, lambda t: t.write_text(json.dumps(body, indent=1)))
    return path


def _scan_of(image: Path, window: Sequence[int]) -> Any:
    """The centre crop of ``image`` of one window's size (phantom and model grids are equal), so
    the engine and the naive loop both run exactly one window: the naive loop's 25 full passes over
    a whole 8-window phantom take minutes per model on this shared CPU."""
    import numpy as np

    from tunepp_deploy.bench.workload import Scan
    from tunepp_deploy.data.nifti import load_volume

    vol = load_volume(image)
    spacing = tuple(float(z) for z in vol.header.get_zooms()[:3])
    a = vol.array
    lo = [max(0, (n - w) // 2) for n, w in zip(a.shape, window, strict=True)]
    crop = a[tuple(slice(o, o + w) for o, w in zip(lo, window, strict=True))]
    return Scan(np.ascontiguousarray(crop), spacing, vol.affine)  # type: ignore[arg-type]


def time_run(out: Path, gt: Path, s: SitesSettings) -> dict[str, Any]:
    """``timing.json``: MC engine vs the naive loop on the first test volume, this process, one thread
    (minimum over ``time_repeats`` alternated runs), the trunk's FLOP share and the reuse bound."""
    import torch

    from tunepp_deploy.bench.floor import window_flops
    from tunepp_deploy.bench.workload import EagerForward, run_engine, run_naive
    from tunepp_deploy.data.layout import find_cases
    from tunepp_deploy.export.metadata import meta_for
    from tunepp_deploy.export.onnx_export import load_checkpoint_network
    from tunepp_deploy.infer.masks import sample_masks
    from tunepp_deploy.infer.mc import MCSettings
    from tunepp_deploy.infer.runners.torch_runner import TorchRunner

    path = out / "timing.json"
    if path.is_file():
        return json.loads(path.read_text())
    net, cfg = load_checkpoint_network(out / "best.pt")
    meta = meta_for(net, cfg)
    case = find_cases(gt, cfg.data.layout)[0]
    scan = _scan_of(case.image, meta.window)
    mc = MCSettings(samples=s.samples, seed=0, overlap=cfg.infer.overlap, max_batch=cfg.infer.max_batch)
    masks = sample_masks(meta.sites, meta.window, s.samples, mc.seed)
    runner = TorchRunner(net, meta, torch.device("cpu"), amp=False)
    fwd = EagerForward(net, meta, torch.device("cpu"))
    engine_s: list[float] = []
    naive_s: list[float] = []
    with torch.inference_mode():
        for _ in range(max(1, s.time_repeats)):  # A/B alternated: drifting load hits both alike
            naive = run_naive(fwd, scan, masks, mc)
            naive_s.append(naive.total)
            eng = run_engine(runner, scan, masks, mc)
            engine_s.append(eng.total)
    diff = max(float((naive.maps[k].cpu() - eng.maps[k].cpu()).abs().max()) for k in eng.maps)
    flops = window_flops(net, meta.window, meta.in_channels)
    t = flops.trunk_share
    body = {
        "case": case.name, "volume": list(scan.hu.shape), "threads": torch.get_num_threads(), "samples": s.samples,
        "windows": eng.windows,
        "repeats": len(engine_s), "engine_s": engine_s, "naive_s": naive_s,
        "engine_stages_s": eng.stages, "naive_stages_s": naive.stages,
        "speedup": min(naive_s) / min(engine_s), "trunk_flop_share": t,
        "reuse_bound": s.samples / (s.samples * (1.0 - t) + t),
        "max_abs_diff_maps": diff, "loadavg": list(os.getloadavg()),
    }
    write_atomic(path, lambda f: f.write_text(json.dumps(body, indent=1)))
    return body


@contextmanager
def one_thread_env() -> Iterator[None]:
    """Thread variables set to 1 for the spawned workers, restored afterwards (numba refuses a
    changed ``NUMBA_NUM_THREADS`` later in the same process)."""
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    for v in THREAD_VARS:
        os.environ[v] = "1"
    try:
        yield
    finally:
        for v, val in saved.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


class _InlineExecutor(Executor):
    """``jobs=1``: every task in this process on one torch thread (restored on exit), which spares
    the spawned worker its start-up (a fresh interpreter importing torch) and keeps tests short."""

    def __enter__(self) -> _InlineExecutor:
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self._threads)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except Exception as e:  # reported by the caller like a worker's failure
            f.set_exception(e)
        return f


def _executor(jobs: int) -> Executor:
    if jobs == 1:
        return _InlineExecutor()
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker)


def _settings_json(s: SitesSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(s), default=str))


def run_dropout_sites(out: str | Path, s: SitesSettings | None = None, console: Console | None = None,
                      only: Sequence[tuple[int, str]] | None = None) -> dict[str, Any]:
    """Run (or resume) the study into ``out`` and write its summary (module docstring). ``only``:
    restrict this call to those (seed, variant) runs (the summary covers whatever finished)."""
    from tunepp_deploy.experiments.dropout_sites_summary import write_summary

    s = s or SitesSettings()
    console = console or Console()
    check_variants(s)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    settings_file = root / "settings.json"
    mine = _settings_json(s)
    if settings_file.is_file():
        theirs = json.loads(settings_file.read_text())
        if {k: v for k, v in theirs.items() if k != "jobs"} != {k: v for k, v in mine.items() if k != "jobs"}:
            raise TuneppError(f"{root}: holds a study with other settings ({settings_file}); choose another --out")
    write_atomic(settings_file, lambda t: t.write_text(json.dumps(mine, indent=2)))
    t0 = time.perf_counter()
    write_data(root, s)
    runs = list(only) if only is not None else [(seed, v) for seed in range(s.seeds) for v in s.variants]
    console.print(f"data under {root / 'data'}; {len(runs)} run(s) on {s.jobs} worker(s), one thread each")
    by_seed: dict[int, list[str]] = {}
    for seed, v in runs:
        by_seed.setdefault(seed, []).append(v)
    timings: dict[str, Any] = {}
    errors: dict[str, str] = {}
    with one_thread_env(), _executor(s.jobs) as pool:
        pending: dict[Future, tuple[int, str | None]] = {
            pool.submit(task_base, root, s, seed): (seed, None) for seed in by_seed}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                seed, v = pending.pop(f)
                key = f"seed{seed}/{v or 'base'}"
                try:
                    timings[key] = f.result()
                    extra = f", MC speed-up {timings[key]['mc_speedup']:.2f}x" if v else ""
                    console.print(f"{key}: done ({timings[key].get('seconds_total_task', timings[key]['seconds']):.0f}"
                                  f" s{extra})")
                except Exception as e:  # one run's failure is reported, the others go on
                    errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    console.print(f"[red]{key}: failed: {errors[key]}")
                    continue
                if v is None:
                    for name in by_seed[seed]:
                        pending[pool.submit(task_run, root, s, seed, name)] = (seed, name)
    return write_summary(root, s, timings, errors, time.perf_counter() - t0)


__all__ = ["DEFAULT_VARIANTS", "SitesSettings", "base_dir", "check_variants", "run_dir", "run_dropout_sites",
           "score_run", "task_base", "task_run", "time_run", "variant_sites", "write_data"]
