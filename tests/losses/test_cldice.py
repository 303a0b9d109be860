"""Soft clDice: zero on a correct tube, breaks cost more than thickening, finite gradients."""

from __future__ import annotations

import pytest
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.losses.cldice import cldice_loss, soft_skeleton

TUBE = 1


def _tube() -> torch.Tensor:
    lab = torch.zeros(1, 32, 12, 12, dtype=torch.long)
    lab[0, 2:30, 5:8, 5:8] = TUBE  # a 3x3 tube along the first axis
    return lab


def _confident(pred: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(pred, 2).movedim(-1, 1).float()


def _dice_error(pred: torch.Tensor, lab: torch.Tensor) -> float:
    a, b = pred == TUBE, lab == TUBE
    return 1.0 - 2.0 * (a & b).sum().item() / (a.sum().item() + b.sum().item())


def test_perfect_tube_costs_zero() -> None:
    lab = _tube()
    assert cldice_loss(_confident(lab), lab, TUBE).item() < 1e-3


def test_break_costs_more_than_thickening_of_at_least_equal_dice_error() -> None:
    lab = _tube()
    broken = lab.clone()
    broken[0, 14:18, 5:8, 5:8] = 0  # a 4-voxel gap cuts the tube: 36 voxels missed
    thick = lab.clone()
    thick[0, 6:26, 8, 5:8] = TUBE  # a layer on one side: 60 extra voxels, no topology change
    assert _dice_error(thick, lab) >= _dice_error(broken, lab)
    l_broken = cldice_loss(_confident(broken), lab, TUBE).item()
    l_thick = cldice_loss(_confident(thick), lab, TUBE).item()
    assert l_broken > 2.0 * l_thick
    assert l_broken > 0.02


def test_soft_skeleton_is_the_centre_line_up_to_radius_iters() -> None:
    line = torch.zeros(1, 1, 20, 9, 9)
    line[0, 0, 3:17, 4, 4] = 1.0
    assert torch.equal(soft_skeleton(line, 3), line)
    bar = torch.zeros(1, 1, 24, 13, 13)
    bar[0, 0, 2:22, 3:10, 3:10] = 1.0  # a 7x7 bar: radius 3
    skel = soft_skeleton(bar, 3)[0, 0]
    centre = torch.zeros(24, 13, 13)
    centre[5:19, 6, 6] = 1.0  # the centre line, shortened by the erosions along the bar's axis
    assert torch.equal(skel, centre)
    assert soft_skeleton(bar, 2).sum() == 0  # thicker than iters: no skeleton (documented limit)


def test_gradient_finite_and_autocast() -> None:
    torch.manual_seed(0)
    lab = _tube()
    z = torch.randn(1, 2, 32, 12, 12, requires_grad=True)
    loss = cldice_loss(z, lab, TUBE)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cldice_loss(z, lab, TUBE)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(loss.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = cldice_loss(z.to(torch.bfloat16), lab, TUBE)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(loss.item(), abs=0.02)
    # Descent on clDice closes a break: the gap's tube probability rises.
    broken = lab.clone()
    broken[0, 14:18, 5:8, 5:8] = 0
    zb = _confident(broken, 3.0).requires_grad_(True)
    gap0 = torch.softmax(zb.detach(), 1)[0, 1, 14:18, 6, 6].mean()
    opt = torch.optim.SGD([zb], lr=50.0)
    for _ in range(20):
        opt.zero_grad()
        cldice_loss(zb, lab, TUBE).backward()
        opt.step()
    assert torch.softmax(zb.detach(), 1)[0, 1, 14:18, 6, 6].mean() > gap0 + 0.2


def test_bad_input_is_one_clear_error() -> None:
    lab = _tube()
    with pytest.raises(TuneppError, match="logits"):
        cldice_loss(torch.zeros(2, 32, 12, 12), lab, TUBE)
    with pytest.raises(TuneppError, match="labels shape"):
        cldice_loss(torch.zeros(1, 2, 32, 12, 12), lab[:, :4], TUBE)
    with pytest.raises(TuneppError, match="class"):
        cldice_loss(torch.zeros(1, 2, 32, 12, 12), lab, 5)
    with pytest.raises(TuneppError, match="iters"):
        cldice_loss(torch.zeros(1, 2, 32, 12, 12), lab, TUBE, iters=-1)
