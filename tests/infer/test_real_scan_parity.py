"""torch vs ONNX Runtime on a real MR scan resampled onto an oblique, anisotropic grid (same masks, S = 4).

Phantoms (textured, noisy) hid the defect this pins: the stock export of GroupNorm is ONNX
``InstanceNormalization``, whose CPU kernel sums each group's 73,728 values in one fp32 reduction;
on a real T1 through the CT window (81 % of the voxels clip to exactly 1.0) plus flat padding, the
rounding no longer cancels — per-window probabilities differed by 2.5e-4 and the logits by 8.6e-4,
against 1.6e-6 on noise. ``export/onnx_export.py`` exports GroupNorm with per-axis statistics.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from nibabel.testing import data_path
from scipy import ndimage
from tunepp_deploy.export.metadata import meta_for
from tunepp_deploy.export.onnx_export import ACCURATE_NORMS

from tunepp_deploy.data.nifti import load_volume
from tunepp_deploy.data.preprocess import preprocess_image
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners import open_runner
from tunepp_deploy.infer.runners.compare import Tolerance, compare_labels, compare_outputs, runner_outputs
from tunepp_deploy.infer.runners.torch_runner import TorchRunner

S = 4
TOL = 1e-4
#: Oblique target grid: rotations (degrees) about x, y, z and anisotropic voxel sizes (mm).
ANGLES = (20.0, -12.0, 8.0)
SPACING = (1.7, 2.3, 3.1)


def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture(scope="module")
def oblique_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nibabel's real T1 (``anatomical.nii``, 2 mm isotropic, axis-aligned) resampled (trilinear)
    onto a rotated grid of 1.7 x 2.3 x 3.1 mm voxels with the same centre and extent."""
    src = nib.load(str(Path(data_path) / "anatomical.nii"))
    data = np.asarray(src.dataobj, dtype=np.float64)
    spacing = np.asarray(SPACING)
    zooms = src.header.get_zooms()[:3]
    shape = tuple(round(n * z / s) for n, z, s in zip(data.shape, zooms, spacing, strict=True))
    aff = np.eye(4)
    aff[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ _rotation(ANGLES) @ np.diag(spacing)
    centre = src.affine @ np.r_[(np.asarray(data.shape) - 1) / 2, 1.0]
    aff[:3, 3] = centre[:3] - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    vox = np.linalg.inv(src.affine) @ aff  # target voxel -> source voxel
    out = ndimage.affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=shape, order=1, cval=0.0)
    img = nib.Nifti1Image(out.astype(np.float32), aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    path = tmp_path_factory.mktemp("real") / "t1_oblique_0000.nii.gz"
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def runners(net, cfg, onnx_file: Path):
    torch.set_num_threads(2)
    with open_runner(onnx_file, backend="ort", device="cpu") as ort_runner:
        yield TorchRunner(net, meta_for(net, cfg), torch.device("cpu")), ort_runner


@pytest.fixture(scope="module")
def volume(oblique_scan: Path, runners) -> np.ndarray:
    meta = runners[0].meta
    vol = load_volume(oblique_scan)
    return preprocess_image(vol.array, vol.spacing, meta.spacing, meta.intensity)


def _window(pre: np.ndarray, at: tuple[int, int, int], window: tuple[int, ...], fill: float) -> np.ndarray:
    """The window whose corner is volume voxel ``-at`` (the scan pasted at ``at``), the rest ``fill``."""
    out = np.full(window, fill, np.float32)
    src = tuple(slice(max(0, -a), max(0, -a) + min(w - max(a, 0), n - max(0, -a)))
                for a, w, n in zip(at, window, pre.shape, strict=True))
    dst = tuple(slice(max(a, 0), max(a, 0) + (s.stop - s.start)) for a, s in zip(at, src, strict=True))
    out[dst] = pre[src]
    return out


def test_the_scan_is_real_oblique_and_anisotropic(oblique_scan: Path, volume: np.ndarray) -> None:
    vol = load_volume(oblique_scan)
    cols = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    assert np.degrees(np.arccos(np.abs(cols).max(axis=0))).min() > 10  # every axis > 10 deg off the scanner axes
    assert len(set(np.round(vol.spacing, 3))) == 3
    assert vol.array.max() > 1000  # raw MR intensities, not a phantom's
    assert 0.5 < float((volume == volume.max()).mean()) < 0.95  # the CT window clips most tissue flat


def test_export_has_no_instance_normalization(onnx_file: Path) -> None:
    ops = {n.op_type for n in onnx.load(str(onnx_file)).graph.node}
    assert "InstanceNormalization" not in ops and "ReduceMean" in ops


def test_per_window_logits_and_probs_match(runners, volume: np.ndarray) -> None:
    torch_runner, ort_runner = runners
    meta = torch_runner.meta
    lo = float(volume.min())
    windows = [  # the scan as the first window sees it, re-centred with zero padding, a background corner
        _window(volume, (0, 0, 0), meta.window, lo),
        _window(volume, (8, 4, 6), meta.window, 0.0),
        _window(volume, (-20, -25, -10), meta.window, lo),
    ]
    x = torch.from_numpy(np.stack(windows)[:, None])
    masks = sample_masks(meta.sites, meta.window, S, seed=0).rows(range(S), x.shape[0])
    ref, test = runner_outputs(torch_runner, x, masks), runner_outputs(ort_runner, x, masks)
    res = compare_outputs(ref, test, Tolerance(atol=TOL), labels={"probs": 1}, label_margin=TOL)
    assert res.passed, res.summary()
    assert res.labels["probs"].voxels == S * len(windows) * int(np.prod(meta.window))


def test_whole_scan_maps_match(runners, volume: np.ndarray) -> None:
    torch_runner, ort_runner = runners
    meta = torch_runner.meta
    masks = sample_masks(meta.sites, meta.window, S, seed=0)
    x = torch.from_numpy(volume)[None]
    a = mc_predict(x, torch_runner, masks, MCSettings(samples=S)).maps
    b = mc_predict(x, ort_runner, masks, MCSettings(samples=S)).maps
    res = compare_outputs({"probs": a.mean_probs, "maps": a.stacked()}, {"probs": b.mean_probs, "maps": b.stacked()},
                          Tolerance(atol=TOL), labels={"probs": 0}, label_margin=TOL)
    assert res.passed, res.summary()


class _Norms(torch.nn.Module):
    """GroupNorm shapes of the network (one channel per group, several, no affine) and InstanceNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.single = torch.nn.GroupNorm(1, 1)
        self.grouped = torch.nn.GroupNorm(2, 4)
        self.plain = torch.nn.GroupNorm(4, 4, affine=False)
        self.instance = torch.nn.InstanceNorm3d(4, affine=True)
        with torch.no_grad():
            for gn in (self.single, self.grouped, self.instance):
                gn.weight.uniform_(0.5, 2.0)
                gn.bias.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.single(x[:, :1]), self.grouped(x), self.plain(x), self.instance(x)


@torch.no_grad()
def test_group_norm_export_is_accurate_on_flat_runs() -> None:
    """The root cause in isolation: groups of 73,728+ values, 95 % of them one clipped value."""
    import onnxruntime as ort

    norms = _Norms().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 48, 48, 32, generator=g) * 0.2 + 0.3
    x[torch.rand(x.shape, generator=g) < 0.95] = 0.7
    program = torch.onnx.export(norms, (x[:2],), None, dynamo=True, opset_version=18, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},),
                                custom_translation_table=ACCURATE_NORMS)
    model = program.model_proto
    assert "InstanceNormalization" not in {n.op_type for n in model.graph.node}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x2 = torch.cat([x, x.flip(2)])  # 4 rows: the batch axis stays dynamic
    got = sess.run(None, {model.graph.input[0].name: x2.numpy()})
    ref = norms.double()(x2.double())
    for name, a, b in zip(("single", "grouped", "plain", "instance"), got, ref, strict=True):
        assert float(np.abs(a - b.numpy()).max()) < 1e-5, name  # stock InstanceNormalization: 9e-4 .. 4e-3
    if find_spec("openvino") is None:
        return  # the rest needs the [openvino] extra (the CPU default backend when it is installed)
    import openvino as ov

    core = ov.Core()
    graph = core.read_model(model.SerializeToString())
    graph.reshape({model.graph.input[0].name: list(x2.shape)})
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled({model.graph.input[0].name: x2.numpy()})
    for name, port, b in zip(("single", "grouped", "plain", "instance"), compiled.outputs, ref, strict=True):
        # OpenVINO merges consecutive ReduceMeans into one long sum: 2.7e-4 .. 1.6e-3 before they alternated
        assert float(np.abs(res[port] - b.numpy()).max()) < 1e-5, f"openvino {name}"


def test_comparator_semantics() -> None:
    a = {"x": np.array([1.0, 2.0, 100.0]), "p": np.array([[0.6, 0.5], [0.4, 0.5]]), "only_a": np.zeros(1)}
    b = {"x": np.array([1.0, 2.0 + 5e-4, 100.05]), "p": np.array([[0.4, 0.49995], [0.6, 0.50005]])}
    res = compare_outputs(a, b, {"x": Tolerance(atol=1e-3, rtol=1e-4)}, labels={"p": 0})
    x = res.outputs["x"]
    assert x.over == 1 and x.max_abs == pytest.approx(0.05) and x.max_rel == pytest.approx(5e-4)  # 100.05 fails both
    assert res.missing == ("only_a",) and not res.passed
    lab = res.labels["p"]
    assert (lab.mismatches, lab.ambiguous, lab.voxels) == (1, 1, 2)  # a 0.2 gap flipped; a 0 gap may flip
    assert compare_labels("p", a["p"], a["p"], axis=0).passed
    assert "FAIL" in res.summary()
    assert compare_outputs({"y": torch.ones(2)}, {"y": torch.ones(2, dtype=torch.float16)}).passed
