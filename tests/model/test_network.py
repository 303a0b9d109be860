"""The MC-dropout contract of TUNEPP: trunk/head split, explicit masks, train/eval semantics."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import make_net
from torch import nn

from tunepp_deploy.errors import ConfigError, TuneppError
from tunepp_deploy.model import TUNEPP, NetOutput, repeat_for_samples

WINDOW = (16, 16, 8)


def test_forward_shapes_train_and_eval(net: TUNEPP, x: torch.Tensor) -> None:
    out = net.train()(x)
    assert isinstance(out, NetOutput)
    assert out.logits.shape == (2, 3, *WINDOW) and out.log_var.shape == (2, 1, *WINDOW)
    assert [a.shape for a in out.aux_logits] == [(2, 3, 8, 8, 4)]  # dec0 at stride 2 (dec1 absent: L=2)
    ev = net.eval()(x)
    assert ev.aux_logits == []
    assert len(net(x, with_aux=True).aux_logits) == 1


def test_sites_in_execution_order_with_mask_shapes(net: TUNEPP) -> None:
    sites = net.dropout_sites()
    assert [s.name for s in sites] == ["dec0", "head"]
    assert [s.channels for s in sites] == [8, 4]
    assert sites[0].mask_shape(WINDOW, 5) == (5, 8)
    el = make_net(("head", "bottleneck"), mode="element").dropout_sites()
    assert [s.name for s in el] == ["bottleneck", "head"]
    assert el[0].mask_shape(WINDOW, 3) == (3, 16, 4, 4, 2)
    assert el[1].mask_shape(WINDOW, 3) == (3, 4, *WINDOW)


@pytest.mark.parametrize(
    ("sites", "mode"),
    [(("dec0", "head"), "channel"), (("bottleneck",), "element"), (("head",), "channel"), ((), "channel")],
)
def test_head_of_trunk_equals_forward(sites: tuple[str, ...], mode: str, x: torch.Tensor) -> None:
    net = make_net(sites, mode=mode).eval()
    gen = torch.Generator().manual_seed(3)
    masks = net.sample_masks(WINDOW, 2, generator=gen)
    trunk = net.trunk(x)
    assert [tuple(t.shape) for t in trunk] == net.trunk_output_shapes(WINDOW, 2)
    assert len(trunk) == len(net.trunk_output_names())
    logits, log_var = net.head(*trunk, *masks)
    full = net(x, masks)
    assert torch.equal(logits, full.logits) and torch.equal(log_var, full.log_var)


def test_repeated_trunk_gives_per_sample_forwards(net: TUNEPP, x: torch.Tensor) -> None:
    net.eval()
    S, B = 3, x.shape[0]
    gen = torch.Generator().manual_seed(0)
    masks = net.sample_masks(WINDOW, S * B, generator=gen)
    logits, _ = net.head(*repeat_for_samples(net.trunk(x), S), *masks)
    for s in range(S):
        ref = net(x, [m[s * B : (s + 1) * B] for m in masks]).logits
        assert torch.allclose(logits[s * B : (s + 1) * B], ref, atol=1e-5)


def test_ones_masks_equal_eval_and_train_mode_honours_masks(net: TUNEPP, x: torch.Tensor) -> None:
    ones = [s.ones_mask(WINDOW, 2) for s in net.dropout_sites()]
    ev = net.eval()(x).logits
    assert torch.equal(net(x, ones).logits, ev)
    # No BatchNorm: train() vs eval() differ only in unmasked dropout; with masks they agree exactly.
    masks = net.sample_masks(WINDOW, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(net.train()(x, masks).logits, net.eval()(x, masks).logits)
    # A scaled mask of all 1/(1-p) is not the identity.
    scaled = [m * 0 + 1 / (1 - s.p) for m, s in zip(ones, net.dropout_sites(), strict=True)]
    assert not torch.allclose(net(x, scaled).logits, ev)


def test_zero_mask_kills_channels() -> None:
    net = make_net(("head",)).eval()
    x = torch.randn(1, 1, *WINDOW)
    mask = torch.ones(1, 4)
    mask[0, :] = 0.0
    logits = net(x, [mask]).logits
    bias = net.out.bias.view(1, -1, 1, 1, 1).expand_as(logits)
    assert torch.allclose(logits, bias)  # nothing but the 1x1 conv's bias survives


def test_eval_deterministic_train_stochastic(net: TUNEPP, x: torch.Tensor) -> None:
    net.eval()
    assert torch.equal(net(x).logits, net(x).logits)
    net.train()
    assert not torch.equal(net(x).logits, net(x).logits)


@pytest.mark.parametrize("window", [(16, 16, 8), (12, 8, 20)])
def test_any_window_divisible_by_stride(net: TUNEPP, window: tuple[int, int, int]) -> None:
    assert net.total_stride == (4, 4, 4)
    out = net.eval()(torch.randn(1, 1, *window))
    assert out.logits.shape == (1, 3, *window)


def test_bad_window_and_bad_sites_fail_clearly(net: TUNEPP) -> None:
    with pytest.raises(TuneppError, match="divisible"):
        net(torch.randn(1, 1, 16, 16, 6))
    with pytest.raises(ConfigError, match="unknown site"):
        make_net(("dec7",))
    with pytest.raises(TuneppError, match="masks"):
        net.head(*net.trunk(torch.randn(1, 1, *WINDOW)))


def test_no_batchnorm_anywhere() -> None:
    net = make_net()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_gradients_reach_every_parameter(x: torch.Tensor) -> None:
    net = make_net().train()
    out = net(x)
    (out.logits.square().mean() + out.log_var.mean() + sum(a.mean() for a in out.aux_logits)).backward()
    # every parameter must matter: a gradient of rounding noise (the detectors' retired MLP bias had ~1e-11
    # to 1e-13, and exactly 0 on one thread) is a parameter the outputs cannot see
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() <= 1e-9]
    assert missing == []


def test_checkpoint_with_the_retired_detector_bias_loads_and_the_bias_had_no_effect(x: torch.Tensor) -> None:
    """Checkpoints from before 2026-12-03 carry ``detector.mlp.2.bias``: ``load_weights`` drops it, and a
    network that still has it (any value) gives the same outputs, because ``score_norm`` subtracts it."""
    from tunepp_deploy.model.blocks.topology_branch import CriticalPointDetector, retired_state_keys
    from tunepp_deploy.train.checkpoint import load_weights

    net = make_net().eval()
    old = make_net().eval()
    gen = torch.Generator().manual_seed(4)
    for det in (m for m in old.modules() if isinstance(m, CriticalPointDetector)):
        conv = det.mlp[2]
        with_bias = nn.Conv3d(conv.in_channels, 1, 1)
        with torch.no_grad():
            with_bias.weight.copy_(conv.weight)
            with_bias.bias.copy_(torch.randn(1, generator=gen) * 3)
        det.mlp[2] = with_bias
    state = old.state_dict()
    assert retired_state_keys(net) <= set(state) and len(retired_state_keys(net)) == 3
    with torch.no_grad():
        a, b = net(x), old(x)
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.log_var, b.log_var, atol=1e-5)
    fresh = make_net()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_weights(fresh, {"state_dict": state}, "old.pt")
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
