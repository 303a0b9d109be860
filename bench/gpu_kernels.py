"""The GPU suite's kernel part: CuPy / numba-cuda topology kernels against the CPU kernels, and timed.

**Parity** (every backend under test against ``tunepp numba`` on the CPU): EDT (max |diff|), connected
components (identical labels: both number in raster order), Euler characteristic and Betti numbers
(equal), on random masks (smoothed noise at two levels, white noise) and on the shapes whose Betti
numbers CI checks against GUDHI (``tests/kernels/test_kernels_betti.py``: ball, shell, torus, cube
frame); and multi-label Betti numbers of a 9-organ label map. **Timing** at each size: ours on the
device, ``cupyx.scipy.ndimage.distance_transform_edt`` (PBA+, which pads a volume to a cube of its
longest side: 512x512x256 becomes 512^3), and our CPU kernels. Device calls are synchronised before
the clock is read; inputs are on the device before timing (no host copies in the figures).

The dry run (no GPU) passes ``scipy`` as the backend under test: every line here runs, on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from .kernels import _host, _sync_for, _to_device, median_time, phantom_volume

SIZES = ((96, 96, 96), (256, 256, 128), (512, 512, 256))
ORGANS = 9


def _grid(n: int) -> np.ndarray:
    return np.mgrid[0:n, 0:n, 0:n] - (n - 1) / 2


def known_shapes() -> dict[str, tuple[np.ndarray, tuple[int, int, int]]]:
    """Shapes with known Betti numbers (the GUDHI-checked ones of the CPU tests)."""
    z, y, x = _grid(21)
    ball = x * x + y * y + z * z < 7.5**2
    shell = (x * x + y * y + z * z < 8.5**2) & ~(x * x + y * y + z * z < 5.5**2)
    z, y, x = _grid(25)
    torus = (np.sqrt(x * x + y * y) - 7.0) ** 2 + z * z < 2.6**2
    frame = np.zeros((12, 12, 12), bool)
    for a in (1, 10):
        for b in (1, 10):
            frame[a, b, 1:-1] = frame[a, 1:-1, b] = frame[1:-1, a, b] = True
    return {"ball": (ball, (1, 0, 0)), "shell": (shell, (1, 0, 1)), "torus": (torus, (1, 1, 0)),
            "cube frame": (frame, (1, 5, 0))}


def random_masks(shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Smoothed noise at two levels and white noise (fresh per seed)."""
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal(shape), 1.5)
    return {"blobs+": f > 0.3 * f.std(), "blobs-": f > -0.3 * f.std(), "noise": rng.random(shape) < 0.5}


def organ_labels(shape: tuple[int, int, int], organs: int = ORGANS, seed: int = 0) -> np.ndarray:
    """A label map of ``organs`` labels: each voxel takes the strongest of ``organs`` smooth fields, where
    it is strong enough (else background) — blobs with holes and cavities, every label present."""
    rng = np.random.default_rng(seed)
    sigma = max(2.0, min(shape) / 24)
    fields = np.stack([ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma) for _ in range(organs)])
    top = fields.argmax(0).astype(np.int32) + 1
    return np.where(fields.max(0) > 0.6 * fields.std(), top, 0).astype(np.int32)


def _ops(backend: str) -> dict[str, Callable[[Any], Any]]:
    from tunepp_deploy.kernels import betti_numbers, connected_components, distance_transform, euler_characteristic

    return {"edt": lambda m: _sync_for(backend, distance_transform(m, backend=backend)),
            "ccl26": lambda m: connected_components(m, 26, backend=backend),
            "euler26": lambda m: euler_characteristic(m, 26, backend=backend),
            "betti": lambda m: betti_numbers(m, backend=backend)}


def _compare(kernel: str, got: Any, ref: Any) -> tuple[bool, float | None]:
    """(agrees, max |diff| for the EDT) of a device result against the CPU one."""
    if kernel == "edt":
        d = float(np.abs(_host(got) - ref).max()) if ref.size else 0.0
        finite = ref[np.isfinite(ref)]
        return d <= 1e-4 * max(1.0, float(finite.max()) if finite.size else 1.0), d
    if kernel == "ccl26":
        return bool(got[1] == ref[1] and np.array_equal(_host(got[0]), ref[0])), None
    return bool(got == ref), None


