"""Temperature scaling of the MC predictive, checked against independent NumPy oracles.

A "skilled" runner (the tiny untrained net's dropout-varied logits plus an intensity term that knows
the phantom's classes) gives a predictive with real skill and real MC spread, so the NLL-optimal T is
finite and away from 1 — an untrained net alone is worse than uniform and sends T to infinity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tunepp_deploy.calibrate.temperature import (
    LOG_T_BOUND,
    TemperatureFit,
    TemperedRunner,
    ValSamples,
    fit_mc_temperature,
    fit_on_validation,
    fit_temperature,
    gather_val_samples,
    mc_probs,
    read_temperature,
    read_temperature_fit,
    split_voxels,
    store_temperature,
)

from tunepp_deploy.data.dataset import load_case
from tunepp_deploy.data.layout import CasePaths, find_cases
from tunepp_deploy.infer.logit_noise import draw_logit_noise, sampled_softmax
from tunepp_deploy.infer.masks import identity_masks, sample_masks
from tunepp_deploy.infer.runners import open_runner
from tunepp_deploy.infer.runners.base import Runner
from tunepp_deploy.infer.sliding_window import sliding_window

S, DRAWS, MC_SEED, VOXEL_SEED = 3, 4, 7, 1
#: rough class means of the phantom's CT-windowed intensities (background, solid, torus, hollow, tube)
MU = (0.19, 0.66, 0.80, 0.57, 0.97)


class Skilled(Runner):
    """``spread * inner logits + prior(x)``: dropout moves the logits, the prior gives them skill."""

    def __init__(self, inner: Runner, gain: float = 30.0, spread: float = 3.0) -> None:
        super().__init__(inner.meta, inner.device)
        self.inner, self.gain, self.spread, self.name = inner, gain, spread, inner.name

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z, lv = self.inner.infer(x, masks)
        mu = torch.tensor(MU, device=x.device).view(1, -1, 1, 1, 1)
        prior = (-self.gain * (x.float() - mu) ** 2).repeat(z.shape[0] // x.shape[0], 1, 1, 1, 1)
        return self.spread * z.float() + prior, lv.float()


@pytest.fixture(scope="module")
def runner(tiny_ckpt: Path) -> Iterator[Runner]:
    with open_runner(tiny_ckpt, "torch", "cpu") as inner:
        yield Skilled(inner)


@pytest.fixture(scope="module")
def cases(tiny_data: Path) -> list[CasePaths]:
    return find_cases(tiny_data, "imagesTr")[:2]


@pytest.fixture(scope="module")
def val(runner: Runner, cases: list[CasePaths]) -> ValSamples:
    return gather_val_samples(runner, cases, S, noise_draws=DRAWS, mc_seed=MC_SEED, fit_voxels=3000,
                              eval_voxels=6000, seed=VOXEL_SEED)


@pytest.fixture(scope="module")
def fit(val: ValSamples) -> TemperatureFit:
    return fit_on_validation(val, per_class=False, split="two phantom cases")


# --- NumPy oracles -----------------------------------------------------------------------------------


def np_predictive(z: np.ndarray, lv: np.ndarray, eps: np.ndarray, t: Sequence[float]) -> np.ndarray:
    """``mean_s mean_t softmax(z / T + sigma eps / T_bar)`` ``[N, K]``; z ``[S, N, K]``, lv ``[S, N]``, eps
    ``[S, D, K]`` (D = 0: plain softmax). T_bar = geometric mean of T (what TemperedRunner applies to log_var)."""
    t = np.asarray(t, np.float64).reshape(-1)
    z, lv = z.astype(np.float64), lv.astype(np.float64)
    e = np.zeros((z.shape[0], 1, z.shape[2])) if eps.shape[1] == 0 else eps.astype(np.float64)
    u = z[:, :, None, :] / t + (np.exp(0.5 * lv) / np.exp(np.log(t).mean()))[:, :, None, None] * e[:, None]
    p = np.exp(u - u.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p.mean(axis=(0, 2))


def np_nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(p[np.arange(y.size), y]).mean())


def np_ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, correct = p.max(1), p.argmax(1) == y
    b = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum((b == i).mean() * abs(correct[b == i].mean() - conf[b == i].mean())
                     for i in range(bins) if (b == i).any()))


def _np(val: ValSamples, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (getattr(val, f"{which}_logits").numpy(), getattr(val, f"{which}_log_var").numpy(),
            getattr(val, f"{which}_labels").numpy())


# --- tests -------------------------------------------------------------------------------------------


def test_fitted_temperature_minimises_nll_of_mc_predictive(val: ValSamples, fit: TemperatureFit) -> None:
    z, lv, y = _np(val, "fit")
    assert z.shape == (S, fit.fit_voxels, 5) and lv.shape == (S, fit.fit_voxels)
    t = fit.temperature[0]
    assert 0.1 < t < 10 and abs(math.log(t)) > 0.05  # a finite optimum away from 1: the check below has teeth
    nll = {f: np_nll(np_predictive(z, lv, val.noise, [t * f]), y) for f in (1.0, 1.05, 1 / 1.05)}
    assert nll[1.0] <= nll[1.05] and nll[1.0] <= nll[1 / 1.05]
    assert fit.nll_fit_after == pytest.approx(nll[1.0], rel=1e-9)
    assert fit.nll_fit_before == pytest.approx(np_nll(np_predictive(z, lv, val.noise, [1.0]), y), rel=1e-9)


def test_per_class_temperatures_minimise_nll_of_mc_predictive() -> None:
    """Synthetic per-sample logits (labels drawn from a per-class-tempered predictive): an interior optimum."""
    g = torch.Generator().manual_seed(2)
    n, k = 3000, 4
    base = torch.randn(n, k, generator=g) * 3
    z = base[None] + 0.5 * torch.randn(S, n, k, generator=g)
    lv = torch.randn(S, n, generator=g) - 1.0
    eps = draw_logit_noise(3, range(S), DRAWS, k)
    p_true = np_predictive(z.numpy(), lv.numpy(), eps, [1.0, 2.0, 0.7, 1.4])
    y = torch.multinomial(torch.from_numpy(p_true), 1, generator=g)[:, 0]
    t = fit_mc_temperature(z, lv, y, eps, per_class=True).numpy()
    assert t.shape == (k,) and (np.abs(np.log(t)) < LOG_T_BOUND - 0.1).all()  # interior: x1.05 stays in bounds
    best = np_nll(np_predictive(z.numpy(), lv.numpy(), eps, t), y.numpy())
    for c in range(k):
        for f in (1.05, 1 / 1.05):
            tk = t.copy()
            tk[c] *= f
            assert best <= np_nll(np_predictive(z.numpy(), lv.numpy(), eps, tk), y.numpy()) + 1e-12, (c, f)


def test_ece_and_nll_are_of_the_mc_predictive_on_the_eval_voxels(val: ValSamples, fit: TemperatureFit) -> None:
    z, lv, y = _np(val, "eval")
    p0 = np_predictive(z, lv, val.noise, [1.0])
    p1 = np_predictive(z, lv, val.noise, fit.temperature)
    assert fit.ece_before == pytest.approx(np_ece(p0, y), abs=1e-9)
    assert fit.ece_after == pytest.approx(np_ece(p1, y), abs=1e-9)
    assert fit.nll_before == pytest.approx(np_nll(p0, y), rel=1e-9)
    assert fit.nll_after == pytest.approx(np_nll(p1, y), rel=1e-9)
    fg = (p0.argmax(1) > 0) | (y > 0)
    assert fit.eval_fg_voxels == int(fg.sum()) > 0
    assert fit.ece_fg_before == pytest.approx(np_ece(p0[fg], y[fg]), abs=1e-9)
    assert fit.ece_fg_after == pytest.approx(np_ece(p1[fg], y[fg]), abs=1e-9)
    assert fit.nll_after < fit.nll_before  # held-out NLL improves
    assert fit.argmax_changed == pytest.approx(float((p0.argmax(1) != p1.argmax(1)).mean()), abs=1e-12)


def test_fit_and_eval_voxels_are_disjoint(val: ValSamples, cases: list[CasePaths], runner: Runner) -> None:
    assert set(val.indices) == {c.name for c in cases}
    n_fit = n_eval = 0
    for case in cases:
        f, e = val.indices[case.name]
        label = load_case(case, runner.meta.config.data).label.reshape(-1)
        assert np.unique(f).size == f.size and np.unique(e).size == e.size
        assert np.intersect1d(f, e).size == 0
        assert 0 < f.size <= label.size // 2 and e.size > 0
        np.testing.assert_array_equal(val.fit_labels[n_fit : n_fit + f.size].numpy(), label[f])
        np.testing.assert_array_equal(val.eval_labels[n_eval : n_eval + e.size].numpy(), label[e])
        n_fit, n_eval = n_fit + f.size, n_eval + e.size
    assert (n_fit, n_eval) == (val.fit_labels.numel(), val.eval_labels.numel()) == (1500 * 2, 3000 * 2)
    f, e = split_voxels(10, 100, 100, np.random.default_rng(0))  # a tiny case: half fit, the rest evaluates
    assert f.size == 5 and e.size == 5 and np.union1d(f, e).tolist() == list(range(10))


def test_samples_are_stitched_one_map_per_sample(val: ValSamples, cases: list[CasePaths], runner: Runner) -> None:
    """The stored logits and log-variance are sample s alone stitched over the volume, at the split's voxels."""
    meta = runner.meta
    masks = sample_masks(meta.sites, meta.window, S, MC_SEED)
    vol = torch.from_numpy(load_case(cases[0], meta.config.data).image)[None].float()
    f, e = val.indices[cases[0].name]
    for s in (0, S - 1):
        def one(x: torch.Tensor, s: int = s) -> list[torch.Tensor]:
            return list(runner(x, masks.rows([s], x.shape[0])))

        z, lv = sliding_window(vol, one, meta.window, overlap=meta.config.infer.overlap, batch=3)
        z, lv = z.reshape(z.shape[0], -1), lv.reshape(-1)
        torch.testing.assert_close(val.fit_logits[s, : f.size], z[:, f].T)
        torch.testing.assert_close(val.eval_log_var[s, : e.size], lv[e])
    np.testing.assert_array_equal(val.noise, draw_logit_noise(MC_SEED, range(S), DRAWS, meta.num_classes))


