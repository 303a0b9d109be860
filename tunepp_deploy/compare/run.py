"""Run every method on one phantom split: train or load (:mod:`.models`), predict (:mod:`.methods`),
score each held-out case (:mod:`.evaluate`), time one whole volume per backend.

Rows (all on the same config, split, crops, test cases, window/overlap and seeds):
``tunepp_mc``, ``saliency_fusion``, ``saliency_sal_only``, ``segwithu``, ``vi_<arch>`` — what each
uncertainty map is, is in :mod:`.methods`. ``saliency_sal_only`` is the saliency variance alone from
the same run as ``saliency_fusion``, and ``tunepp_mc``'s map is exactly the predictive variance the
fusion starts from (same masks, same blend), so the table shows predictive-only vs saliency-only vs
fused side by side; the saliency run's own predictive-variance map is scored too (``maps`` in the
JSON) as a check.

Latency = one whole preprocessed test volume (the first test case) from the volume in to the maps
out on the model grid, including all S samples, the median of ``repeats`` runs, per backend (torch
and ONNX Runtime, ``threads`` intra-op threads). The evaluation pass warms torch up; ONNX Runtime
gets one untimed warm-up run, which is also compared with the torch probabilities
(``ort_max_abs_diff``: same masks / noise, so only float differences are expected).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from tunepp_deploy.compare.evaluate import case_metrics, summarise
from tunepp_deploy.compare.methods import Method, saliency_method, segwithu_method, tunepp_method, vi_method
from tunepp_deploy.compare.models import ModelRequest, prepare_models
from tunepp_deploy.compare.progress import case_line
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import LoadedCase, load_case, split_cases
from tunepp_deploy.data.layout import find_cases
from tunepp_deploy.methods.saliency.fusion import DEFAULT_FUSION_WEIGHT
from tunepp_deploy.methods.saliency.gradcam import DEFAULT_TARGET, resolve_target
from tunepp_deploy.model import build_network


@dataclass
class CompareSettings:
    """Everything ``tunepp compare`` takes besides the config, data and output folder."""

    samples: int = 10
    repeats: int = 3
    models: ModelRequest = field(default_factory=ModelRequest)
    saliency_target: str = DEFAULT_TARGET
    fusion_weight: float = DEFAULT_FUSION_WEIGHT


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _evaluate(method: Method, cases: list[LoadedCase], console: Console) -> tuple[dict[str, list[dict]], np.ndarray]:
    """Per-case metrics of every map of ``method``; also the first case's probabilities (ORT check)."""
    per_map: dict[str, list[dict[str, float]]] = {}
    first: np.ndarray | None = None
    primary = next(iter(method.rows))
    for i, c in enumerate(cases):
        t0 = time.perf_counter()
        probs, maps = method.torch(c.image)
        for key, u in maps.items():
            per_map.setdefault(key, []).append(case_metrics(probs, u, c.label))
        first = probs if first is None else first
        case_line(console, method.rows[primary], i + 1, len(cases), c.name, per_map[primary][-1],
                  time.perf_counter() - t0)
    assert first is not None
    return per_map, first


def _latency(method: Method, probe: np.ndarray, probs: np.ndarray, repeats: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {"latency_torch_s": _median_seconds(lambda: method.torch(probe), repeats),
                                    "latency_ort_s": None, "ort_max_abs_diff": None}
    if method.ort is not None:
        ort_probs, _ = method.ort(probe)  # warm-up, and the parity check
        out["ort_max_abs_diff"] = float(np.abs(ort_probs - probs).max())
        out["latency_ort_s"] = _median_seconds(lambda: method.ort(probe), repeats)  # type: ignore[misc]
    return out


def run_compare(cfg: TuneppConfig, data: Path, out: Path, settings: CompareSettings | None = None,
                console: Console | None = None) -> dict[str, Any]:
    """Run the comparison; returns (and :func:`tunepp_deploy.compare.report.write_report` writes) the results."""
    settings = settings or CompareSettings()
    console = console or Console()
    torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    out.mkdir(parents=True, exist_ok=True)
    train_paths, test_paths = split_cases(find_cases(data, cfg.data.layout), cfg.data.val_fraction, cfg.train.seed)
    train_cases = [load_case(c, cfg.data) for c in train_paths]
    test_cases = [load_case(c, cfg.data) for c in test_paths]
    resolve_target(build_network(cfg), settings.saliency_target)  # a wrong layer name fails before any training
    models = prepare_models(cfg, data, out, train_cases, settings.models, console)
    s = settings.samples
    results: dict[str, Any] = {
        "config": cfg.name, "samples": s, "train_cases": len(train_cases),
        "test_cases": [c.name for c in test_cases], "volume_shapes": [list(c.image.shape) for c in test_cases],
        "latency_volume": test_cases[0].name, "window": list(cfg.window), "overlap": cfg.infer.overlap,
        "threads": threads, "models": models.paths, "training": models.info, "methods": {}, "maps": {},
        "notes": {},
    }
    with ExitStack() as stack:
        console.print("exporting TUNE++, SegWithU and the variational network to ONNX")
        methods = [
            tunepp_method(models, cfg, s, out, threads, stack),
            saliency_method(models, cfg, s, stack, settings.saliency_target, settings.fusion_weight),
            segwithu_method(models, cfg, out, threads, stack),
            vi_method(models, cfg, s, out, threads, stack),
        ]
        for m in methods:
            console.print(f"[bold]evaluating {m.name}[/] (S = {m.samples}) on {len(test_cases)} test case(s)")
            per_map, probs0 = _evaluate(m, test_cases, console)
            lat = _latency(m, test_cases[0].image, probs0, settings.repeats)
            results["maps"][m.name] = {k: {q: summarise(v)[q] for q in ("auroc", "aurc", "u_ece_fg")}
                                       for k, v in per_map.items()}
            for key, row_name in m.rows.items():
                row = summarise(per_map[key])
                row.update(samples=m.samples, train_seconds=m.train_seconds, **lat, **m.extra)
                results["methods"][row_name] = row
                results["notes"][row_name] = m.notes[row_name]
    return results


__all__ = ["CompareSettings", "run_compare"]
