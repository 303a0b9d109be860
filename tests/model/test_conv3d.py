""":class:`Conv3d`: batch-one CPU inference goes to oneDNN (not torch's im2col ``slow_conv3d``), with the
stock convolution's numbers; everything else is the stock path. The oracle is ``F.conv3d`` itself, and
which kernel ran is read from torch's profiler (the stock module takes ``slow_conv3d`` on these shapes,
so the routing assertions fail without the class)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile
from tunepp_deploy.export.metadata import meta_for

from tunepp_deploy.config import load_config
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.model import build_network
from tunepp_deploy.model.blocks.conv import ResConvBlock
from tunepp_deploy.model.blocks.conv3d import Conv3d, conv3d, takes_onednn

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _kernels(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "padding", "dilation", "groups", "shape"), [
    (8, 8, 3, 1, 1, 1, 1, (24, 24, 16)),   # the full-resolution block's convolution (N*C*D*H = 4608)
    (1, 8, 3, 1, 1, 1, 1, (20, 18, 14)),   # the stem, odd sizes
    (8, 16, 2, 2, 0, 1, 1, (24, 24, 16)),  # Downsample: kernel = stride
    (6, 6, 3, 1, 2, 2, 3, (16, 12, 10)),   # dilated, grouped
])
def test_batch_one_runs_onednn_with_the_stock_numbers(cin, cout, kernel, stride, padding, dilation, groups,
                                                       shape) -> None:
    torch.manual_seed(0)
    conv = Conv3d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups).eval()
    x = torch.randn(1, cin, *shape)
    with torch.inference_mode():
        want = F.conv3d(x, conv.weight, conv.bias, stride, padding, dilation, groups)
        got = conv(x)
        assert _kernels(lambda: conv(x)) >= {"aten::mkldnn_convolution"}
        assert "aten::slow_conv3d_forward" not in _kernels(lambda: conv(x))
        fn = conv3d(x, conv.weight, conv.bias, stride, padding, dilation, groups)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fn, got, rtol=0, atol=0)  # the functional form is the same call


def test_stock_module_takes_the_slow_kernel_here() -> None:
    """The reason for the class: on this shape torch's own choice is the im2col kernel."""
    conv = torch.nn.Conv3d(8, 8, 3, padding=1).eval()
    with torch.inference_mode():
        assert "aten::slow_conv3d_forward" in _kernels(lambda: conv(torch.randn(1, 8, 24, 24, 16)))


def test_everything_else_is_the_stock_path() -> None:
    conv = Conv3d(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 12, 12, 8)
    assert not takes_onednn(x, conv.weight)  # gradients on: training keeps torch's autograd path
    with torch.inference_mode():
        assert takes_onednn(x, conv.weight)
        assert not takes_onednn(torch.randn(2, 8, 12, 12, 8), conv.weight)  # torch already uses oneDNN
        assert not takes_onednn(x.double(), conv.weight.double())
        assert not takes_onednn(x, torch.randn(8, 8, 1, 1, 1))  # pointwise: native measured faster
        reflect = Conv3d(8, 8, 3, padding=1, padding_mode="reflect").eval()
        assert "aten::mkldnn_convolution" not in _kernels(lambda: reflect(x))  # padding the direct op lacks
    out = conv(x.requires_grad_())
    out.square().mean().backward()
    assert x.grad is not None and conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_drop_in_for_nn_conv3d_state_dicts() -> None:
    stock = torch.nn.Conv3d(4, 8, 3, padding=1)
    ours = Conv3d(4, 8, 3, padding=1)
    ours.load_state_dict(stock.state_dict())
    block = ResConvBlock(4, 8)
    assert isinstance(block.conv1, Conv3d) and isinstance(block.conv2, Conv3d)
    x = torch.randn(1, 4, 10, 10, 6)
    reflect_stock = torch.nn.Conv3d(4, 8, 3, padding=1, padding_mode="reflect")
    reflect = Conv3d(4, 8, 3, padding=1, padding_mode="reflect")
    reflect.load_state_dict(reflect_stock.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), stock(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reflect(x), reflect_stock(x), rtol=0, atol=0)  # the stock path, unchanged


def test_one_window_network_pass_matches_a_batch_of_two() -> None:
    """The phantom network on one window (batch one: routed) gives what the same window gives as half of a
    batch of two (torch's own oneDNN path): the routing changes no output beyond round-off."""
    cfg = load_config(REPO / "configs" / "phantom.yaml", {"data.crop_size": [32, 32, 16]})
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    meta = meta_for(net, cfg)
    x = torch.rand(1, 1, *meta.window, generator=torch.Generator().manual_seed(1))
    masks = sample_masks(meta.sites, meta.window, 2, seed=0)
    with torch.inference_mode():
        one = net(x, masks.rows([0], 1))
        two = net(torch.cat([x, torch.rand_like(x)]), masks.rows([0], 2))
    torch.testing.assert_close(one.logits[0], two.logits[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(one.log_var[0], two.log_var[0], rtol=1e-4, atol=1e-4)


def test_flop_counter_counts_a_routed_call_as_torchs_own() -> None:
    """The bench's floors count FLOPs with torch's FlopCounterMode; a routed call must count the same."""
    from torch.utils.flop_counter import FlopCounterMode

    ours, stock = Conv3d(8, 8, 3, padding=1).eval(), torch.nn.Conv3d(8, 8, 3, padding=1).eval()
    x = torch.randn(1, 8, 24, 24, 16)
    counts, ops = [], []
    for conv in (ours, stock):
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            conv(x)
        counts.append(fc.get_total_flops())
        ops.append({str(op) for op in fc.get_flop_counts()["Global"]})
    assert any("mkldnn_convolution" in op for op in ops[0])  # routed, and counted
    assert counts[0] == counts[1] == 2 * 8 * 8 * 27 * 24 * 24 * 16