def test_one_sample_without_noise_is_plain_temperature_scaling(runner: Runner, cases: list[CasePaths]) -> None:
    meta = runner.meta
    det = gather_val_samples(runner, cases[:1], 1, noise_draws=0, fit_voxels=3000, eval_voxels=1000,
                             masks=identity_masks(meta.sites, meta.window, 1))
    vol = torch.from_numpy(load_case(cases[0], meta.config.data).image)[None].float()
    ones = identity_masks(meta.sites, meta.window, 1)
    (z,) = sliding_window(vol, lambda x: [runner(x, ones.rows([0], x.shape[0]))[0]], meta.window, batch=4)
    f, _ = det.indices[cases[0].name]
    z_det = z.reshape(z.shape[0], -1)[:, f].T
    torch.testing.assert_close(det.fit_logits[0], z_det)
    t_mc = fit_mc_temperature(det.fit_logits, det.fit_log_var, det.fit_labels, det.noise)
    t_plain = fit_temperature(z_det, det.fit_labels)
    assert float(t_mc[0]) == pytest.approx(float(t_plain[0]), rel=1e-6)
    # zero-variance noise: draws present, sigma = 0 -> the same plain softmax(z / T)
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(4000, 4, generator=g, dtype=torch.float64) * 3
    y1 = torch.multinomial(torch.softmax(z1 / 1.7, 1), 1, generator=g)[:, 0]
    lv0 = torch.full((1, 4000), -400.0)
    eps = draw_logit_noise(0, [0], 8, 4)
    assert float(fit_mc_temperature(z1[None], lv0, y1, eps)[0]) == pytest.approx(float(fit_temperature(z1, y1)[0]),
                                                                                   rel=1e-6)
    np.testing.assert_allclose(mc_probs(z1[None], lv0, eps, [1.7]), torch.softmax(z1 / 1.7, 1).T.numpy(), atol=1e-12)


