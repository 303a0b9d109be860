"""Fidelity experiment v2: does a topology loss remove topological errors, compared over seeds with
no topology loss and with post-processing, and does the uncertainty find errors, failures and shifts?

Protocol (``tunepp experiment fidelity --out DIR``; every number comes from files it writes; the
definitions and the reasons behind them: docs/results/fidelity_v2.md):

1. Data, shared by every run: ``train`` contact phantoms (the solid and hollow organs touch, so the
   junction weights are exercised; split into train/val by each run's seed), ``test`` phantoms from
   another data seed, and ``shift_*`` phantoms per shift (noise, intensity, unseen shape) from a third.
   Test cases never take part in checkpoint choice (that is validation Dice, on train-split cases).
2. Per training seed: a **base** run without the topology term (``base_epochs``), then each variant
   **fine-tunes** the base's last weights for ``finetune_epochs`` with a fresh optimiser: ``none``
   (lambda1 = 0: same extra iterations, no topology term — the fair baseline), ``dt`` (the seed's
   voxel-weighted DT loss), ``component`` (the component-level DT loss), ``ph`` / ``ph_full``
   (cubical persistent homology on 2x-pooled / full-resolution maps, + clDice on the tube). The
   checkpoint is the fine-tune's best validation Dice.
   Warm-up then fine-tune is also the cheapest schedule that trains 4 variants x 5 seeds on 2 cores.
3. Per run: a deterministic pass (dropout off) on the test cases — segmentation and topology
   metrics, the post-processing baseline on that segmentation, and the single-pass max-softmax /
   entropy baselines; for the first ``mc_seeds`` seeds also MC inference (``samples``) on the test
   and shifted cases — the MC uncertainty, triage and OOD (:mod:`.fidelity_metrics`). MC is the
   expensive part (one MC-8 case took 15 s on one thread here, a deterministic pass 1.8 s), which is
   what bounds ``mc_seeds`` and ``samples`` on a 2-core CPU.
4. :mod:`.fidelity_summary` turns ``runs/seed*/VARIANT/cases.json`` into ``fidelity.json`` +
   ``fidelity.md``: mean +- 95% t-interval over seeds, paired differences against ``none``.

Runs execute in ``jobs`` worker processes on one thread each; every stage skips work whose outputs
exist, so an interrupted experiment resumes where it stopped (``--resume``).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.experiments.fidelity_metrics import FailureRule

# loss overrides per variant (on top of the config's loss; lambda1 stays the config's unless 0 here)
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"lambda1": 0.0},
    "dt": {"topo_mode": "voxel"},
    "component": {"topo_mode": "component"},
    # PH on 2x average-pooled probability maps (what the first v2 run used: 0.67 s per step at
    # initialisation) and at full resolution (exact above a 1e-3 floor: 0.15 s per step on trained
    # maps; the pooled gradient's cosine with the full one is only 0.5-0.7, docs/persistence_loss.md)
    "ph": {"topo_mode": "persistence", "ph_downsample": 2, "cldice_class": 4, "cldice_weight": 0.3},
    "ph_full": {"topo_mode": "persistence", "ph_downsample": 1, "cldice_class": 4, "cldice_weight": 0.3},
}


@dataclass(frozen=True)
class FidelitySettings:
    """Sizes and schedule of the experiment (CLI flags map 1:1)."""

    config: Path = Path("configs/phantom.yaml")
    seeds: int = 5
    variants: tuple[str, ...] = tuple(VARIANTS)
    base_epochs: int = 7
    finetune_epochs: int = 3
    iters_per_epoch: int = 20
    finetune_lr_scale: float = 1.0 / 3.0
    train_cases: int = 16
    test_cases: int = 20
    shift_cases: int = 7
    samples: int = 4
    mc_seeds: int = 3
    jobs: int = 2
    data_seed: int = 0
    budget: float = 0.25
    contact: bool = True
    rule: FailureRule = field(default_factory=FailureRule)


def _datasets(root: Path, s: FidelitySettings) -> dict[str, Path]:
    from tunepp_deploy.data.shift import SHIFTS

    d = root / "data"
    return {"train": d / "train", "test": d / "test", **{f"shift_{k}": d / f"shift_{k}" for k in SHIFTS}}


def write_data(root: Path, s: FidelitySettings) -> dict[str, Path]:
    """The shared data sets (kept when already written with the same settings)."""
    from tunepp_deploy.data.phantom import write_phantom_dataset
    from tunepp_deploy.data.shift import SHIFTS, write_shifted_dataset

    paths = _datasets(root, s)
    sizes = {"train": s.train_cases, "test": s.test_cases, **{f"shift_{k}": s.shift_cases for k in SHIFTS}}
    for name, path in paths.items():
        meta = path / "dataset.json"
        if meta.is_file() and len(json.loads(meta.read_text())["cases"]) == sizes[name]:
            continue
        if name == "train":
            write_phantom_dataset(path, s.train_cases, seed=s.data_seed, contact=s.contact)
        elif name == "test":
            write_phantom_dataset(path, s.test_cases, seed=s.data_seed + 1000, contact=s.contact)
        else:
            write_shifted_dataset(path, s.shift_cases, name.removeprefix("shift_"), seed=s.data_seed + 2000,
                                  contact=s.contact)
    return paths


def _cfg(s: FidelitySettings, seed: int, variant: str | None) -> Any:
    from tunepp_deploy.config.load import load_config

    cfg = load_config(s.config)
    tc = cfg.train
    if variant is None:  # the base: no topology term
        loss = cfg.loss.model_copy(update={"lambda1": 0.0})
        train = tc.model_copy(update={"epochs": s.base_epochs, "iters_per_epoch": s.iters_per_epoch, "seed": seed})
    else:
        loss = cfg.loss.model_copy(update=VARIANTS[variant])
        train = tc.model_copy(update={"epochs": s.finetune_epochs, "iters_per_epoch": s.iters_per_epoch,
                                      "seed": seed, "lr": tc.lr * s.finetune_lr_scale, "warmup_epochs": 0})
    return cfg.model_copy(update={"loss": loss, "train": train})


def run_dir(root: Path, seed: int, variant: str) -> Path:
    return root / "runs" / f"seed{seed}" / variant


def _train_once(cfg: Any, out: Path, data: Path, init: Path | None) -> dict[str, Any]:
    from tunepp_deploy.train.trainer import train

    done = out / "train_done.json"
    if done.is_file():
        return json.loads(done.read_text())
    resume = (out / "last.pt").is_file()
    t0 = time.perf_counter()
    res = train(cfg, out, data_dir=data, device="cpu", console=Console(quiet=True), resume=resume, init=init)
    if res.interrupted:
        raise TuneppError(f"{out}: training interrupted")
    info = {"seconds": round(time.perf_counter() - t0, 1), "best_val_dice": res.best_dice,
            "best_epoch": res.best_epoch, "epochs": res.epochs_done}
    write_atomic(done, lambda t: t.write_text(json.dumps(info)))
    return info


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def task_base(root: Path, s: FidelitySettings, seed: int) -> dict[str, Any]:
    """Train one seed's base (no topology term)."""
    return _train_once(_cfg(s, seed, None), run_dir(root, seed, "base"), _datasets(root, s)["train"], None)


