"""The variational predictor against independent oracles: every sample stitched on its own with
``sliding_window`` and the all-samples formulas (``maps_from_samples``); any chunk size; the law of
total variance; torch vs ONNX Runtime from the files; one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.sliding_window import count_windows, sliding_window
from tunepp_deploy.infer.uncertainty import gini_impurity, maps_from_samples
from tunepp_deploy.methods.variational import build_variational, sample_weight_noise
from tunepp_deploy.methods.variational.export import export_variational, noise_input_names, variational_props
from tunepp_deploy.methods.variational.runners import TorchVariationalRunner, VariationalGraph
from tunepp_deploy.methods.variational.train import VariationalRun, VariationalSettings, save_variational
from tunepp_deploy.predictors.settings import RunOptions, resolve
from tunepp_deploy.predictors.variational import VariationalPredictor, open_variational_predictor

WIN = (16, 16, 8)
S, SEED = 5, 3
CPU = torch.device("cpu")
MAPS = ("aleatoric", "epistemic", "total", "predictive_entropy", "mutual_information")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = build_variational("unet", 1, 5, (4, 8)).eval()
    n.init_log_var(-3.0)  # a wide posterior: the samples differ visibly
    return n


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((24, 20, 12), dtype=np.float32)  # 8 windows, padded on no axis


def _predictor(net, cfg, chunk: int | None = None, **opts) -> VariationalPredictor:
    graph = VariationalGraph(TorchVariationalRunner(net, CPU), cfg, {"arch": "unet"}, WIN, noise_input_names(net),
                             net.noise_shapes())
    settings = resolve(cfg, RunOptions(**{"samples": S, "seed": SEED, "max_batch": 2, **opts}))
    return VariationalPredictor(graph, settings, chunk)


@pytest.fixture(scope="module")
def reference(net) -> torch.Tensor:
    """``[S, K, ...]``: each weight sample's softmax stitched over the image on its own (float64)."""
    vol = torch.from_numpy(_image())[None]
    noise = sample_weight_noise(net.noise_shapes(), S, SEED)
    out = []
    with torch.no_grad():
        for s in range(S):
            (p,) = sliding_window(vol, lambda x, s=s: [torch.softmax(net(x, noise.sample(s)), 1)], WIN, 0.5, 2)
            out.append(p)
    return torch.stack(out).double()


@pytest.mark.parametrize("chunk", [1, 2, S])
def test_streamed_maps_equal_the_all_samples_formulas(net, tiny_cfg, reference, chunk: int) -> None:
    pred = _predictor(net, tiny_cfg, chunk).predict(_image())
    ref = maps_from_samples(reference)
    assert pred.info["sample_chunk"] == chunk and pred.info["samples"] == S and pred.info["blend"] == "sample"
    assert torch.allclose(pred.probs.double(), ref.mean_probs, atol=1e-6)
    for k in MAPS:
        assert torch.allclose(pred.maps[k].double(), getattr(ref, k).double(), atol=1e-6), k
    assert float(pred.maps["epistemic"].max()) > 1e-3  # the samples do differ: the check is not vacuous


def test_total_is_aleatoric_plus_epistemic_is_gini_of_the_mean(net, tiny_cfg, reference) -> None:
    m = _predictor(net, tiny_cfg).predict(_image()).maps
    assert torch.equal(m["total"], m["aleatoric"] + m["epistemic"])
    pbar = reference.mean(0)
    assert torch.allclose(m["total"].double(), 1.0 - (pbar * pbar).sum(0), atol=1e-6)
    assert (m["aleatoric"] >= 0).all() and (m["epistemic"] >= 0).all() and float(m["total"].max()) <= 1.0


def test_aleatoric_term_is_the_variance_of_a_one_hot_draw() -> None:
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    y = torch.nn.functional.one_hot(torch.multinomial(p, 400_000, replacement=True, generator=g), 3).double()
    assert abs(float(y.var(0, unbiased=False).sum()) - float(gini_impurity(p, 0))) < 2e-3


