"""Generators of hostile input files for the reliability suite (imported by module name: pytest puts this
folder on ``sys.path``). Everything is written into a test's ``tmp_path`` in milliseconds; nothing is trained.

* scans: :func:`hostile_scans` — truncated, empty, not NIfTI, 2D/4D, NaN/Inf voxels, zero-size axis,
  zero/NaN spacing, singular/NaN affine, headers claiming 4000^3 and 1000^3 voxels, a newline in the name;
* models: :func:`contract_graph` — a hand-built ONNX graph with the TUNE++ contract's inputs and outputs
  (or a foreign one) carrying real tunepp metadata, so ONNX Runtime opens it in milliseconds instead of
  the 30 s of a real export; :func:`evil_checkpoint` — a pickle whose ``__reduce__`` would create a
  marker file if it were ever unpickled with ``weights_only=False``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tunepp_deploy.export.metadata import INPUT_NAME, ModelMeta
from typer.testing import Result

from tunepp_deploy.config.schema import TuneppConfig

REPO = Path(__file__).resolve().parents[2]
TUNEPP = REPO / ".venv" / "bin" / "tunepp"
SHAPE = (20, 18, 12)


def write_nifti(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)) -> Path:
    """A plain NIfTI-1 file (``.nii`` or ``.nii.gz``) with a diagonal affine of ``spacing``."""
    aff = np.diag([*spacing, 1.0])
    img = nib.Nifti1Image(np.asarray(data), aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def scan_data(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """CT-like float32 intensities."""
    return np.random.default_rng(seed).normal(0.0, 100.0, size=shape).astype(np.float32)


def patch_header(path: Path, edit: Callable[[nib.Nifti1Header], None]) -> Path:
    """Rewrite the 348-byte header of ``path`` in place after ``edit(header)`` (voxel bytes untouched):
    the only way to make files whose header nibabel itself would refuse to write."""
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    edit(hdr)
    raw = hdr.binaryblock + raw[len(hdr.binaryblock):]
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _set_dims(shape: tuple[int, ...]) -> Callable[[nib.Nifti1Header], None]:
    def edit(h: nib.Nifti1Header) -> None:
        dim = h["dim"].copy()
        dim[0] = len(shape)
        dim[1:1 + len(shape)] = shape
        h["dim"] = dim

    return edit


def _set_pixdim(i: int, value: float) -> Callable[[nib.Nifti1Header], None]:
    def edit(h: nib.Nifti1Header) -> None:
        pix = h["pixdim"].copy()
        pix[i] = value
        h["pixdim"] = pix

    return edit


def _set_srow(row: str, values: tuple[float, float, float, float]) -> Callable[[nib.Nifti1Header], None]:
    def edit(h: nib.Nifti1Header) -> None:
        h[row] = np.asarray(values, dtype=np.float32)
        h["qform_code"] = 0  # the sform is the affine nibabel reports
        h["sform_code"] = 1

    return edit


#: Hostile scan -> a word the one-line error must contain.
SCAN_CASES = {
    "empty": "cannot read",
    "not_nifti": "cannot read",
    "truncated_gz": "cannot read",
    "truncated_nii": "truncated",
    "2d": "3D",
    "4d": "3D",
    "nan_voxels": "NaN",
    "inf_voxels": "NaN or Inf",
    "zero_axis": "zero-size",
    "zero_spacing": "voxel sizes",
    "nan_spacing": "voxel sizes",
    "singular_affine": "singular",
    "nan_affine": "NaN",
    "claims_4000_cubed_nii": "cap",
    "claims_4000_cubed_gz": "cap",
    "claims_1000_cubed_gz": "cap",
    "newline\nin_name": "cannot read",
}


def hostile_scan(folder: Path, kind: str) -> Path:
    """One file of :data:`SCAN_CASES`, named ``<kind>_0000.nii[.gz]`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    gz = folder / f"{kind}_0000.nii.gz"
    nii = folder / f"{kind}_0000.nii"
    good = scan_data()
    if kind == "empty":
        gz.write_bytes(b"")
        return gz
    if kind in ("not_nifti", "newline\nin_name"):
        gz.write_text("patient notes, not an image\n")
        return gz
    if kind == "truncated_gz":
        full = write_nifti(gz, good).read_bytes()
        gz.write_bytes(full[: len(full) // 2])
        return gz
    if kind == "truncated_nii":
        full = write_nifti(nii, good).read_bytes()
        nii.write_bytes(full[: len(full) // 2])
        return nii
    if kind == "2d":
        return write_nifti(gz, good[:, :, 0])
    if kind == "4d":
        return write_nifti(gz, np.stack([good, good, good], axis=-1))
    if kind == "nan_voxels":
        bad = good.copy()
        bad[3, 4, 5] = np.nan
        return write_nifti(gz, bad)
    if kind == "inf_voxels":
        bad = good.copy()
        bad[0, 0, 0] = np.inf
        return write_nifti(gz, bad)
    if kind == "zero_axis":
        return patch_header(write_nifti(gz, good), _set_dims((SHAPE[0], 0, SHAPE[2])))
    if kind == "zero_spacing":
        return patch_header(write_nifti(gz, good), _set_pixdim(2, 0.0))
    if kind == "nan_spacing":
        return patch_header(write_nifti(gz, good), _set_pixdim(1, float("nan")))
    if kind == "singular_affine":  # two world axes equal: the voxel grid collapses onto a plane
        return patch_header(write_nifti(gz, good), _set_srow("srow_y", (1.5, 0.0, 0.0, 0.0)))
    if kind == "nan_affine":
        return patch_header(write_nifti(gz, good), _set_srow("srow_x", (float("nan"), 0.0, 0.0, 0.0)))
    if kind == "claims_4000_cubed_nii":
        return patch_header(write_nifti(nii, good), _set_dims((4000, 4000, 4000)))
    if kind == "claims_4000_cubed_gz":
        return patch_header(write_nifti(gz, good), _set_dims((4000, 4000, 4000)))
    if kind == "claims_1000_cubed_gz":
        return patch_header(write_nifti(gz, good), _set_dims((1000, 1000, 1000)))
    raise KeyError(kind)


def label_map(shape: tuple[int, ...] = SHAPE, labels: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Blocks of ``labels`` on background 0 (uint8; uint32 or, past 2^32, float64 when a label needs it)."""
    top = max(labels)
    dtype = np.uint8 if top < 2**8 else np.uint32 if top < 2**32 else np.float64
    arr = np.zeros(shape, dtype)
    for i, lab in enumerate(labels):
        arr[2 + 6 * i: 5 + 6 * i, 3:9, 2:8] = lab
    return arr


# ---------------------------------------------------------------------------------------------------
# models


def _value_info(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def contract_graph(path: Path, meta: ModelMeta, props: dict[str, str] | None = None, *,
                   foreign: bool = False) -> Path:
    """An ONNX file with ``meta``'s tunepp metadata (plus ``props``) and no real network.

    Default: exactly the contract's inputs (``x``, one mask per site) and outputs (``logits``,
    ``log_var``, rank 5) — it opens like a real export; ``log_var`` is ``x`` and ``logits`` is ``x``
    reshaped to ``[-1, 3, *window]``, which fails inside ONNX Runtime unless the window count is a
    multiple of 3 (a one-window case: a runtime error of the backend). ``foreign``: a 4D ``input`` ->
    ``output`` graph (someone else's model) with the same metadata.
    """
    win = list(meta.window)
    if foreign:
        nodes = [helper.make_node("Relu", ["input"], ["output"])]
        inputs = [_value_info("input", ["N", 1, win[0], win[1]])]
        outputs = [_value_info("output", ["N", 1, win[0], win[1]])]
        inits = []
    else:
        inputs = [_value_info(INPUT_NAME, ["B", meta.in_channels, *win])]
        inputs += [_value_info(n, ["R", *s.mask_shape(meta.window, 1)[1:]]) for n, s in zip(meta.mask_names,
                                                                                           meta.sites, strict=True)]
        shape = helper.make_tensor("shape", TensorProto.INT64, [5], [-1, 3, *win])
        inits = [shape]
        nodes = [helper.make_node("Reshape", [INPUT_NAME, "shape"], ["logits"]),
                 helper.make_node("Identity", [INPUT_NAME], ["log_var"])]
        outputs = [_value_info("logits", ["R", "K", *win]), _value_info("log_var", ["R", 1, *win])]
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {**meta.to_props(), **(props or {})})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class Evil:
    """Unpickling this runs ``touch MARKER`` (via ``__reduce__``): the attack a checkpoint can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A checkpoint-looking file with a malicious object; ``legacy``: a bare pickle, not torch's zip."""
    import torch

    payload = {"format": 1, "config": {}, "state_dict": {}, "hook": Evil(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    return path


# ---------------------------------------------------------------------------------------------------
# running the CLI


def run_tunepp(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``tunepp ARGS`` as a user runs it (own process, real exit code and stderr), one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    exe = [str(TUNEPP)] if TUNEPP.exists() else [sys.executable, "-m", "tunepp_deploy"]
    return subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def assert_one_line_error(code: int, stderr: str, *, expect_code: int = 2, contains: str | None = None) -> str:
    """Exit code ``expect_code``, exactly one non-empty line on stderr, no traceback; returns the line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == expect_code, f"exit {code}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr}"
    assert lines[0].startswith("error:"), lines[0]
    if contains is not None:
        assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


def tree(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden ones too), relative, sorted; [] when it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def props_with(**values: object) -> dict[str, str]:
    """Metadata props from Python values (strings kept verbatim, the rest JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def assert_cli_error(res: Result, *, expect_code: int = 2, contains: str | None = None) -> str:
    """:func:`assert_one_line_error` for a ``CliRunner`` result, which also must not hide an uncaught
    exception (CliRunner turns one into exit code 1 without printing the traceback)."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return assert_one_line_error(res.exit_code, res.stderr, expect_code=expect_code, contains=contains)


def cli(*args: str | Path) -> Result:
    """``tunepp ARGS`` in this process (typer's CliRunner; stderr kept apart from stdout)."""
    from typer.testing import CliRunner

    from tunepp_deploy.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------------
# fixtures (imported by the test modules; no shared conftest)


@dataclass(frozen=True)
class TinyModel:
    """The phantom config's network, untrained, as a checkpoint, with its export metadata."""

    cfg: TuneppConfig
    ckpt: Path
    meta: ModelMeta


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    import torch
    from tunepp_deploy.export.metadata import meta_for

    from tunepp_deploy.config import load_config
    from tunepp_deploy.model import build_network
    from tunepp_deploy.train.checkpoint import save_checkpoint

    cfg = load_config(REPO / "configs" / "phantom.yaml")
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    ckpt = save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", net, cfg, epoch=0)
    return TinyModel(cfg, ckpt, meta_for(net, cfg))
