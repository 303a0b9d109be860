"""The variational ELBO: hand-computed values, the data-set-size scaling, the KL against brute-force
Monte Carlo, the log sigma^2 gradients and step sizes, the width summary, old checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from tunepp_deploy.errors import ConfigError, TuneppError
from tunepp_deploy.methods.blocks.bayes_conv import BayesConv3d
from tunepp_deploy.methods.variational import build_variational
from tunepp_deploy.methods.variational.elbo import CE_WEIGHT, DICE_WEIGHT, elbo_loss, kl_warmup_weight
from tunepp_deploy.methods.variational.experiment import mean_ci
from tunepp_deploy.methods.variational.posterior import sigma_summary
from tunepp_deploy.methods.variational.train import (
    VariationalRun,
    VariationalSettings,
    load_variational,
    save_variational,
    train_variational,
)


def _nll_by_hand(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-voxel ``-log softmax(z)_y`` with SciPy, ``logits [B, K, ...]`` -> ``[B, ...]``."""
    lp = log_softmax(logits.astype(np.float64), axis=1)
    return -np.take_along_axis(lp, labels[:, None].astype(np.int64), axis=1)[:, 0]


def _case(seed: int, b: int = 2, k: int = 3, shape: tuple[int, ...] = (2, 3, 2)):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, size=(b, k, *shape)).astype(np.float32)
    y = rng.integers(0, k, size=(b, *shape))
    return z, y


def test_nll_objective_matches_hand_computed_elbo() -> None:
    z, y = _case(0)
    kl = torch.tensor(123.0)
    n, b, v = 5, 2, 40
    c = int(np.prod(z.shape[2:]))
    nll = _nll_by_hand(z, y)
    loss, parts = elbo_loss(torch.from_numpy(z), torch.from_numpy(y), kl, n, b, v, "voxel", "nll")
    assert float(loss) == pytest.approx(nll.mean() + 123.0 / (n * v), rel=1e-6)
    assert parts["ce"] == pytest.approx(nll.mean(), rel=1e-6)
    seed_loss, _ = elbo_loss(torch.from_numpy(z), torch.from_numpy(y), kl, n, b, v, "seed", "nll")
    assert float(seed_loss) == pytest.approx(n / b * nll.sum() + 123.0, rel=1e-6)
    # the two scalings differ only in the KL weight: V / C (a crop counted as a whole case)
    assert float(seed_loss) / (n * c) == pytest.approx(nll.mean() + 123.0 / (n * c), rel=1e-6)


def test_dice_objective_is_the_old_one() -> None:
    z, y = _case(1)
    p = np.exp(log_softmax(z.astype(np.float64), axis=1))
    g = np.eye(3)[y].transpose(0, 4, 1, 2, 3)
    dice = 1 - np.mean([(2 * (p[:, c] * g[:, c]).sum() + 1e-5) / (p[:, c].sum() + g[:, c].sum() + 1e-5)
                        for c in (1, 2)])
    data = CE_WEIGHT * _nll_by_hand(z, y).mean() + DICE_WEIGHT * dice
    loss, _ = elbo_loss(torch.from_numpy(z), torch.from_numpy(y), torch.tensor(50.0), 4, 2, 10, "voxel", "dice")
    assert float(loss) == pytest.approx(data + 50.0 / 40, rel=1e-5)
    loss, _ = elbo_loss(torch.from_numpy(z), torch.from_numpy(y), torch.tensor(50.0), 4, 2, 10, "seed", "dice")
    assert float(loss) == pytest.approx(2 * data + 50.0, rel=1e-5)