def test_planned_chunk_fits_the_budget_and_changes_nothing(net, tiny_cfg, reference) -> None:
    """A budget that allows fewer than S samples per pass gives the same maps; one that allows none is one line."""
    im = _image()
    ladder = [0.001 * 1.25**i for i in range(40)]
    fits = []
    for gb in ladder:
        try:
            fits.append((gb, _predictor(net, tiny_cfg, memory_gb=gb).sample_chunk(im.shape)))
        except TuneppError:
            assert not fits  # once one sample fits, every larger budget fits too
    chunks = dict(fits)
    assert sorted(chunks.values()) == list(chunks.values()) and max(chunks.values()) == S  # more memory, larger chunk
    gb = next(g for g, c in chunks.items() if 1 < c < S)
    pred = _predictor(net, tiny_cfg, memory_gb=gb).predict(im)
    assert 1 < pred.info["sample_chunk"] < S
    assert torch.allclose(pred.maps["epistemic"].double(), maps_from_samples(reference).epistemic, atol=1e-6)
    with pytest.raises(TuneppError, match="memory-gb"):
        _predictor(net, tiny_cfg, memory_gb=1e-5).predict(im)


def test_progress_counts_windows_times_samples(net, tiny_cfg) -> None:
    calls: list[tuple[int, int]] = []
    _predictor(net, tiny_cfg, 2).predict(_image(), lambda d, t: calls.append((d, t)))
    total = count_windows(_image().shape, WIN, 0.5) * S
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)


def test_finish_maps_restores_the_sum_after_resampling(net, tiny_cfg) -> None:
    p = _predictor(net, tiny_cfg)
    a, e = np.array([0.2, -1e-7, 0.4], np.float32), np.array([-2e-8, 0.1, 0.3], np.float32)
    out = p.finish_maps({"aleatoric": a, "epistemic": e, "total": np.zeros(3, np.float32)})
    assert all((v >= 0).all() for v in out.values())
    assert np.array_equal(out["total"], out["aleatoric"] + out["epistemic"])


def test_torch_and_ort_predictors_agree_from_the_files(net, tiny_cfg, tmp_path) -> None:
    settings = VariationalSettings(arch="unet", widths=(4, 8))
    ckpt = save_variational(tmp_path / "vi.pt", VariationalRun(net, settings), tiny_cfg)
    onnx_path = export_variational(net, WIN, tmp_path / "vi.onnx",
                                   variational_props(tiny_cfg, {"arch": "unet", "widths": [4, 8]}))
    opts = RunOptions(samples=3, seed=7, max_batch=2)
    with open_variational_predictor(ckpt, "auto", CPU, None, opts) as t, \
            open_variational_predictor(onnx_path, "auto", CPU, 1, opts) as o:
        assert (t.backend, o.backend) == ("torch", "ort") and t.graph.noise_shapes == o.graph.noise_shapes
        assert "variational unet" in o.describe_runner() and o.describe()["arch"] == "unet"
        a, b = t.predict(_image()), o.predict(_image())
    assert torch.allclose(a.probs, b.probs, atol=1e-5)
    for k in MAPS:
        assert torch.allclose(a.maps[k], b.maps[k], atol=1e-5), k
    assert a.info == b.info


def test_wrong_backend_or_blend_is_one_line(net, tiny_cfg, tmp_path) -> None:
    ckpt = save_variational(tmp_path / "vi.pt", VariationalRun(net, VariationalSettings(widths=(4, 8))), tiny_cfg)
    with pytest.raises(TuneppError, match="--backend torch"):
        open_variational_predictor(ckpt, "ort", CPU, None, RunOptions())
    with pytest.raises(TuneppError, match="--blend"):
        open_variational_predictor(ckpt, "auto", CPU, None, RunOptions(blend="window"))
    with pytest.raises(TuneppError, match="not found"):
        open_variational_predictor(tmp_path / "nope.onnx", "auto", CPU, None, RunOptions())