def test_tempered_runner_computes_the_fitted_predictive(tiny_ckpt: Path) -> None:
    """Inference (TemperedRunner per sample, then the sampled softmax) gives the predictive the fit optimises."""
    with open_runner(tiny_ckpt, "torch", "cpu") as inner:
        meta = inner.meta
        k, s = meta.num_classes, 3
        masks = sample_masks(meta.sites, meta.window, s, 0)
        x = torch.rand(1, 1, *meta.window, generator=torch.Generator().manual_seed(0))
        z, lv = inner(x, masks.rows(range(s), 1))
        eps = draw_logit_noise(0, range(s), 6, k)
        for t in ([1.6], [0.7, 1.2, 2.0, 1.0, 0.9]):
            tz, tlv = TemperedRunner(inner, t)(x, masks.rows(range(s), 1))
            p_inf = sampled_softmax(tz, tlv, torch.from_numpy(eps)).mean(0).reshape(k, -1).double()
            p_fit = mc_probs(z.reshape(s, k, -1).transpose(1, 2), lv.reshape(s, -1), eps, t)
            np.testing.assert_allclose(p_inf.numpy(), p_fit, atol=2e-6)


def _onnx(path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(graph)
    helper.set_model_props(m, {"tunepp.format": "1"})
    onnx.save_model(m, str(path))
    return path


def test_record_round_trips_in_checkpoint_and_onnx(fit: TemperatureFit, tiny_ckpt: Path, tmp_path: Path) -> None:
    expected = json.loads(json.dumps(fit.as_dict()))
    assert expected["samples"] == S and expected["noise_draws"] == DRAWS and expected["mc_seed"] == MC_SEED
    assert expected["seed"] == VOXEL_SEED and expected["fit_voxels"] == 3000 and expected["eval_voxels"] == 6000
    assert "disjoint" in expected["voxel_split"] and f"{S} dropout samples" in expected["predictive"]
    for model in (store_temperature(tiny_ckpt, fit, tmp_path / "cal.pt"),
                  store_temperature(_onnx(tmp_path / "m.onnx"), fit)):
        assert read_temperature(model) == fit.temperature
        assert read_temperature_fit(model) == expected
        assert TemperatureFit(**read_temperature_fit(model)).temperature == fit.temperature  # type: ignore[arg-type]


def test_files_from_before_the_mc_fit_still_read(tiny_ckpt: Path, tmp_path: Path) -> None:
    from tunepp_deploy.train.checkpoint import read_checkpoint

    old = {"temperature": [1.3], "per_class": False, "ece_before": 0.1, "ece_after": 0.05, "ece_fg_before": 0.2,
           "ece_fg_after": 0.1, "nll_before": 0.3, "nll_after": 0.2, "fit_voxels": 10, "eval_voxels": 20,
           "cases": ["a"], "split": "old"}
    ckpt = read_checkpoint(tiny_ckpt)
    ckpt["temperature"], ckpt["temperature_fit"] = [1.3], old
    torch.save(ckpt, tmp_path / "old.pt")
    assert read_temperature(tmp_path / "old.pt") == [1.3]
    assert read_temperature_fit(tmp_path / "old.pt") == old
    assert TemperatureFit(**old).samples is None  # type: ignore[arg-type]
    path = _onnx(tmp_path / "old.onnx")
    m = onnx.load(str(path))
    onnx.helper.set_model_props(m, {"tunepp.format": "1", "temperature": "[1.3]"})
    onnx.save_model(m, str(path))
    assert read_temperature(path) == [1.3] and read_temperature_fit(path) is None
    assert read_temperature_fit(tiny_ckpt) is None