def test_minibatch_estimate_times_nv_is_the_full_data_negative_elbo() -> None:
    """N cases of V voxels, crops of C = V / 2 (the two halves): the mean of ``loss * N V`` over every
    (case, half) minibatch of one crop is ``KL + sum of all N V voxel NLLs`` (brute-force sum)."""
    rng = np.random.default_rng(3)
    n, k, shape = 3, 4, (4, 2, 2)
    z = rng.normal(0, 1.5, size=(n, k, *shape)).astype(np.float32)
    y = rng.integers(0, k, size=(n, *shape))
    v = int(np.prod(shape))
    kl = 17.5
    full = kl + _nll_by_hand(z, y).sum()
    estimates = []
    for i in range(n):
        for half in (slice(0, 2), slice(2, 4)):
            loss, _ = elbo_loss(torch.from_numpy(z[i:i + 1, :, half]), torch.from_numpy(y[i:i + 1, half]),
                                torch.tensor(kl), n, 1, v, "voxel", "nll")
            estimates.append(float(loss) * n * v)
    assert np.mean(estimates) == pytest.approx(full, rel=1e-6)
    # a bigger data set weighs the same KL less, per voxel: the KL part scales as 1 / (N V)
    lo = elbo_loss(torch.from_numpy(z[:1]), torch.from_numpy(y[:1]), torch.tensor(kl), 10, 1, v)[0]
    hi = elbo_loss(torch.from_numpy(z[:1]), torch.from_numpy(y[:1]), torch.tensor(kl), 20, 1, v)[0]
    assert float(lo - hi) == pytest.approx(kl / (10 * v) - kl / (20 * v), rel=1e-4)


