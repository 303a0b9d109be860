"""Variational networks: shapes, gradients, KL closed form, seeded noise, ONNX parity, training."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from tunepp_deploy.methods.blocks.bayes_conv import LOG_VAR_INIT, BayesConv3d
from tunepp_deploy.methods.variational import ARCHS, build_variational, sample_weight_noise
from tunepp_deploy.methods.variational.export import export_variational, noise_input_names
from tunepp_deploy.methods.variational.train import (
    VariationalSettings,
    load_variational,
    save_variational,
    train_variational,
)

WIN = (16, 16, 8)


def _net(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_variational(arch, 1, 3, (4, 8, 16))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_shapes_and_gradient_flow(arch: str) -> None:
    net = _net(arch).train()
    x = torch.randn(2, 1, *WIN)
    y = net(x)
    assert y.shape == (2, 3, *WIN)
    (y.square().mean() + net.kl() * 1e-6).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("weight_log_var"):
            assert p.grad.abs().sum() > 0, name  # the data term reaches sigma through the local reparam.


def test_kl_matches_closed_form_and_torch() -> None:
    layer = BayesConv3d(2, 3, 3)
    with torch.no_grad():
        layer.weight_mu.normal_(0, 0.5)
        layer.weight_log_var.uniform_(-3, 1)
    mu, lv = layer.weight_mu, layer.weight_log_var
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * lv)), Normal(0.0, 1.0)).sum()
    hand = 0.5 * (-1 - lv + mu**2 + lv.exp()).sum()
    assert torch.allclose(layer.kl(), ref, rtol=1e-5)
    assert torch.allclose(layer.kl(), hand, rtol=1e-6)


def test_init_matches_seed() -> None:
    torch.manual_seed(0)
    layer = BayesConv3d(16, 16, 3)
    assert torch.all(layer.weight_log_var == LOG_VAR_INIT)
    assert abs(float(layer.weight_mu.detach().std()) - 0.02) < 0.002


def test_weight_sample_form_and_eval_mean() -> None:
    layer = BayesConv3d(1, 1, 1, bias=False).eval()
    x = torch.full((1, 1, 2, 2, 2), 2.0)
    eps = torch.full((1, 1, 1, 1, 1), 1.5)
    w = layer.weight_mu + torch.exp(0.5 * layer.weight_log_var) * 1.5
    assert torch.allclose(layer(x, eps), 2.0 * w.reshape(()).expand(1, 1, 2, 2, 2))
    assert torch.allclose(layer(x), 2.0 * layer.weight_mu.reshape(()).expand(1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match="weight noise"):
        layer(x, torch.zeros(2))


def test_noise_count_checked() -> None:
    net = _net("unet").eval()
    with pytest.raises(ValueError, match="noise tensors"):
        net(torch.zeros(1, 1, *WIN), [torch.zeros(1)])


def test_seeded_noise_is_deterministic_and_prefix_stable() -> None:
    net = _net("fcn").eval()
    a = sample_weight_noise(net.noise_shapes(), 3, seed=5)
    b = sample_weight_noise(net.noise_shapes(), 2, seed=5)
    c = sample_weight_noise(net.noise_shapes(), 2, seed=6)
    for x, y, z in zip(a.per_layer, b.per_layer, c.per_layer, strict=True):
        assert np.array_equal(x[:2], y) and not np.array_equal(y, z)
    x = torch.randn(1, 1, *WIN)
    with torch.no_grad():
        o1, o2 = net(x, a.sample(1)), net(x, b.sample(1))
        o3 = net(x, a.sample(0))
    assert torch.equal(o1, o2) and not torch.equal(o1, o3)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_onnx_parity_same_noise(arch: str, tmp_path) -> None:
    net = _net(arch).eval()
    path = export_variational(net, WIN, tmp_path / f"{arch}.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    noise = sample_weight_noise(net.noise_shapes(), 2, seed=1)
    x = torch.randn(3, 1, *WIN)
    for s in range(2):
        feeds = {"x": x.numpy(), **dict(zip(noise_input_names(net), noise.sample_numpy(s), strict=True))}
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            ref = net(x, noise.sample(s)).numpy()
        assert np.abs(got - ref).max() <= 1e-4


def test_training_lowers_loss_and_roundtrips(tiny_cfg, tiny_cases, tmp_path) -> None:
    settings = VariationalSettings(arch="unet", widths=(4, 8), iters=20, batch=2, lr=1e-2, seed=0)
    run = train_variational(tiny_cfg, tiny_cases, settings)
    first = np.mean([h["ce"] for h in run.history[:4]])
    last = np.mean([h["ce"] for h in run.history[-4:]])
    assert last < first
    path = save_variational(tmp_path / "vi.pt", run, tiny_cfg)
    net, cfg, s = load_variational(path)
    x = torch.randn(1, 1, *WIN)
    with torch.no_grad():
        assert torch.equal(net(x), run.net(x))
    assert s["arch"] == "unet" and cfg.data.num_classes == 5


def test_training_starts_from_the_requested_posterior_width(tiny_cfg, tiny_cases) -> None:
    """``log_var_init`` reaches every layer: one step with a tiny lr leaves log sigma^2 at the start value."""
    for start in (-5.0, -10.0):
        settings = VariationalSettings(arch="unet", widths=(4, 8), iters=1, batch=1, lr=1e-9, log_var_init=start)
        run = train_variational(tiny_cfg, tiny_cases, settings)
        for layer in run.net.bayes_layers():
            assert torch.allclose(layer.weight_log_var, torch.full_like(layer.weight_log_var, start), atol=1e-6)
