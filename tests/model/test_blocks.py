"""Shapes and gradient flow of every building block."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tunepp_deploy.model.blocks import (
    ChannelAttention,
    CriticalPointDetector,
    Downsample,
    MaskedDropout,
    ResConvBlock,
    SpatialAttention,
    TopologyAttention,
    TUPABlock,
    UncertaintyGate,
    Upsample,
    pool_grid,
)
from tunepp_deploy.model.blocks.attention_spatial import pool_cells


def _grads_ok(module: torch.nn.Module, *inputs: object) -> torch.Tensor:
    out = module(*inputs)
    out.square().mean().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient to {name}"
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            assert t.grad is not None and t.grad.abs().sum() > 0
    return out


def test_conv_blocks_shapes_and_grads() -> None:
    x = torch.randn(2, 4, 8, 8, 4, requires_grad=True)
    assert _grads_ok(ResConvBlock(4, 6), x).shape == (2, 6, 8, 8, 4)
    x = torch.randn(2, 4, 8, 8, 4, requires_grad=True)
    assert _grads_ok(Downsample(4, 8), x).shape == (2, 8, 4, 4, 2)
    x = torch.randn(2, 8, 4, 4, 2, requires_grad=True)
    assert _grads_ok(Upsample(8, 4, (2, 1, 2)), x).shape == (2, 4, 8, 4, 4)


@settings(max_examples=40, deadline=None)
@given(st.tuples(*(st.integers(1, 24),) * 3), st.integers(1, 80))
def test_pool_grid_divides_and_respects_budget(shape: tuple[int, int, int], p: int) -> None:
    grid = pool_grid(shape, p)
    assert all(s % g == 0 for s, g in zip(shape, grid, strict=True))
    if math.prod(shape) <= p:
        assert grid == shape
    else:
        assert math.prod(grid) <= p


def test_pool_grid_prefers_cubic_cells() -> None:
    assert pool_grid((24, 24, 16), 32) == (4, 4, 2)
    assert pool_grid((12, 12, 12), 64) == (4, 4, 4)
    assert pool_grid((3, 3, 2), 64) == (3, 3, 2)


def test_pool_cells_is_cell_average() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 2, 2)
    got = pool_cells(x, (2, 1, 1))
    assert torch.allclose(got, torch.tensor([[[3.5, 11.5]]]))


def test_attention_branches_shapes_and_grads() -> None:
    b, h, n, d, p = 2, 2, 24, 4, 6
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    kp, vp = (torch.randn(b, h, p, d, requires_grad=True) for _ in range(2))
    assert _grads_ok(SpatialAttention(), q, kp, vp).shape == (b, h, n, d)
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    assert _grads_ok(ChannelAttention(h), q, k, v).shape == (b, h, n, d)
    q = torch.randn(b, h, n, d, requires_grad=True)
    kc, vc = (torch.randn(b, h * d, 4, 3, 2, requires_grad=True) for _ in range(2))
    m = torch.rand(b, 1, 4, 3, 2, requires_grad=True)
    assert _grads_ok(TopologyAttention(h, 1.0), q, kc, vc, m, (2, 3, 1)).shape == (b, h, n, d)


def test_channel_attention_is_window_size_invariant_for_repeated_content() -> None:
    """L2-normalising along tokens: tiling the same content twice leaves channel attention unchanged."""
    att = ChannelAttention(2)
    q, k, v = (torch.randn(1, 2, 10, 3) for _ in range(3))
    once = att(q, k, v)
    twice = att(q.repeat(1, 1, 2, 1), k.repeat(1, 1, 2, 1), v.repeat(1, 1, 2, 1))
    assert torch.allclose(twice[:, :, :10], once, atol=1e-5)


def test_detector_and_gate_ranges() -> None:
    x = torch.randn(2, 6, 6, 6, 4, requires_grad=True)
    m = _grads_ok(CriticalPointDetector(6), x)
    assert m.shape == (2, 1, 6, 6, 4) and ((m > 0) & (m < 1)).all()
    gate = UncertaintyGate(6)
    sigma, w = gate(torch.randn(2, 10, 6))
    assert (sigma >= 0).all() and ((w > 0) & (w < 1)).all()


def test_gate_spans_both_sides_of_one_half() -> None:
    """The audit's w_t = sigmoid(sigma >= 0) never dropped below 1/2; this gate does."""
    gate = UncertaintyGate(4)
    with torch.no_grad():
        last = gate.mlp[-1]
        last.weight.zero_()
        last.bias.fill_(-20.0)  # sigma ~ 0
        _, w_low = gate(torch.randn(1, 5, 4))
        last.bias.fill_(20.0)  # sigma ~ 20
        _, w_high = gate(torch.randn(1, 5, 4))
    assert (w_low < 0.4).all() and (w_high > 0.99).all()


@pytest.mark.parametrize("shape", [(8, 8, 4), (6, 4, 10)])
def test_tupa_shapes_grads_and_internals(shape: tuple[int, int, int]) -> None:
    block = TUPABlock(8, 2, proj_tokens=8)
    x = torch.randn(2, 8, *shape, requires_grad=True)
    out = _grads_ok(block, x)
    assert out.shape == x.shape
    _, internals = block.forward_with_internals(x.detach())
    for t in internals:
        assert t.shape == (2, 1, *shape)


def test_masked_dropout_modes() -> None:
    x = torch.randn(2, 3, 4, 4, 2)
    drop = MaskedDropout("s", 3, 0.5, "channel").train()
    mask = torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]])
    y = drop(x, mask)
    assert torch.equal(y[0, 1], torch.zeros_like(y[0, 1])) and torch.equal(y[0, 0], 2 * x[0, 0])
    assert torch.equal(drop.eval()(x), x)
    el = MaskedDropout("s", 3, 0.5, "element")
    emask = (torch.rand(2, 3, 4, 4, 2) > 0.5).float() * 2
    assert torch.equal(el(x, emask), x * emask)
    with pytest.raises(ValueError):
        el(x, mask)
