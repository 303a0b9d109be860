"""Does the TUPA gate's value track the prediction's error? ``model.gate`` learned vs supervised.

Per gate and seed: train the phantom config briefly (:func:`tunepp_deploy.train.trainer.train`, one
thread), then on held-out phantoms (another data seed) run the network deterministically (dropout
off) on training-sized windows and record every TUPA block's fusion weight ``w_t`` on its own token
grid. The prediction's error is pooled to the same grid (per token: the fraction of its cell's voxels
whose arg-max differs from the label), so each block gives a Spearman rho between ``w_t`` and the
error over all held-out tokens. A run's score is the mean rho over its blocks (and the finest decoder
block's, next to the output); seeds give mean +- 95% t-interval. As a reference, the same rho for the
final softmax's own uncertainty ``1 - max p`` pooled to each grid: what a map computed *after* the
prediction achieves.

The learned gate's ``w_t`` is monotone in its ``sigma`` (and the supervised gate's in its ``u``), so
the rho of ``w_t`` is also that of the gate's uncertainty. Written to ``docs/results/tupa_gate.json``
(per run and per block), ``.png`` (binned error against ``w_t`` for the finest decoder block).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tunepp_deploy.config.load import load_config
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.losses.gate import pool_to
from tunepp_deploy.metrics.intervals import mean_ci95
from tunepp_deploy.model import TUNEPP, build_network
from tunepp_deploy.model.blocks.tupa import TUPABlock

GATES = ("learned", "supervised")


@contextmanager
def recording_gates(net: TUNEPP) -> Iterator[dict[str, list[Tensor]]]:
    """While active, every TUPA block's forward stores its ``w_t`` map under its module name."""
    store: dict[str, list[Tensor]] = {}
    blocks = [(n, m) for n, m in net.named_modules() if isinstance(m, TUPABlock)]

    def wrap(name: str, block: TUPABlock) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            out, internals = block.forward_with_internals(x)
            store.setdefault(name, []).append(internals.w_topology.detach())
            return out

        return forward

    for name, block in blocks:
        block.forward = wrap(name, block)  # type: ignore[method-assign]
    try:
        yield store
    finally:
        for _, block in blocks:
            del block.forward


def window_starts(size: int, window: int) -> list[int]:
    """Window origins covering ``size`` with the fewest windows, the last flush with the end."""
    if window > size:
        raise TuneppError(f"window {window} is larger than the volume side {size}")
    n = math.ceil(size / window)
    return sorted({round(i * (size - window) / max(n - 1, 1)) for i in range(n)})


@torch.no_grad()
def token_table(
    net: TUNEPP, image: np.ndarray, label: np.ndarray, window: Sequence[int]
) -> dict[str, dict[str, np.ndarray]]:
    """Per block: ``w`` (gate), ``err`` (arg-max error rate), ``ref`` (1 - max p) on its token grid,
    flattened over every window of one case; plus ``"_pred"``: the case's arg-max (last window wins)."""
    net.eval()
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    pred_full = np.zeros(label.shape, dtype=np.int64)
    starts = [window_starts(s, w) for s, w in zip(label.shape, window, strict=True)]
    for z0 in starts[0]:
        for y0 in starts[1]:
            for x0 in starts[2]:
                sl = (slice(z0, z0 + window[0]), slice(y0, y0 + window[1]), slice(x0, x0 + window[2]))
                x = torch.from_numpy(np.ascontiguousarray(image[sl]))[None, None].float()
                lab = torch.from_numpy(label[sl].astype(np.int64))[None]
                with recording_gates(net) as store:
                    logits = net(x).logits.float()
                p = torch.softmax(logits, 1)
                pred = p.argmax(1)
                pred_full[sl] = pred[0].numpy()
                err = (pred != lab).float().unsqueeze(1)
                ref = (1.0 - p.max(1).values).unsqueeze(1)
                for name, maps in store.items():
                    w = maps[0]
                    grid = tuple(int(s) for s in w.shape[2:])
                    cols = out.setdefault(name, {"w": [], "err": [], "ref": []})
                    cols["w"].append(w.flatten().numpy())
                    cols["err"].append(pool_to(err, grid).flatten().numpy())
                    cols["ref"].append(pool_to(ref, grid).flatten().numpy())
    table: dict[str, dict[str, np.ndarray]] = {n: {k: np.concatenate(v) for k, v in c.items()} for n, c in out.items()}
    table["_pred"] = {"pred": pred_full}
    return table