def test_kl_closed_form_matches_brute_force_monte_carlo() -> None:
    """``E_q[log q(w) - log p(w)]`` from 200k draws of every weight, written out by hand."""
    torch.manual_seed(0)
    layer = BayesConv3d(1, 2, 1)  # two weights
    with torch.no_grad():
        layer.weight_mu.copy_(torch.tensor([0.7, -1.2]).reshape(2, 1, 1, 1, 1))
        layer.weight_log_var.copy_(torch.tensor([-1.0, 0.6]).reshape(2, 1, 1, 1, 1))
    mu = layer.weight_mu.detach().double().numpy().ravel()
    sd = np.exp(0.5 * layer.weight_log_var.detach().double().numpy().ravel())
    rng = np.random.default_rng(0)
    w = mu + sd * rng.standard_normal((200_000, 2))
    log_q = -0.5 * ((w - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)
    log_p = -0.5 * w**2 - 0.5 * math.log(2 * math.pi)
    d = (log_q - log_p).sum(1)
    se = d.std() / math.sqrt(d.size)
    assert abs(float(layer.kl().detach()) - d.mean()) < 4 * se


def test_kl_warmup_weights_the_kl() -> None:
    assert [kl_warmup_weight(i, 4) for i in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert kl_warmup_weight(1, 0) == 1.0
    z, y = _case(2)
    a = elbo_loss(torch.from_numpy(z), torch.from_numpy(y), torch.tensor(80.0), 2, 2, 10, kl_weight=0.25)[0]
    b = elbo_loss(torch.from_numpy(z), torch.from_numpy(y), torch.tensor(0.0), 2, 2, 10)[0]
    assert float(a - b) == pytest.approx(0.25 * 80.0 / 20, rel=1e-5)


def test_bad_objective_inputs_are_one_line_errors(tiny_cfg, tiny_cases) -> None:
    z, y = (torch.from_numpy(a) for a in _case(0))
    with pytest.raises(ConfigError, match="objective"):
        elbo_loss(z, y, torch.tensor(0.0), 1, 1, 1, objective="mse")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="KL scale"):
        elbo_loss(z, y, torch.tensor(0.0), 1, 1, 1, scale="case")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kl_weight"):
        elbo_loss(z, y, torch.tensor(0.0), 1, 1, 1, kl_weight=-1.0)
    for bad in ({"objective": "x"}, {"kl_warmup": 1.5}, {"log_var_lr_scale": 0.0}):
        with pytest.raises(ConfigError):
            train_variational(tiny_cfg, tiny_cases, VariationalSettings(widths=(4, 8), iters=1, **bad))


def _log_var_grads(net, x, y, n_train: int, voxels: int, objective: str) -> tuple[float, float]:
    """Mean |d loss / d log sigma^2| of the data term alone and of the KL term alone (same noise)."""
    lvs = [m.weight_log_var for m in net.bayes_layers()]
    torch.manual_seed(5)
    data, _ = elbo_loss(net(x), y, torch.tensor(0.0), n_train, x.shape[0], voxels, "voxel", objective)
    g_data = torch.autograd.grad(data, lvs)
    kl_term = net.kl() / float(n_train * voxels)
    g_kl = torch.autograd.grad(kl_term, lvs)
    mean_abs = lambda gs: float(torch.cat([g.flatten() for g in gs]).abs().mean())  # noqa: E731
    return mean_abs(g_data), mean_abs(g_kl)


def test_kl_gradient_on_log_var_is_not_negligible_against_the_data_term(tiny_cases) -> None:
    """At the training start (log sigma^2 = -10) the KL's pull on log sigma^2 is at least as large as the
    likelihood's, for a data set much larger than the tiny one (N V = 100 x 24 x 24 x 16 voxels)."""
    torch.manual_seed(0)
    net = build_variational("unet", 1, 5, (4, 8)).train()
    net.init_log_var(-10.0)
    x = torch.from_numpy(np.stack([c.image[:16, :16, :8] for c in tiny_cases[:2]]))[:, None].float()
    y = torch.from_numpy(np.stack([c.label[:16, :16, :8] for c in tiny_cases[:2]])).long()
    g_data, g_kl = _log_var_grads(net, x, y, 100, tiny_cases[0].label.size, "nll")
    assert g_data > 0.0
    assert g_kl > g_data, (g_kl, g_data)


def test_log_var_travels_further_than_one_lr_allows(tiny_cfg, tiny_cases) -> None:
    """The broken property: with one Adam lr, log sigma^2 moves at most ~lr per step (here 20 steps of
    1e-3: <= 0.02 + Adam's transient); the default's separate log-var lr lets it move well beyond that."""
    base = VariationalSettings(arch="unet", widths=(4, 8), iters=20, batch=1, lr=1e-3, decay_every=1000)
    moved = {}
    for scale in (1.0, VariationalSettings.log_var_lr_scale):
        settings = VariationalSettings(**{**base.__dict__, "log_var_lr_scale": scale})
        run = train_variational(tiny_cfg, tiny_cases, settings)
        lv = torch.cat([m.weight_log_var.detach().flatten() for m in run.net.bayes_layers()])
        moved[scale] = float((lv - base.log_var_init).abs().max())
    assert moved[1.0] <= 20 * 1e-3 * 1.05
    assert VariationalSettings.log_var_lr_scale > 1.0
    assert moved[VariationalSettings.log_var_lr_scale] > 3 * 20 * 1e-3


def test_sigma_summary_matches_numpy() -> None:
    torch.manual_seed(0)
    net = build_variational("fcn", 1, 2, (2, 4, 4))
    with torch.no_grad():
        for m in net.bayes_layers():
            m.weight_log_var.uniform_(-8, -2)
    rows = sigma_summary(net)
    layers = net.bayes_layers()
    assert len(rows) == len(layers) + 1 and rows[-1].layer == "all"
    every = np.concatenate([np.exp(0.5 * m.weight_log_var.detach().double().numpy().ravel()) for m in layers])
    assert rows[-1].weights == every.size
    assert rows[-1].median == pytest.approx(np.median(every))
    assert rows[-1].p05 == pytest.approx(np.percentile(every, 5))
    assert rows[-1].p95 == pytest.approx(np.percentile(every, 95))
    first = np.exp(0.5 * layers[0].weight_log_var.detach().double().numpy().ravel())
    assert rows[0].mean == pytest.approx(first.mean()) and rows[0].layer == "convs.0"


def test_mean_ci_against_scipy_t() -> None:
    from scipy import stats

    v = [0.2, 0.5, 0.4]
    m, h = mean_ci(v)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
    assert m == pytest.approx(np.mean(v)) and h == pytest.approx((hi - lo) / 2)
    assert math.isnan(mean_ci([1.0])[1])


def test_checkpoint_from_before_the_new_settings_still_loads(tiny_cfg, tmp_path) -> None:
    """A checkpoint saved before ``objective`` / ``kl_warmup`` / ``log_var_lr_scale`` existed loads."""
    torch.manual_seed(0)
    net = build_variational("unet", 1, 5, (4, 8))
    path = save_variational(tmp_path / "vi.pt", VariationalRun(net, VariationalSettings(widths=(4, 8))), tiny_cfg)
    ckpt = torch.load(path, weights_only=True)
    for key in ("objective", "kl_warmup", "log_var_lr_scale"):
        del ckpt["settings"][key]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    loaded, _, settings = load_variational(old)
    x = torch.randn(1, 1, 16, 16, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    assert "objective" not in settings


def test_checkpoint_of_another_method_is_refused(tmp_path) -> None:
    p = tmp_path / "x.pt"
    torch.save({"method": "segwithu"}, p)
    with pytest.raises(TuneppError, match="not a variational-method checkpoint"):
        load_variational(p)


def test_study_gradient_probe_kl_part_is_the_closed_form(tiny_cfg, tiny_cases) -> None:
    """:func:`log_var_gradients`' KL part is ``|d/d lv 0.5 (-1 - lv + mu^2 + e^lv)| / (N V) = 0.5 (1 - e^lv) / (N V)``
    for every weight, whatever the data; its data part is positive."""
    from tunepp_deploy.methods.variational.experiment import log_var_gradients

    g = log_var_gradients(tiny_cfg, tiny_cases, "nll", widths=(4, 8), log_var_init=-3.0, batch=1)
    nv = len(tiny_cases) * tiny_cases[0].label.size
    assert g["kl"] == pytest.approx(0.5 * (1 - math.exp(-3.0)) / nv, rel=1e-5)
    assert g["data"] > 0 and g["ratio_kl_to_data"] == pytest.approx(g["kl"] / g["data"])


def test_validation_uncertainty_against_a_direct_computation(tiny_cfg, tiny_cases) -> None:
    """A case exactly one window large: the scores equal those computed directly from the S sampled
    softmaxes (entropy by hand, AUROC by scikit-learn, Dice by counting)."""
    from scipy import ndimage
    from sklearn.metrics import roc_auc_score

    from tunepp_deploy.data.dataset import LoadedCase
    from tunepp_deploy.methods.variational import sample_weight_noise
    from tunepp_deploy.methods.variational.validate import validation_uncertainty

    torch.manual_seed(0)
    net = build_variational("unet", 1, 5, (4, 8)).eval()
    net.init_log_var(-2.0)  # wide enough for the samples to disagree
    w = tuple(tiny_cfg.window)
    src = tiny_cases[0]
    case = LoadedCase("w", src.image[: w[0], : w[1], : w[2]].copy(), src.label[: w[0], : w[1], : w[2]].copy())
    res = validation_uncertainty(net, tiny_cfg, [case], samples=3, seed=4, near=1)
    noise = sample_weight_noise(net.noise_shapes(), 3, 4)
    x = torch.from_numpy(case.image.astype(np.float32))[None, None]
    with torch.no_grad():
        p = np.stack([torch.softmax(net(x, noise.sample(s)), 1)[0].double().numpy() for s in range(3)])
    ent = lambda q: -(q * np.log(np.clip(q, 1e-12, None))).sum(0)  # noqa: E731
    p_bar = p.mean(0)
    h = ent(p_bar)
    mi = np.clip(h - np.mean([ent(q) for q in p], axis=0), 0, None)
    pred = p_bar.argmax(0)
    fg = case.label > 0
    assert res["fg_entropy"] == pytest.approx(h[fg].mean(), rel=1e-4)
    assert res["fg_mutual_info"] == pytest.approx(mi[fg].mean(), rel=1e-3, abs=1e-6)
    region = ndimage.binary_dilation(fg | (pred > 0), np.ones((3, 3, 3), bool))
    err = (pred != case.label)[region]
    assert res["error_rate_near_fg"] == pytest.approx(err.mean())
    if 0 < err.sum() < err.size:
        assert res["error_auroc_near_fg"] == pytest.approx(roc_auc_score(err, h[region]), abs=1e-6)
    dices = []
    for c in range(1, 5):
        a, b = pred == c, case.label == c
        if a.sum() + b.sum():
            dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert res["mc_dice"] == pytest.approx(np.mean(dices))
    with pytest.raises(TuneppError, match="samples"):
        validation_uncertainty(net, tiny_cfg, [case], samples=0)
