r"""INT8 Q/DQ against fp32: speed of one MC call and accuracy on whole volumes, on each CPU runtime.

``python -m tunepp_deploy.bench.int8 --fp32 model.onnx --int8 default=model_int8.onnx [--int8 name=path ...]
--data TEST_DATASET [--threads 2] [--samples 25] [--repeats 7] --out DIR``

* **Speed**: one MC call (1 window x S mask rows, the trunk once and the head on S rows) per
  runtime x graph: ONNX Runtime (CPU provider) and OpenVINO (CPU plugin, ``INFERENCE_PRECISION_HINT``
  pinned to f32, so the int8 graph runs int8 only where its Q/DQ nodes say) on the fp32 graph and on
  each int8 graph. All configurations are opened in this process, each is warmed up (``--warmup``
  calls, which also compiles OpenVINO's static shape), then the timed calls are interleaved round-robin
  (one call of every configuration per round) so a load change on the shared machine hits all of them
  alike; medians of ``--repeats`` rounds, the thread count set on every session. Ratios are fp32 / int8
  of the same runtime in the same run.
* **Accuracy**: every scan of ``--data`` (a dataset with ``labelsTr``, on the model's spacing — the
  phantom generator's) goes through the MC engine (:func:`~tunepp_deploy.infer.mc.mc_predict`, S
  samples, the config's overlap) with the **same masks and logit-noise draws** on every runner; each
  map (mean probabilities, epistemic variance, aleatoric, total, predictive entropy, mutual information)
  is compared with ONNX Runtime fp32 (max and mean |diff|), labels (arg-max of the mean probabilities)
  by agreement, and each runner's labels against the truth by Dice per class.

Writes ``int8.json`` (every figure, the machine, versions, threads) and ``int8_tables.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tunepp_deploy.bench.machine import read_cpu_facts
from tunepp_deploy.calibrate.int8 import preprocess_for_model, scan_paths
from tunepp_deploy.export.metadata import ModelMeta, quantization_of

from tunepp_deploy.data.layout import case_name
from tunepp_deploy.data.nifti import load_volume, write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.runners.load import read_onnx_meta
from tunepp_deploy.metrics.intervals import format_mean_ci, mean_ci95
from tunepp_deploy.metrics.overlap import dice_per_class

CPU = torch.device("cpu")
MAPS = ("mean_probs", "epistemic", "aleatoric", "total", "predictive_entropy", "mutual_information")
REFERENCE = "ort/fp32"



def open_runners(fp32: Path, int8: dict[str, Path], threads: int, openvino: bool, bf16: bool = False
                 ) -> dict[str, Runner]:
    """``runtime/graph`` -> runner: ORT and (when installed and asked) OpenVINO on fp32 and every int8 graph;
    ``bf16`` adds OpenVINO's bf16 hint on the fp32 graph (the other low-precision choice, for comparison)."""
    from tunepp_deploy.infer.runners.ort_runner import OrtRunner

    _, meta = read_onnx_meta(fp32)
    graphs = {"fp32": fp32, **{f"int8-{k}": v for k, v in int8.items()}}
    runners: dict[str, Runner] = {}
    for name, path in graphs.items():
        runners[f"ort/{name}"] = OrtRunner(str(path), read_onnx_meta(path)[1], CPU, threads)
    if openvino:
        from tunepp_deploy.infer.runners.openvino_runner import OpenVinoRunner

        for name, path in graphs.items():
            runners[f"openvino/{name}"] = OpenVinoRunner(str(path), read_onnx_meta(path)[1], CPU, threads,
                                                         precision="fp32" if name == "fp32" else "int8")
        if bf16:
            runners["openvino/bf16"] = OpenVinoRunner(str(fp32), meta, CPU, threads, precision="bf16")
    for r in runners.values():
        if r.meta.window != meta.window or r.meta.mask_names != meta.mask_names:
            raise TuneppError(f"{r.describe()}: the int8 graph is not a quantization of {fp32}")
    return runners


