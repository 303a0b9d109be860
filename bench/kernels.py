"""Benchmark the topology kernels against scipy, seung-lab edt, cc3d, scikit-image, GUDHI and cripser.

Every number is a median of ``repeats`` timed calls after one untimed warm-up call (which also
pays numba's compile or cache-load cost), and every ratio compares implementations timed in the
same run on the same volume, so machine load shifts both sides alike. seung-lab ``edt`` gets the
same thread count as numba. Betti numbers against GUDHI / cripser are only timed on volumes of at
most 96^3 voxels (GUDHI needs seconds there) and the results are checked to be identical.

    python -m tunepp_deploy.bench.kernels --out DIR [--sizes 96x96x96,256x256x128] [--repeats 5]

writes ``DIR/kernels.json``, ``DIR/kernels.md`` (a table) and ``DIR/kernels.png`` (a plot).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

BETTI_MAX_VOXELS = 96**3


def phantom_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Thresholded smoothed noise: blobs with handles and cavities, roughly 30% foreground."""
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=max(2.0, min(shape) / 24))
    return f > 0.5 * f.std()


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after one untimed warm-up, and the last result."""
    out = fn()  # warm-up: JIT compile / cache load, allocator, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _betti_persistence(mask: np.ndarray, tool: str) -> tuple[int, int, int]:
    """Betti numbers from top-cell (T-construction) persistence: classes born at 0 alive at 0.5."""
    cells = np.pad(np.where(mask, 0.0, 1.0), 1, constant_values=1.0)
    if tool == "gudhi":
        import gudhi

        cc = gudhi.CubicalComplex(top_dimensional_cells=cells)
        cc.persistence(homology_coeff_field=2, min_persistence=0)
        ivs = [cc.persistence_intervals_in_dimension(d) for d in range(3)]
        return tuple(int(np.sum((iv[:, 0] <= 0) & (iv[:, 1] > 0.5))) if len(iv) else 0 for iv in ivs)  # type: ignore[return-value]
    import cripser

    ph = cripser.computePH_T(cells, maxdim=2)
    return tuple(int(np.sum((ph[:, 0] == d) & (ph[:, 1] <= 0) & (ph[:, 2] > 0.5))) for d in range(3))  # type: ignore[return-value]


def run_kernel_bench(sizes: Sequence[tuple[int, int, int]], repeats: int = 5,
                     out_dir: str | Path = "bench_out") -> dict[str, Any]:
    """Time every available implementation per size; write JSON, Markdown and PNG into ``out_dir``."""
    import numba
    from tunepp_deploy.kernels import (
        available_backends,
        betti_numbers,
        connected_components,
        distance_transform,
        euler_characteristic,
    )

    threads = numba.get_num_threads()
    avail = available_backends()
    ours = [b for b in ("numba", "numba-cuda", "cupy") if (avail[b][0] and b != "numba-cuda") or
            (b == "numba-cuda" and avail[b][0] and "simulator" not in avail[b][1])]
    rows: list[dict[str, Any]] = []

    def add(size: str, kernel: str, impl: str, seconds: float, ref: str, note: str = "") -> None:
        rows.append({"size": size, "kernel": kernel, "impl": impl, "seconds": seconds, "baseline": ref, "note": note})

    for shape in sizes:
        size = "x".join(map(str, shape))
        mask = phantom_volume(shape)
        m8 = np.ascontiguousarray(mask, dtype=np.uint8)

        # --- EDT -------------------------------------------------------------------------------
        ref_edt = None
        for b in ours:
            arg = _to_device(m8, b)
            t, out = median_time(lambda b=b, arg=arg: _sync_for(b, distance_transform(arg, backend=b)), repeats)
            add(size, "edt", f"tunepp {b}", t, "")
            ref_edt = _host(out) if b == "numba" else ref_edt
        t, sp = median_time(lambda mask=mask: ndi.distance_transform_edt(mask), repeats)
        add(size, "edt", "scipy.ndimage", t, "", f"max |diff| {float(np.abs(sp - ref_edt).max()):.2e}")
        try:
            import edt as seung

            t, se = median_time(lambda m8=m8: seung.edt(m8, parallel=threads), repeats)
            diff = float(np.abs(se - ref_edt).max())
            add(size, "edt", f"seung-lab edt ({threads} thr)", t, "", f"max |diff| {diff:.2e}")
        except ImportError:
            pass

        # --- connected components (26) -----------------------------------------------------------
        counts = {}
        for b in ours:
            arg = _to_device(m8, b)
            t, (_, n) = median_time(lambda b=b, arg=arg: connected_components(arg, 26, backend=b), repeats)
            add(size, "ccl26", f"tunepp {b}", t, "")
            counts[b] = n
        try:
            import cc3d

            t, (_, n) = median_time(
                lambda m8=m8: cc3d.connected_components(m8, connectivity=26, return_N=True), repeats)
            add(size, "ccl26", "cc3d", t, "", f"count {'equal' if n == counts['numba'] else 'DIFFERS'}")
        except ImportError:
            pass
        st = ndi.generate_binary_structure(3, 3)
        t, (_, n) = median_time(lambda mask=mask, st=st: ndi.label(mask, st), repeats)
        add(size, "ccl26", "scipy.ndimage", t, "", f"count {'equal' if n == counts['numba'] else 'DIFFERS'}")

        # --- Euler characteristic (26) -----------------------------------------------------------
        chis = {}
        for b in ours:
            arg = _to_device(m8, b)
            t, chis[b] = median_time(lambda b=b, arg=arg: euler_characteristic(arg, 26, backend=b), repeats)
            add(size, "euler26", f"tunepp {b}", t, "")
        try:
            from skimage.measure import euler_number

            t, e = median_time(lambda mask=mask: euler_number(mask, connectivity=3), max(1, min(repeats, 3)))
            add(size, "euler26", "skimage euler_number", t, "", "equal" if e == chis["numba"] else "DIFFERS")
        except ImportError:
            pass

        # --- Betti numbers ----------------------------------------------------------------------
        bettis = {}
        for b in ours:
            arg = _to_device(m8, b)
            t, bettis[b] = median_time(lambda b=b, arg=arg: betti_numbers(arg, backend=b), repeats)
            add(size, "betti", f"tunepp {b}", t, "", str(bettis[b]))
        if mask.size <= BETTI_MAX_VOXELS:
            for tool in ("gudhi", "cripser"):
                try:
                    t, bt = median_time(lambda tool=tool, mask=mask: _betti_persistence(mask, tool), 1)
                except ImportError:
                    continue
                add(size, "betti", tool, t, "", f"{bt} {'equal' if bt == bettis['numba'] else 'DIFFERS'}")

    # ratios against tunepp numba in the same size/kernel group
    for r in rows:
        base = next(x for x in rows
                    if x["size"] == r["size"] and x["kernel"] == r["kernel"] and x["impl"] == "tunepp numba")
        r["baseline"] = "tunepp numba"
        r["ratio_vs_numba"] = r["seconds"] / base["seconds"]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "numba_threads": threads},
        "backends": {k: list(v) for k, v in avail.items()},
        "repeats": repeats,
        "rows": rows,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(result, indent=2))
    (out / "kernels.md").write_text(_markdown(result))
    _plot(rows, out / "kernels.png")
    return result


def _sync_for(backend: str, out: Any) -> Any:
    if backend == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()
    elif backend == "numba-cuda":
        from numba import cuda

        cuda.synchronize()
    return out


def _to_device(m8: np.ndarray, backend: str) -> Any:
    if backend == "cupy":
        import cupy

        return cupy.asarray(m8)
    if backend == "numba-cuda":
        from numba import cuda

        return cuda.to_device(m8)
    return m8


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Topology kernel benchmark",
        "",
        f"{m['platform']}, numba threads: {m['numba_threads']}; median of {result['repeats']} runs after a warm-up;",
        "ratio = time / time of `tunepp numba` for the same kernel and size (> 1: slower than ours).",
        "",
        "| size | kernel | implementation | median s | ratio vs tunepp numba | check |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['kernel']} | {r['impl']} | {r['seconds']:.4f} | "
                     f"{r['ratio_vs_numba']:.2f} | {r['note']} |")
    skipped = [f"{k}: {v[1]}" for k, v in result["backends"].items() if not v[0]]
    if skipped:
        lines += ["", "Backends not measured here: " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    # one row per kernel, one column per size (smallest first), so a reader compares along a row
    kernels = sorted({r["kernel"] for r in rows})
    sizes = sorted({r["size"] for r in rows}, key=lambda t: int(np.prod([int(v) for v in t.split("x")])))
    fig, axes = plt.subplots(len(kernels), len(sizes), figsize=(4.2 * len(sizes), 1.9 * len(kernels)),
                             squeeze=False)
    for i, kernel in enumerate(kernels):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            rs = [r for r in rows if r["size"] == size and r["kernel"] == kernel]
            if not rs:
                ax.axis("off")
                continue
            ax.barh([r["impl"] for r in rs], [r["seconds"] for r in rs],
                    color=["tab:orange" if r["impl"].startswith("tunepp") else "tab:gray" for r in rs])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap on short ranges
            ax.set_title(f"{kernel} {size}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(kernels) - 1:
                ax.set_xlabel("seconds (log)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_sizes(text: str) -> list[tuple[int, int, int]]:
    sizes = []
    for part in text.split(","):
        dims = tuple(int(v) for v in part.lower().split("x"))
        if len(dims) != 3 or min(dims) < 1:
            raise argparse.ArgumentTypeError(f"size {part!r} is not ZxYxX")
        sizes.append(dims)
    return sizes  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("96x96x96,256x256x128"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    result = run_kernel_bench(args.sizes, args.repeats, args.out)
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
