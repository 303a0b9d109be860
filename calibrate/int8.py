r"""Representative input windows for INT8 calibration (TensorRT 10 calibrators and TensorRT 11 / ModelOpt).

INT8 ranges are only as good as the activations they are measured on, so the windows are exactly
what inference feeds the network: every scan is resampled to the model's spacing and normalised by
:func:`tunepp_deploy.data.preprocess.preprocess_image` with the spacing/intensity stored in the
model (checkpoint config or ONNX metadata), padded like :func:`~tunepp_deploy.infer.sliding_window.sliding_window`
(with the volume minimum) when smaller than the window, and cut at the sliding-window positions
inference visits (:func:`~tunepp_deploy.infer.sliding_window.window_slices`, the model's window and
the config's overlap). ``N`` windows are drawn uniformly without replacement from all positions of
all scans (seeded), so organs and background appear in the proportions inference sees.

The exported graph is **one** graph (``x`` plus one mask input per dropout site; see
:mod:`tunepp_deploy.export.onnx_export`): the trunk and head are not separate files, so no trunk
activations need to be dumped for a head graph — the calibrator runs the whole graph. (With a
trunk/head split the head's inputs would be trunk outputs and its calibration data would have to be
produced by running the trunk on these windows.) Each window is paired with one MC dropout mask
row, ``sample_masks(sites, window, N, seed=0)`` row j for window j — the draw
:func:`tunepp_deploy.export.trt_build.calibration_feeds` makes — so activation ranges include the
``1 / (1 - p)`` scaling of kept channels that MC inference produces.

Output folder::

    batch_00000.npy ...        x, [B, C, *window] float32 — TensorRT 10: IInt8EntropyCalibrator2 batches
                               (read by ``tunepp export trt --precision int8 --calib DIR``)
    masks/batch_00000_<input>.npy   the mask rows of each batch, [B, channels]
    calibration_data.npz       TensorRT 11: {input name: [N, ...]} for
                               ``modelopt.onnx.quantization.quantize(onnx, quantize_mode="int8",
                               calibration_data=dict(np.load(npz)))``
    manifest.json              input names / shapes / dtypes, batch files, windows (case, start),
                               preprocessing, model hash
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tunepp_deploy.export.metadata import INPUT_NAME, ModelMeta

from tunepp_deploy import __version__
from tunepp_deploy.data.layout import case_name, list_images
from tunepp_deploy.data.nifti import load_volume, write_atomic
from tunepp_deploy.data.preprocess import preprocess_image, resampled_shape
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.sliding_window import window_slices

MANIFEST_FORMAT = 1
MASK_SEED = 0


def scan_paths(data: str | Path) -> list[Path]:
    """Scans under ``data``: its ``imagesTr`` folder if it is a dataset root, else the folder or file itself."""
    d = Path(data)
    return list_images(d / "imagesTr" if (d / "imagesTr").is_dir() else d)


def preprocess_for_model(path: Path, meta: ModelMeta) -> np.ndarray:
    """``[C, D, H, W]`` float32 on the model grid, padded to at least one window (as inference does)."""
    vol = load_volume(path)
    pre = preprocess_image(vol.array, vol.spacing, meta.spacing, meta.intensity)
    t = torch.from_numpy(pre)[None]
    pads = [max(0, w - s) for s, w in zip(t.shape[1:], meta.window, strict=True)]
    if any(pads):
        t = F.pad(t, [p for q in reversed(pads) for p in (0, q)], value=float(t.min()))
    return t.numpy()


@dataclass(frozen=True)
class Int8Result:
    """What was written."""

    out: Path
    windows: int
    batches: int
    manifest: Path
    npz: Path


def write_calibration_set(
    meta: ModelMeta, scans: Sequence[Path], out: str | Path, windows: int = 64, batch: int = 4,
    overlap: float | None = None, seed: int = 0, model_path: str | None = None,
) -> Int8Result:
    """Draw ``windows`` windows from ``scans`` and write the folder described in the module docstring."""
    if windows < 1 or batch < 1:
        raise TuneppError("--windows and --batch must be at least 1")
    ov = meta.config.infer.overlap if overlap is None else overlap
    out = Path(out)
    positions: list[tuple[int, tuple[slice, ...]]] = []
    shapes = []
    for i, p in enumerate(scans):
        vol = load_volume(p)
        shape = [max(s, w) for s, w in zip(resampled_shape(vol.shape, vol.spacing, meta.spacing), meta.window,
                                           strict=True)]
        shapes.append(shape)
        positions.extend((i, sl) for sl in window_slices(shape, meta.window, ov))
    if not positions:
        raise TuneppError("no windows to draw from")
    rng = np.random.default_rng(seed)
    n = min(windows, len(positions))
    pick = sorted(rng.choice(len(positions), size=n, replace=False).tolist())
    chosen = [positions[j] for j in pick]

    x = np.empty((n, meta.in_channels, *meta.window), np.float32)
    cache: dict[int, np.ndarray] = {}
    for j, (i, sl) in enumerate(chosen):
        if i not in cache:
            cache.clear()  # windows are sorted by scan: keep one preprocessed volume at a time
            cache[i] = preprocess_for_model(scans[i], meta)
        x[j] = cache[i][(slice(None), *sl)]
    masks = sample_masks(meta.sites, meta.window, n, seed=MASK_SEED)
    feeds: dict[str, np.ndarray] = {INPUT_NAME: x}
    rows = [t.numpy() for t in masks.rows(range(n), 1, starts=[(0, 0, 0)])]  # sample j for window j
    feeds.update(dict(zip(meta.mask_names, rows, strict=True)))

    out.mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    for old in list(out.glob("batch_*.npy")) + list((out / "masks").glob("batch_*.npy")):
        old.unlink()  # a smaller rerun must not leave stale batches behind for the calibrator's glob
    batches = []
    n_batches = (n + batch - 1) // batch
    for b in range(n_batches):
        sl = slice(b * batch, min((b + 1) * batch, n))
        entry = {INPUT_NAME: f"batch_{b:05d}.npy"}
        arrays = {INPUT_NAME: x[sl]}
        for name in meta.mask_names:
            entry[name] = f"masks/batch_{b:05d}_{name}.npy"
            arrays[name] = feeds[name][sl]
        for name, rel in entry.items():
            arr = np.ascontiguousarray(arrays[name])
            write_atomic(out / rel, lambda tmp, a=arr: np.save(tmp, a), suffix=".npy")
        batches.append({"rows": int(sl.stop - sl.start), "files": entry})
    npz = out / "calibration_data.npz"
    write_atomic(npz, lambda tmp: np.savez(tmp, **feeds), suffix=".npz")

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "tunepp_version": __version__,
        "model": model_path,
        "inputs": [
            {"name": k, "shape_per_window": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in feeds.items()
        ],
        "batch_size": batch,
        "batches": batches,
        "windows": len(chosen),
        "positions_available": len(positions),
        "window_origins": [{"scan": case_name(scans[i]), "start": [s.start for s in sl]} for i, sl in chosen],
        "preprocessing": {
            "spacing": list(meta.spacing), "intensity": meta.intensity.model_dump(mode="json"),
            "window": list(meta.window), "overlap": ov, "pad_value": "volume minimum",
        },
        "masks": {"sites": meta.mask_names, "seed": MASK_SEED, "draw": "sample_masks(sites, window, N, seed) row j"},
        "seed": seed,
        "tensorrt10": "batch_*.npy hold x; masks/ the matching mask rows; feed in manifest order",
        "tensorrt11": "modelopt.onnx.quantization.quantize(onnx, quantize_mode='int8', "
                      "calibration_data=dict(np.load('calibration_data.npz')))",
        "graphs": "one graph (trunk + head): no trunk activations needed",
    }
    man = out / "manifest.json"
    write_atomic(man, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))
    return Int8Result(out, n, n_batches, man, npz)


__all__ = ["Int8Result", "preprocess_for_model", "scan_paths", "write_calibration_set"]