def block_label(name: str) -> str:
    """``encoder.2.0`` -> ``enc2.0``, ``decoder.0.0`` -> ``dec0.0``."""
    part, stage, idx = name.split(".")
    return f"{part[:3]}{stage}.{idx}"


def score_tables(tables: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, float]]:
    """Spearman rho of ``w`` and of ``ref`` with ``err`` per block over all cases' tokens."""
    from scipy.stats import spearmanr

    names = [n for n in tables[0] if n != "_pred"]
    result: dict[str, dict[str, float]] = {}
    for n in names:
        w = np.concatenate([t[n]["w"] for t in tables])
        err = np.concatenate([t[n]["err"] for t in tables])
        ref = np.concatenate([t[n]["ref"] for t in tables])
        ok = err.std() > 0 and w.std() > 0
        result[block_label(n)] = {
            "rho_gate": float(spearmanr(w, err)[0]) if ok else float("nan"),
            "rho_ref": float(spearmanr(ref, err)[0]) if err.std() > 0 else float("nan"),
            "tokens": int(w.size), "error_tokens": int((err > 0).sum()),
            "w_mean": float(w.mean()), "w_min": float(w.min()), "w_max": float(w.max()),
            "w_mean_right": float(w[err == 0].mean()) if (err == 0).any() else float("nan"),
            "w_mean_wrong": float(w[err > 0].mean()) if (err > 0).any() else float("nan"),
        }
    return result


def binned_curve(w: np.ndarray, err: np.ndarray, bins: int = 10) -> tuple[list[float], list[float]]:
    """Mean ``w`` and mean ``err`` within ``bins`` quantile bins of ``w`` (ties share a bin)."""
    order = np.argsort(w, kind="stable")
    chunks = [c for c in np.array_split(order, bins) if c.size]
    return [float(w[c].mean()) for c in chunks], [float(err[c].mean()) for c in chunks]


def score_model(net: TUNEPP, cfg: TuneppConfig, test_cases: list[Any]) -> dict[str, Any]:
    """Held-out Dice and the per-block rho table of a trained network (module docstring)."""
    from tunepp_deploy.metrics.overlap import dice_per_class

    tables = [token_table(net, c.image, c.label, cfg.data.crop_size) for c in test_cases]
    dice = [float(np.nanmean(dice_per_class(t["_pred"]["pred"], c.label, cfg.data.num_classes)))
            for t, c in zip(tables, test_cases, strict=True)]
    blocks = score_tables(tables)
    finest = "dec0.0" if "dec0.0" in blocks else sorted(blocks)[-1]
    name = next(n for n in tables[0] if n != "_pred" and block_label(n) == finest)
    curve = binned_curve(np.concatenate([t[name]["w"] for t in tables]),
                         np.concatenate([t[name]["err"] for t in tables]))
    fin = [b for b in blocks.values() if not math.isnan(b["rho_gate"])]
    return {"heldout_dice": float(np.mean(dice)),
            "rho_gate_mean": float(np.mean([b["rho_gate"] for b in fin])) if fin else float("nan"),
            "rho_ref_mean": float(np.mean([b["rho_ref"] for b in blocks.values()])),
            "finest_block": finest, "rho_gate_finest": blocks[finest]["rho_gate"],
            "rho_ref_finest": blocks[finest]["rho_ref"], "curve_finest": curve, "blocks": blocks}


def run_one(base: TuneppConfig, gate: str, seed: int, data: Path, test_cases: list[Any], work: Path,
            epochs: int, iters: int, console: Any = None) -> dict[str, Any]:
    """Train one (gate, seed) run into ``work`` and score it on the loaded held-out cases."""
    from tunepp_deploy.train.checkpoint import load_weights, read_checkpoint
    from tunepp_deploy.train.trainer import train

    cfg = base.model_copy(update={
        "model": base.model.model_copy(update={"gate": gate}),
        "train": base.train.model_copy(update={"seed": seed, "epochs": epochs, "iters_per_epoch": iters,
                                               "val_every": epochs, "amp": False}),
    })
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = train(cfg, work, data_dir=data, device="cpu", console=console)
    train_cpu = time.process_time() - cpu0
    net = build_network(cfg)
    load_weights(net, read_checkpoint(work / "last.pt"), str(work / "last.pt"))
    scored = score_model(net, cfg, test_cases)
    return {"gate": gate, "seed": seed, "steps": epochs * iters, "train_cpu_s": round(train_cpu, 1),
            "total_cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - wall0, 1),
            "val_dice": res.best_dice, **scored}


