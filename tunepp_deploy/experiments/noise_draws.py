"""How many logit-noise draws T the sampled aleatoric map needs: T vs error on one fixed case.

One TUNE++ model, one scan, S dropout samples with fixed masks; the maps are computed for each T in
a ladder and compared with a reference run at a large T (the same masks, independent noise seeds per
repeat so the error includes the draw-to-draw spread). Reported per T: mean and max absolute error of
the aleatoric / epistemic / total maps over the predicted foreground (where the maps matter; the
background is trivially certain), the foreground means, and the MC-inference seconds. ``total``
converges fastest (it depends on the predictive mean alone, averaged over S x T draws); the split
moves ``sum_k Var[p_k] / T`` from aleatoric to epistemic (the T-draw Gini estimate is biased low by
that much), so the aleatoric error shrinks like 1/T.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunepp_deploy.data.nifti import load_volume, write_atomic
from tunepp_deploy.data.preprocess import preprocess_image

MAPS = ("aleatoric", "epistemic", "total")


def run_noise_draws(
    model: Path, image: Path, out: Path, draws: Sequence[int] = (0, 2, 4, 8, 16, 32), reference: int = 256,
    samples: int = 25, repeats: int = 3, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the ladder (module docstring); writes ``out/noise_draws.json`` and ``.md``; returns the results."""
    from tunepp_deploy.predictors.open import open_predictor
    from tunepp_deploy.predictors.settings import RunOptions

    results: dict[str, Any] = {"model": str(model), "image": str(image), "samples": samples,
                               "reference_draws": reference, "repeats": repeats, "rows": []}
    with open_predictor(model, "tunepp", "auto", "cpu", RunOptions(samples=samples)) as pred:
        vol = load_volume(image)
        pre = preprocess_image(vol.array, vol.spacing, pred.spacing, pred.intensity)
        base = pred.mc

        def run(t: int, seed_shift: int) -> tuple[dict[str, np.ndarray], float, np.ndarray]:
            pred.mc = replace(base, noise_draws=t, seed=base.seed + seed_shift)  # new noise draws, same masks
            t0 = time.perf_counter()
            p = pred.predict(pre)
            return ({m: p.maps[m].numpy() for m in MAPS}, time.perf_counter() - t0, p.probs.argmax(0).numpy())

        ref, ref_s, labels = run(reference, 10_000)
        fg = labels > 0
        log(f"reference T={reference}: {ref_s:.1f} s, foreground {int(fg.sum())} voxels")
        results["reference_foreground_means"] = {m: float(ref[m][fg].mean()) for m in MAPS}
        for t in draws:
            errs: dict[str, list[float]] = {f"{m}_{k}": [] for m in MAPS for k in ("mae", "max")}
            means: dict[str, list[float]] = {m: [] for m in MAPS}
            secs = []
            for r in range(repeats):
                got, s, _ = run(t, r)
                secs.append(s)
                for m in MAPS:
                    d = np.abs(got[m][fg] - ref[m][fg])
                    errs[f"{m}_mae"].append(float(d.mean()))
                    errs[f"{m}_max"].append(float(d.max()))
                    means[m].append(float(got[m][fg].mean()))
            row = {"draws": t, "seconds": float(np.median(secs)),
                   **{k: [float(np.mean(v)), float(np.std(v))] for k, v in errs.items()},
                   **{f"{m}_fg_mean": float(np.mean(v)) for m, v in means.items()}}
            results["rows"].append(row)
            log(f"T={t:3d}: aleatoric MAE {row['aleatoric_mae'][0]:.2e}, total MAE {row['total_mae'][0]:.2e}, "
                f"{row['seconds']:.1f} s")
        pred.mc = base
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    write_atomic(out / "noise_draws.json", lambda tmp: tmp.write_text(text))
    md = markdown(results)
    write_atomic(out / "noise_draws.md", lambda tmp: tmp.write_text(md))
    return results


def markdown(results: dict[str, Any]) -> str:
    """The ladder as a table (mean +- sd over repeats of the foreground MAE against the reference)."""
    ref = results["reference_foreground_means"]
    lines = [
        f"# Logit-noise draws T vs error (S = {results['samples']}, reference T = {results['reference_draws']}, "
        f"{results['repeats']} noise seeds per T)",
        "",
        f"Model `{results['model']}`, scan `{results['image']}`. Errors are over the predicted foreground, "
        f"against the reference run. Reference foreground means: aleatoric {ref['aleatoric']:.4g}, "
        f"epistemic {ref['epistemic']:.4g}, total {ref['total']:.4g}.",
        "",
        "| T | aleatoric MAE | aleatoric max | epistemic MAE | total MAE | aleatoric fg mean | MC seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['draws']} | {r['aleatoric_mae'][0]:.2e} ± {r['aleatoric_mae'][1]:.1e} | {r['aleatoric_max'][0]:.3f} "
            f"| {r['epistemic_mae'][0]:.2e} | {r['total_mae'][0]:.2e} | {r['aleatoric_fg_mean']:.4g} "
            f"| {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    run_noise_draws(a.model, a.image, a.out, samples=a.samples, repeats=a.repeats)


if __name__ == "__main__":
    main()


__all__ = ["markdown", "run_noise_draws"]