def task_variant(root: Path, s: FidelitySettings, seed: int, variant: str) -> dict[str, Any]:
    """Fine-tune, predict and score one (seed, variant); returns its timing."""
    from tunepp_deploy.evaluation.run import predict_dataset
    from tunepp_deploy.predictors.settings import RunOptions

    data = _datasets(root, s)
    out = run_dir(root, seed, variant)
    t0 = time.perf_counter()
    info = _train_once(_cfg(s, seed, variant), out, data["train"], run_dir(root, seed, "base") / "last.pt")
    t1 = time.perf_counter()
    ckpt = out / "best.pt"
    ran = predict_dataset(ckpt, data["test"], out / "det_test", backend="torch", device="cpu", use_temperature=False,
                          overwrite=False, threads=1, options=RunOptions(deterministic=True))
    if ran.failed:
        raise TuneppError(f"{out}: deterministic pass failed on {ran.failed[0][0]}: {ran.failed[0][1]}")
    if seed < s.mc_seeds:
        for name, path in data.items():
            if name == "train":
                continue
            ran = predict_dataset(ckpt, path, out / f"mc_{name}", samples=s.samples, seed=0, backend="torch",
                                  device="cpu", use_temperature=False, overwrite=False, threads=1)
            if ran.failed:
                raise TuneppError(f"{out}: {len(ran.failed)} {name} case(s) failed: {ran.failed[0][0]}: "
                                  f"{ran.failed[0][1]}")
    t2 = time.perf_counter()
    score_run(out, data, s, mc=seed < s.mc_seeds)
    return {**info, "seconds_finetune": round(t1 - t0, 1), "seconds_predict": round(t2 - t1, 1),
            "seconds_score": round(time.perf_counter() - t2, 1)}