def score_checkpoints(paths: Sequence[Path], out: Path, test_cases: int = 3, test_seed: int = 9000,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score existing checkpoints (e.g. the ``last.pt`` of runs stopped early) on fresh held-out phantoms.

    Gate, seed and schedule come from each checkpoint's config; ``steps`` is the epochs it finished.
    """
    from tunepp_deploy.data.dataset import load_case
    from tunepp_deploy.data.layout import find_cases
    from tunepp_deploy.data.phantom import write_phantom_dataset
    from tunepp_deploy.train.checkpoint import checkpoint_config, load_weights, read_checkpoint

    runs: list[dict[str, Any]] = []
    cfgs: list[TuneppConfig] = []
    with tempfile.TemporaryDirectory(prefix="tunepp_gate_") as tmp:
        held = write_phantom_dataset(Path(tmp) / "test", test_cases, seed=test_seed)
        cases: list[Any] | None = None
        for p in paths:
            ckpt = read_checkpoint(p)
            cfg = checkpoint_config(ckpt, str(p))
            if cases is None:
                cases = [load_case(c, cfg.data) for c in find_cases(held, cfg.data.layout)]
            net = build_network(cfg)
            load_weights(net, ckpt, str(p))
            cpu0 = time.process_time()
            scored = score_model(net, cfg, cases)
            r = {"gate": cfg.model.gate, "seed": cfg.train.seed, "checkpoint": str(p),
                 "steps": int(ckpt["epoch"]) * cfg.train.iters_per_epoch,
                 "scheduled_steps": cfg.train.epochs * cfg.train.iters_per_epoch,
                 "score_cpu_s": round(time.process_time() - cpu0, 1), **scored}
            runs.append(r)
            cfgs.append(cfg)
            log(f"{r['gate']} seed {r['seed']} ({r['steps']} steps): held-out Dice {r['heldout_dice']:.3f}; "
                f"rho mean {r['rho_gate_mean']:.3f}, {r['finest_block']} {r['rho_gate_finest']:.3f} "
                f"(softmax ref {r['rho_ref_finest']:.3f})")
    c0 = cfgs[0]
    result = {"config": c0.name, "crop": list(c0.data.crop_size), "epochs": c0.train.epochs,
              "iters_per_epoch": c0.train.iters_per_epoch, "test_cases": test_cases, "test_seed": test_seed,
              "threads": torch.get_num_threads(), "runs": runs, "summary": summarise(runs)}
    write_result(result, out)
    return result


def ci95(values: Sequence[float]) -> list[float]:
    """``[mean, half-width]`` of the 95% Student-t interval (half-width NaN for one value)."""
    mean, half, _ = mean_ci95(values)
    return [mean, float("nan") if half is None else half]


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per gate: mean +- 95% CI over seeds of each run-level score, and per block."""
    out: dict[str, Any] = {}
    for gate in GATES:
        rs = [r for r in runs if r["gate"] == gate]
        if not rs:
            continue
        keys = ("rho_gate_mean", "rho_ref_mean", "rho_gate_finest", "rho_ref_finest", "heldout_dice", "val_dice")
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs],
                                 **{k: ci95([r[k] for r in rs]) for k in keys if all(k in r for r in rs)}}
        entry["blocks"] = {b: {k: ci95([r["blocks"][b][k] for r in rs]) for k in ("rho_gate", "rho_ref", "w_mean",
                                                                             "w_min", "w_max")}
                           for b in rs[0]["blocks"]}
        out[gate] = entry
    paired = paired_difference(runs)
    if paired:
        out["paired_supervised_minus_learned"] = paired
    return out


PAIRED_KEYS = ("rho_gate_mean", "rho_gate_finest", "heldout_dice")


