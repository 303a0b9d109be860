"""``tunepp demo``: the whole pipeline on generated phantoms, on a CPU, in one command.

1. phantoms: ``cases - 1`` training cases and one held-out case drawn from another seed (so it was
   never seen in training), with its ground truth for a Dice / Betti comparison;
2. training with the library's :func:`~tunepp_deploy.train.trainer.train` (the config's schedule,
   ``--epochs`` / ``--iters-per-epoch`` to shorten it);
3. ONNX export of ``best.pt`` (the deployment artefact);
4. MC-25 inference with ONNX Runtime on the held-out case: NIfTI maps + JSON report;
5. a PNG with axial slices of scan / segmentation / ground truth / epistemic / aleatoric / total.

Every step calls the same library functions as the individual CLI commands.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from tunepp_deploy.config import load_config
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.nifti import load_volume, write_atomic
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.errors import TuneppError


@dataclass
class DemoResult:
    """Where the demo put things and how long each step took."""

    out: Path
    checkpoint: Path
    onnx: Path
    report: Path
    figure: Path
    maps: dict[str, Path]
    dice: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)


def _dice(pred: np.ndarray, true: np.ndarray, classes: list[str]) -> dict[str, float]:
    out = {}
    for i, name in enumerate(classes[1:], start=1):
        p, t = pred == i, true == i
        denom = p.sum() + t.sum()
        out[name] = round(float(2 * (p & t).sum() / denom), 4) if denom else 1.0
    return out


def write_figure(scan: np.ndarray, seg: np.ndarray, truth: np.ndarray, maps: dict[str, np.ndarray], path: Path) -> Path:
    """Axial slices (through the segmentation's centre) of scan, labels and the three maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fg = np.argwhere(seg > 0)
    zs = sorted({int(np.percentile(fg[:, 2], q)) for q in (30, 50, 70)}) if len(fg) else [scan.shape[2] // 2]
    cols = [("scan", scan, "gray"), ("segmentation", seg, "tab10"), ("ground truth", truth, "tab10"),
            ("epistemic", maps["epistemic"], "magma"), ("aleatoric", maps["aleatoric"], "magma"),
            ("total", maps["total"], "magma")]
    fig, axes = plt.subplots(len(zs), len(cols), figsize=(2.6 * len(cols), 2.6 * len(zs)), squeeze=False)
    vmax = float(max(np.percentile(maps["total"], 99.9), 1e-6))
    for r, z in enumerate(zs):
        for c, (title, vol, cmap) in enumerate(cols):
            ax = axes[r][c]
            kw = {"vmin": 0, "vmax": 9, "interpolation": "nearest"} if cmap == "tab10" else {}
            if cmap == "magma":
                kw = {"vmin": 0.0, "vmax": vmax}
            sl = vol[:, :, z].T
            if cmap == "tab10":  # labels over the scan, background transparent
                ax.imshow(scan[:, :, z].T, origin="lower", cmap="gray")
                sl = np.ma.masked_equal(sl, 0)
            im = ax.imshow(sl, origin="lower", cmap=cmap, **kw)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=9)
            if cmap == "magma" and r == len(zs) - 1:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        axes[r][0].text(2, 2, f"z={z}", color="yellow", fontsize=8)
    fig.suptitle("TUNE++ MC-dropout (S=25, ONNX Runtime): held-out phantom", fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    plt.close(fig)
    return path


def run_demo(
    out: str | Path = "demo_out",
    config: str | Path = "phantom",
    cases: int = 12,
    epochs: int | None = None,
    iters_per_epoch: int | None = None,
    samples: int = 25,
    seed: int = 0,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo into ``out`` (module docstring). Re-running reuses nothing: use a fresh ``out``."""
    from tunepp_deploy.export.onnx_export import export_checkpoint
    from tunepp_deploy.infer.case import CaseOptions, output_paths, run_paths
    from tunepp_deploy.predictors.open import open_predictor
    from tunepp_deploy.predictors.settings import RunOptions
    from tunepp_deploy.train.trainer import train

    console = console or Console()
    if cases < 3:
        raise TuneppError("--cases must be at least 3 (two to train/validate, one held out)")
    root = Path(out)
    if (root / "run" / "last.pt").exists():
        raise TuneppError(f"{root}: already holds a demo run; choose another --out or delete it")
    cfg: TuneppConfig = load_config(config)
    if iters_per_epoch is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"iters_per_epoch": iters_per_epoch})})
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal t
        seconds[step] = round(time.perf_counter() - t, 1)
        console.print(f"[green]✓[/] {step} ({seconds[step]:.0f} s)")
        t = time.perf_counter()

    data, held = root / "data", root / "heldout"
    write_phantom_dataset(data, cases - 1, seed=seed)
    write_phantom_dataset(held, 1, seed=seed + 1000)
    lap(f"{cases - 1} training phantoms + 1 held-out phantom")

    res = train(cfg, root / "run", data_dir=data, epochs=epochs, device="cpu", console=console)
    if res.interrupted:
        raise TuneppError("training interrupted")
    ckpt = root / "run" / "best.pt"
    lap(f"training ({res.epochs_done} epochs, best validation Dice {res.best_dice:.3f})")

    onnx_path = root / "model.onnx"
    export_checkpoint(ckpt, onnx_path)
    lap("ONNX export")

    pred = root / "pred"
    image = held / "imagesTr" / "phantom_000_0000.nii.gz"
    with open_predictor(onnx_path, backend="ort", device="cpu", options=RunOptions(samples=samples)) as predictor:
        run_paths(image, pred, predictor, CaseOptions(overwrite=True))
        paths = output_paths(pred, "phantom_000", predictor.map_names)
    lap(f"MC-{samples} inference with ONNX Runtime")

    seg = load_volume(paths["seg"]).array.astype(np.uint8)
    truth = load_volume(held / "labelsTr" / "phantom_000.nii.gz").array.astype(np.uint8)
    maps = {m: load_volume(paths[m]).array for m in ("epistemic", "aleatoric", "total")}
    dice = _dice(seg, truth, list(cfg.data.classes))
    report = json.loads(paths["report"].read_text())
    report["demo_ground_truth_dice"] = dice
    write_atomic(paths["report"], lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    figure = write_figure(load_volume(image).array, seg, truth, maps, root / "demo.png")
    lap("figure")
    return DemoResult(root, ckpt, onnx_path, paths["report"], figure,
                      {k: v for k, v in paths.items() if k != "report"}, dice, seconds)


__all__ = ["DemoResult", "run_demo", "write_figure"]