def score_run(out: Path, data: dict[str, Path], s: FidelitySettings, mc: bool) -> Path:
    """``cases.json`` of one run: ``{"det": {"test": {case: metrics}}, "mc": {"test": ..., "shift_*": ...}}``
    (:mod:`.fidelity_metrics`; ``mc`` only for the MC seeds)."""
    from tunepp_deploy.evaluation.cases import load_pair, pair_cases
    from tunepp_deploy.experiments.fidelity_metrics import det_case_metrics, mc_case_metrics
    from tunepp_deploy.postprocess.topology import betti_prior_from_dataset

    path = out / "cases.json"
    if path.is_file():
        return path
    body: dict[str, dict[str, dict[str, Any]]] = {"det": {}, "mc": {}}
    for name, gt in data.items():
        if name == "train" or (name != "test" and not mc):
            continue
        meta = json.loads((gt / "dataset.json").read_text())
        classes = list(meta["classes"])
        k = len(classes)
        if name == "test":
            rows = {}
            for c in pair_cases(out / "det_test", gt):
                d = load_pair(c, k, with_image=False)
                if d.probs is None:
                    raise TuneppError(f"{c.seg}: the deterministic output lacks probabilities")
                rows[c.name] = det_case_metrics(d.truth, d.spacing, k, d.pred, d.probs, s.rule,
                                                prior=betti_prior_from_dataset(meta, c.name, classes))
            body["det"]["test"] = rows
        if mc:
            rows = {}
            for c in pair_cases(out / f"mc_{name}", gt):
                m = load_pair(c, k, with_image=False)
                if m.probs is None or "total" not in m.unc:
                    raise TuneppError(f"{c.seg}: the MC output lacks probabilities or the total map")
                rows[c.name] = mc_case_metrics(m.truth, m.spacing, k, m.pred, m.probs, m.unc["total"], s.rule)
            body["mc"][name] = rows
    write_atomic(path, lambda t: t.write_text(json.dumps(body, indent=1)))
    return path


def run_fidelity(out: str | Path, s: FidelitySettings | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``out`` and write its summary (module docstring)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tunepp_deploy.experiments.fidelity_summary import write_summary

    s = s or FidelitySettings()
    console = console or Console()
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown:
        raise TuneppError(f"unknown variant(s) {unknown}: use {', '.join(VARIANTS)}")
    if s.train_cases < 3:
        raise TuneppError("--train-cases must be at least 3")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    settings_file = root / "settings.json"
    asked = s.variants  # what this call runs; the summary covers every variant of the folder
    mine = json.loads(json.dumps(asdict(s), default=str))
    if settings_file.is_file():  # variants may be added to an experiment and the worker count changed
        theirs = json.loads(settings_file.read_text())
        free = ("variants", "jobs")
        if {k: v for k, v in theirs.items() if k not in free} != {k: v for k, v in mine.items() if k not in free}:
            raise TuneppError(f"{root}: holds an experiment with other settings ({settings_file}); choose another "
                              "--out")
        known = [v for v in theirs.get("variants", []) if v not in s.variants]
        if known:  # keep reporting the variants run before
            s = replace(s, variants=(*known, *s.variants))
            mine = json.loads(json.dumps(asdict(s), default=str))
    write_atomic(settings_file, lambda t: t.write_text(json.dumps(mine, indent=2)))
    t0 = time.perf_counter()
    write_data(root, s)
    console.print(f"data under {root / 'data'}; {s.seeds} seeds x {len(s.variants)} variants on {s.jobs} worker(s)")
    thread_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    saved = {v: os.environ.get(v) for v in thread_vars}
    for var in thread_vars:
        os.environ[var] = "1"  # inherited by the spawned workers (one thread each); restored below
    timings: dict[str, Any] = {}
    errors: dict[str, str] = {}
    total = s.seeds * (1 + len(asked))
    with ProcessPoolExecutor(s.jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool, \
            Progress(TextColumn("[bold]fidelity"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console) as prog:
        bar = prog.add_task("runs", total=total)
        pending: dict[Future, tuple[int, str]] = {
            pool.submit(task_base, root, s, seed): (seed, "base") for seed in range(s.seeds)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                seed, what = pending.pop(f)
                key = f"seed{seed}/{what}"
                try:
                    timings[key] = f.result()
                    prog.console.print(f"{key}: done ({timings[key].get('seconds', 0):.0f} s training)")
                except Exception as e:  # one run's failure is reported, the others go on
                    errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    prog.console.print(f"[red]{key}: failed: {errors[key]}")
                    if what == "base":
                        prog.advance(bar, len(asked))
                prog.advance(bar)
                if what == "base" and key not in errors:
                    for v in asked:
                        pending[pool.submit(task_variant, root, s, seed, v)] = (seed, v)
    for var, val in saved.items():  # numba refuses a changed NUMBA_NUM_THREADS later in this process
        if val is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = val
    seconds = time.perf_counter() - t0
    return write_summary(root, s, timings, errors, seconds)


__all__ = ["VARIANTS", "FidelitySettings", "run_dir", "run_fidelity", "score_run", "task_base", "task_variant",
           "write_data"]