def parity(backends: Sequence[str], seed: int = 0, shape: tuple[int, int, int] = (40, 37, 33)) -> list[dict[str, Any]]:
    """Every backend under test against numba on the CPU (module docstring); one row per case x kernel."""
    from tunepp_deploy.kernels import betti_numbers, betti_per_label

    rows: list[dict[str, Any]] = []
    cpu = _ops("numba")
    cases = {**{k: (v, None) for k, v in random_masks(shape, seed).items()}, **known_shapes()}
    for b in backends:
        ops = _ops(b)
        for name, (mask, expected) in cases.items():
            m8 = np.ascontiguousarray(mask, dtype=np.uint8)
            dev = _to_device(m8, b)
            for kernel, fn in ops.items():
                ok, diff = _compare(kernel, fn(dev), cpu[kernel](m8))
                rows.append({"backend": b, "case": name, "kernel": kernel, "ok": ok, "max_abs_diff": diff})
            if expected is not None:
                got = betti_numbers(dev, backend=b)
                rows.append({"backend": b, "case": name, "kernel": "betti vs GUDHI-known", "ok": got == expected,
                             "max_abs_diff": None, "note": f"{got} (known {expected})"})
        labels = organ_labels(shape, seed=seed)
        got = betti_per_label(_to_device(labels, b), ORGANS, backend=b)
        ref = betti_per_label(labels, ORGANS, backend="numba")
        rows.append({"backend": b, "case": f"{ORGANS}-organ labels", "kernel": "betti per label",
                     "ok": bool(np.array_equal(got, ref)), "max_abs_diff": None})
    return rows


def timing(backends: Sequence[str], sizes: Sequence[tuple[int, int, int]], repeats: int, cupyx: bool,
           time_left: Callable[[], float], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Kernel seconds per size for ``backends``, cupyx's EDT and the CPU kernels, with their agreement."""
    from tunepp_deploy.kernels import betti_per_label

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for shape in sizes:
        if time_left() <= 0:
            skipped.append(f"{'x'.join(map(str, shape))}: suite deadline")
            continue
        size = "x".join(map(str, shape))
        m8 = np.ascontiguousarray(phantom_volume(shape), dtype=np.uint8)
        labels = organ_labels(shape)
        cpu_reps = max(1, repeats - 2) if m8.size > 2**25 else repeats
        ref: dict[str, Any] = {}
        for kernel, fn in _ops("numba").items():
            t, ref[kernel] = median_time(lambda fn=fn, m8=m8: fn(m8), cpu_reps)
            rows.append({"size": size, "kernel": kernel, "impl": "tunepp numba (CPU)", "seconds": t, "ok": True})
        t, ref["betti9"] = median_time(lambda lab=labels: betti_per_label(lab, ORGANS, backend="numba"), cpu_reps)
        rows.append({"size": size, "kernel": f"betti {ORGANS} labels", "impl": "tunepp numba (CPU)", "seconds": t,
                     "ok": True})
        for b in backends:
            dev, dev_labels = _to_device(m8, b), _to_device(labels, b)
            for kernel, fn in _ops(b).items():
                t, out = median_time(lambda fn=fn, dev=dev: fn(dev), repeats)
                ok, diff = _compare(kernel, out, ref[kernel])
                rows.append({"size": size, "kernel": kernel, "impl": f"tunepp {b}", "seconds": t, "ok": ok,
                             "max_abs_diff": diff})
            t, out = median_time(lambda b=b, d=dev_labels: betti_per_label(d, ORGANS, backend=b), repeats)
            rows.append({"size": size, "kernel": f"betti {ORGANS} labels", "impl": f"tunepp {b}", "seconds": t,
                         "ok": bool(np.array_equal(out, ref["betti9"]))})
        if cupyx:
            import cupy
            from cupyx.scipy.ndimage import distance_transform_edt

            dev = cupy.asarray(m8)

            def edt(dev: Any = dev) -> Any:
                out = distance_transform_edt(dev)
                cupy.cuda.Device().synchronize()
                return out

            t, out = median_time(edt, repeats)
            ok, diff = _compare("edt", out, ref["edt"])
            rows.append({"size": size, "kernel": "edt", "impl": "cupyx distance_transform_edt (pads to a cube)",
                         "seconds": t, "ok": ok, "max_abs_diff": diff, "padded_to": [max(shape)] * 3})
        log(f"  kernels {size}: " + ", ".join(f"{r['kernel']} {r['impl'].split(' (')[0]} {r['seconds'] * 1e3:.1f} ms"
                                              for r in rows if r["size"] == size and r["kernel"] == "edt"))
    for r in rows:  # ratios within a size x kernel group
        group = [x for x in rows if x["size"] == r["size"] and x["kernel"] == r["kernel"]]
        cpu = next((x for x in group if x["impl"].endswith("(CPU)")), None)
        cx = next((x for x in group if x["impl"].startswith("cupyx")), None)
        r["speedup_vs_cpu"] = cpu["seconds"] / r["seconds"] if cpu and r["seconds"] else None
        r["over_cupyx"] = r["seconds"] / cx["seconds"] if cx and cx["seconds"] else None
    return {"rows": rows, "skipped": skipped}


__all__ = ["ORGANS", "SIZES", "known_shapes", "organ_labels", "parity", "random_masks", "timing"]