def time_calls(runners: dict[str, Runner], x: torch.Tensor, masks: Sequence[torch.Tensor], warmup: int,
               repeats: int) -> dict[str, dict[str, Any]]:
    """Median seconds of one call per runner: warm-up each, then ``repeats`` interleaved rounds (module doc)."""
    for r in runners.values():
        for _ in range(warmup):
            r(x, masks)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, r in runners.items():
            t = time.perf_counter()
            r(x, masks)
            times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "calls": len(v)}
            for k, v in times.items()}


def conv_precisions(runner: Runner, rows: int) -> dict[str, int]:
    """Runtime precision -> count of OpenVINO's executed convolution layers for a 1 x ``rows`` call: what
    actually runs (``I8``/``U8`` = int8 kernels), independent of the hint the runner sets."""
    rt = runner.compiled(1, rows).get_runtime_model()  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    for op in rt.get_ordered_ops():
        info = op.get_rt_info()
        if "Convolution" in info["layerType"].astype(str):
            prec = info["runtimePrecision"].astype(str)
            counts[prec] = counts.get(prec, 0) + 1
    return counts


def _maps(result) -> dict[str, np.ndarray]:
    m = result.maps
    out = {name: getattr(m, name) for name in MAPS}
    return {k: v.detach().to("cpu", torch.float32).numpy() for k, v in out.items()}