def paired_difference(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Supervised minus learned, per seed both gates ran, mean +- 95% CI: seeds share the data order
    and the initialisation of everything but the gate, so the paired interval is the tighter test."""
    by = {(r["gate"], r["seed"]): r for r in runs}
    seeds = sorted({s for g, s in by if g == "supervised" and ("learned", s) in by})
    if not seeds:
        return {}
    diffs = {k: [by[("supervised", s)][k] - by[("learned", s)][k] for s in seeds] for k in PAIRED_KEYS}
    return {"seeds": seeds, **{k: ci95(v) for k, v in diffs.items()}, "per_seed": diffs}


def plot(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Binned prediction error against ``w_t`` (finest decoder block), one panel per gate, a line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GATES), figsize=(10, 4), sharey=True)
    for ax, gate in zip(axes, GATES, strict=True):
        for r in (r for r in runs if r["gate"] == gate):
            w, e = r["curve_finest"]
            ax.plot(w, e, "o-", label=f"seed {r['seed']} (rho {r['rho_gate_finest']:.2f})")
        ax.set_title(f"gate = {gate}: block {runs[0]['finest_block']}")
        ax.set_xlabel("w_t (mean of a decile of tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out arg-max error rate in those tokens")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)


def run_experiment(
    out: Path, seeds: Sequence[int] = (0, 1, 2), gates: Sequence[str] = GATES, epochs: int = 5, iters: int = 30,
    crop: Sequence[int] = (32, 32, 32), train_cases: int = 6, test_cases: int = 3, test_seed: int = 9000,
    config: str = "phantom", log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole measurement (module docstring); ``out/tupa_gate.json`` and ``.png``."""
    from rich.console import Console

    from tunepp_deploy.data.dataset import load_case
    from tunepp_deploy.data.layout import find_cases
    from tunepp_deploy.data.phantom import write_phantom_dataset

    unknown = [g for g in gates if g not in GATES]
    if unknown:
        raise TuneppError(f"tupa gate experiment: unknown gate(s) {unknown}; choose from {list(GATES)}")
    base = load_config(config, {"data.crop_size": list(crop)})
    runs: list[dict[str, Any]] = []
    settings = {"config": config, "crop": list(crop), "epochs": epochs, "iters_per_epoch": iters,
                "train_cases": train_cases, "test_cases": test_cases, "test_seed": test_seed,
                "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="tunepp_gate_") as tmp:
        data = write_phantom_dataset(Path(tmp) / "train", train_cases, seed=0)
        held = write_phantom_dataset(Path(tmp) / "test", test_cases, seed=test_seed)
        cases = [load_case(c, base.data) for c in find_cases(held, base.data.layout)]
        for seed in seeds:
            for gate in gates:
                r = run_one(base, gate, seed, data, cases, Path(tmp) / f"{gate}_s{seed}", epochs, iters,
                            console=Console(quiet=True))
                runs.append(r)
                log(f"{gate} seed {seed}: {r['steps']} steps, {r['total_cpu_s']} CPU s; held-out Dice "
                    f"{r['heldout_dice']:.3f}; rho(w_t, error) mean over blocks {r['rho_gate_mean']:.3f}, "
                    f"{r['finest_block']} {r['rho_gate_finest']:.3f} (softmax ref {r['rho_ref_finest']:.3f})")
                # written after every run, so a process stopped part-way keeps the runs it finished
                write_result({**settings, "runs": runs, "summary": summarise(runs)}, out)
    return {**settings, "runs": runs, "summary": summarise(runs)}


def write_result(result: dict[str, Any], out: Path) -> None:
    """``out/tupa_gate.json`` and ``out/tupa_gate.png`` (the figure needs both gates' runs)."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    write_atomic(out / "tupa_gate.json", lambda t: t.write_text(text))
    if all(any(r["gate"] == g for r in result["runs"]) for g in GATES):
        plot(result["runs"], out / "tupa_gate.png")


def merge_results(paths: Sequence[Path], out: Path) -> dict[str, Any]:
    """One result from several partial ones (e.g. one process per gate) with the same settings."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    settings = [{k: v for k, v in p.items() if k not in ("runs", "summary")} for p in parts]
    if any(s != settings[0] for s in settings):
        raise TuneppError("tupa gate experiment: the partial results were run with different settings")
    runs = [r for p in parts for r in p["runs"]]
    result = {**settings[0], "runs": runs, "summary": summarise(runs)}
    write_result(result, out)
    return result


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--gates", nargs="+", default=list(GATES))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crop", type=int, nargs=3, default=[32, 32, 32])
    ap.add_argument("--train-cases", type=int, default=6)
    ap.add_argument("--test-cases", type=int, default=3)
    ap.add_argument("--merge", type=Path, nargs="+", help="only merge these partial tupa_gate.json files into --out")
    ap.add_argument("--score", type=Path, nargs="+", help="only score these checkpoints (no training)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.merge:
        merge_results(a.merge, a.out)
    elif a.score:
        score_checkpoints(a.score, a.out)
    else:
        run_experiment(a.out, a.seeds, a.gates, a.epochs, a.iters, crop=a.crop, train_cases=a.train_cases,
                       test_cases=a.test_cases)


if __name__ == "__main__":
    main()


__all__ = [
    "GATES",
    "binned_curve",
    "block_label",
    "ci95",
    "merge_results",
    "paired_difference",
    "plot",
    "recording_gates",
    "run_experiment",
    "run_one",
    "score_checkpoints",
    "score_model",
    "score_tables",
    "summarise",
    "token_table",
    "window_starts",
    "write_result",
]