def t_interval(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, 95% t-interval half-width (None below two finite values) and count, as JSON."""
    mean, half, n = mean_ci95(values)
    return {"mean": mean, "half_width": half, "n": n}


def accuracy(runners: dict[str, Runner], meta: ModelMeta, data: Path, samples: int, seed: int,
             log: Callable[[str], None], cases: int | None = None) -> dict[str, Any]:
    """Per case and runner: maps against :data:`REFERENCE`, label agreement, Dice per class vs truth."""
    scans = scan_paths(data)[:cases]
    if not scans:
        raise TuneppError(f"{data}: no scans")
    masks = sample_masks(meta.sites, meta.window, samples, seed=seed)
    settings = MCSettings(samples=samples, seed=seed, overlap=meta.config.infer.overlap)
    K = meta.num_classes
    results = []
    for scan in scans:
        name = case_name(scan)
        label_path = scan.parent.parent / "labelsTr" / f"{name}.nii.gz"
        truth = load_volume(label_path).array.astype(np.int64)
        vol = torch.from_numpy(preprocess_for_model(scan, meta))
        if tuple(vol.shape[1:]) != truth.shape:
            raise TuneppError(f"{scan}: model grid {tuple(vol.shape[1:])} is not the label grid {truth.shape}; "
                              "this bench compares on the model grid (use scans on the model's spacing)")
        maps, secs = {}, {}
        for k, r in runners.items():
            t = time.perf_counter()
            maps[k] = _maps(mc_predict(vol, r, masks, settings))
            secs[k] = time.perf_counter() - t
        ref = maps[REFERENCE]
        ref_labels = ref["mean_probs"].argmax(0)
        entry: dict[str, Any] = {"case": name, "voxels": int(truth.size), "runners": {}}
        for k, m in maps.items():
            labels = m["mean_probs"].argmax(0)
            diffs = {mp: {"max": float(np.abs(m[mp] - ref[mp]).max()), "mean": float(np.abs(m[mp] - ref[mp]).mean())}
                     for mp in MAPS}
            if not all(np.isfinite(m[mp]).all() for mp in MAPS):
                raise TuneppError(f"{k}: non-finite maps on {name}")
            entry["runners"][k] = {
                "seconds": secs[k],
                "label_agreement": float((labels == ref_labels).mean()),
                "labels_changed": int((labels != ref_labels).sum()),
                "dice": [float(d) for d in dice_per_class(labels, truth, K)],
                "diff_vs_reference": diffs,
            }
        log(f"{name}: " + ", ".join(f"{k} agree {v['label_agreement']:.5f}" for k, v in entry["runners"].items()))
        results.append(entry)
    summary: dict[str, Any] = {}
    classes = meta.classes[1:]
    for k in runners:
        rs = [c["runners"][k] for c in results]
        ref_rs = [c["runners"][REFERENCE] for c in results]
        summary[k] = {
            "label_agreement": t_interval([r["label_agreement"] for r in rs]),
            "label_agreement_min": min(r["label_agreement"] for r in rs),
            "dice": {c: t_interval([r["dice"][i] for r in rs]) for i, c in enumerate(classes)},
            "dice_mean": t_interval([float(np.nanmean(r["dice"])) for r in rs]),
            "dice_mean_minus_reference": t_interval([float(np.nanmean(r["dice"]) - np.nanmean(q["dice"]))
                                                     for r, q in zip(rs, ref_rs, strict=True)]),
            "diff_vs_reference": {mp: {"max": max(r["diff_vs_reference"][mp]["max"] for r in rs),
                                       "mean": float(np.mean([r["diff_vs_reference"][mp]["mean"] for r in rs]))}
                                  for mp in MAPS},
        }
    return {"cases": results, "summary": summary, "samples": samples, "mask_seed": seed, "classes": classes}


def run(fp32: Path, int8: dict[str, Path], data: Path, threads: int, samples: int, repeats: int, warmup: int,
        openvino: bool, seed: int, log: Callable[[str], None] = print, bf16: bool = False,
        accuracy_on: Sequence[str] | None = None, cases: int | None = None) -> dict[str, Any]:
    """Open every runner once, then the speed table, then the accuracy table (module docstring)."""
    torch.set_num_threads(threads)  # the engine's torch-side work (softmax, stitching) uses the same count
    _, meta = read_onnx_meta(fp32)
    runners = open_runners(fp32, int8, threads, openvino, bf16)
    failed = {}
    for k in [k for k in runners if k.startswith("openvino/")]:
        try:  # compile the call's static shape now: a graph OpenVINO cannot compile is recorded, not fatal
            runners[k].compiled(1, samples)  # type: ignore[attr-defined]
        except RuntimeError as e:
            failed[k] = str(e)[:300]
            log(f"  {k}: {failed[k]}")
            del runners[k]
    scan = scan_paths(data)[0]
    vol = preprocess_for_model(scan, meta)
    x = torch.from_numpy(np.ascontiguousarray(vol[(slice(None), *(slice(0, w) for w in meta.window))]))[None]
    masks = sample_masks(meta.sites, meta.window, samples, seed=seed).rows(range(samples), 1, starts=[(0, 0, 0)])
    log(f"speed: 1 window x {samples} rows, {threads} threads, {warmup} warm-up + {repeats} interleaved rounds")
    speed = time_calls(runners, x, masks, warmup, repeats)
    ratios = {}
    for k, v in speed.items():
        runtime, graph = k.split("/", 1)
        if graph != "fp32":
            base = speed[f"{runtime}/fp32"]["median_s"]
            ratios[k] = {"speedup_vs_fp32": base / v["median_s"], "fp32_median_s": base, "int8_median_s": v["median_s"]}
    for k, v in speed.items():
        log(f"  {k}: {v['median_s']:.3f} s" + (f" ({ratios[k]['speedup_vs_fp32']:.2f}x fp32)" if k in ratios else ""))
    chosen = {k: r for k, r in runners.items() if accuracy_on is None or k in accuracy_on or k == REFERENCE}
    unknown = set(accuracy_on or ()) - set(runners) - set(failed)  # a graph OpenVINO could not compile is recorded
    if unknown:
        raise TuneppError(f"--accuracy-on: no runner {sorted(unknown)} (have {sorted(runners)})")
    executed = {k: conv_precisions(r, samples) for k, r in runners.items() if k.startswith("openvino/")}
    for k, v in executed.items():
        log(f"  {k}: convolutions run at {v}")
    acc = accuracy(chosen, meta, data, samples, seed, log, cases)
    versions = {"onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__}
    if openvino:
        from tunepp_deploy.infer.runners.openvino_runner import openvino_version

        versions["openvino"] = openvino_version()
    quant = {k: quantization_of({p.key: p.value for p in read_onnx_meta(v)[0].metadata_props}) for k, v in int8.items()}
    return {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": read_cpu_facts().model_name, "logical_cpus": os.cpu_count(), "shared": True},
        "versions": versions,
        "threads": threads,
        "fp32": str(fp32),
        "int8": {k: str(v) for k, v in int8.items()},
        "quantization": quant,
        "runners": {k: r.describe() for k, r in runners.items()},
        "openvino_conv_runtime_precisions": executed,
        "openvino_compile_failures": failed,
        "speed": {"call": f"1 window x {samples} rows", "warmup": warmup, "repeats": repeats, "per_runner": speed,
                  "ratios": ratios},
        "accuracy": acc,
    }


def tables(res: dict[str, Any]) -> str:
    """The markdown tables of :func:`run`'s result."""
    lines = [f"Speed: one MC call ({res['speed']['call']}), {res['threads']} threads, median of "
             f"{res['speed']['repeats']} interleaved rounds after {res['speed']['warmup']} warm-up calls.", "",
             "| runtime / graph | median s | min s | max s | fp32 / this |", "|---|---:|---:|---:|---:|"]
    for k, v in res["speed"]["per_runner"].items():
        ratio = res["speed"]["ratios"].get(k, {}).get("speedup_vs_fp32")
        lines.append(f"| {k} | {v['median_s']:.3f} | {v['min_s']:.3f} | {v['max_s']:.3f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} |")
    acc = res["accuracy"]
    n = len(acc["cases"])
    lines += ["", f"Accuracy: {n} test volumes, MC-{acc['samples']} (mask seed {acc['mask_seed']}, same masks "
              f"and noise draws on every runner), reference {REFERENCE}; mean ± 95% t-interval over volumes.", "",
              "| runtime / graph | label agreement | min | Dice mean | Dice − ref | "
              + " | ".join(f"Dice {c}" for c in acc["classes"]) + " |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(acc["classes"])]

    def ci(d: dict[str, float], f: str = ".4f") -> str:
        return format_mean_ci(d["mean"], d["half_width"], d["n"], f)

    for k, s in acc["summary"].items():
        lines.append(f"| {k} | {ci(s['label_agreement'], '.5f')} | {s['label_agreement_min']:.5f} | "
                     f"{ci(s['dice_mean'])} | {ci(s['dice_mean_minus_reference'])} | "
                     + " | ".join(ci(s["dice"][c]) for c in acc["classes"]) + " |")
    lines += ["", "Max (over volumes and voxels) / mean |diff| of each map against the reference:", "",
              "| runtime / graph | " + " | ".join(MAPS) + " |", "|---|" + "---:|" * len(MAPS)]
    for k, s in acc["summary"].items():
        if k == REFERENCE:
            continue
        d = s["diff_vs_reference"]
        lines.append(f"| {k} | " + " | ".join(f"{d[m]['max']:.2e} / {d[m]['mean']:.2e}" for m in MAPS) + " |")
    return "\n".join(lines) + "\n"


def _named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--int8 wants NAME=PATH, got {text!r}")
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--fp32", type=Path, required=True, help="Float ONNX file (tunepp export onnx).")
    ap.add_argument("--int8", type=_named, action="append", required=True, help="NAME=PATH of a Q/DQ graph.")
    ap.add_argument("--data", type=Path, required=True, help="Test dataset (imagesTr/ + labelsTr/).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="Seed of the MC masks and noise draws.")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--accuracy-on", nargs="+", help="Runners (runtime/graph) in the accuracy table "
                    "(default all; the ort/fp32 reference always).")
    ap.add_argument("--cases", type=int, help="Only the first N test volumes.")
    ap.add_argument("--bf16", action="store_true", help="Also OpenVINO's bf16 hint on the fp32 graph.")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be at least 5 (medians of fewer calls are noise on a shared machine)")
    t0 = time.perf_counter()
    try:
        res = run(args.fp32, dict(args.int8), args.data, args.threads, args.samples, args.repeats, args.warmup,
                  not args.no_openvino, args.seed, bf16=args.bf16, accuracy_on=args.accuracy_on, cases=args.cases)
    except TuneppError as e:
        print(f"error: {e}")
        return 2
    res["wall_s"] = time.perf_counter() - t0
    out: Path = args.out
    write_atomic(out / "int8.json", lambda tmp: tmp.write_text(json.dumps(res, indent=2)))
    md = tables(res)
    write_atomic(out / "int8_tables.md", lambda tmp: tmp.write_text(md))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
