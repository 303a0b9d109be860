"""The component-level topology term: one unit per anomalous piece whatever its size, 0 when correct,
and a gradient that deletes a 1-voxel fragment as hard as a large one."""

from __future__ import annotations

import math

import numpy as np
import torch

from tunepp_deploy.config.schema import LossConfig
from tunepp_deploy.losses import TuneppLoss
from tunepp_deploy.losses.complexity import anomaly_components
from tunepp_deploy.losses.topology import component_term
from tunepp_deploy.model import NetOutput

K = 3


def _truth() -> np.ndarray:
    lab = np.zeros((20, 20, 12), np.int64)
    lab[2:8, 2:8, 2:8] = 1  # a cube of class 1
    lab[12:18, 12:18, 2:8] = 2  # a cube of class 2
    return lab


def _probs(pred: np.ndarray, conf: float = 0.9) -> torch.Tensor:
    """One-hot-ish probabilities of ``pred`` with confidence ``conf``."""
    p = np.full((1, K, *pred.shape), (1 - conf) / (K - 1), np.float32)
    for c in range(K):
        p[0, c][pred == c] = conf
    return torch.from_numpy(p)


def _cost(pred: np.ndarray, truth: np.ndarray) -> float:
    ids, _ = anomaly_components(truth, pred, K)
    return float(component_term(_probs(pred), torch.from_numpy(truth)[None], torch.from_numpy(ids)[None]))


def test_a_correct_prediction_costs_nothing() -> None:
    t = _truth()
    ids, n = anomaly_components(t, t, K)
    assert n == 0 and not ids.any()
    assert _cost(t, t) == 0.0


def test_a_one_voxel_fragment_costs_as_much_as_a_fifty_voxel_one() -> None:
    t = _truth()
    small, big = t.copy(), t.copy()
    small[15, 4, 9] = 1  # 1 voxel, far from the class-1 cube
    big[12:17, 2:7, 9:11] = 1  # 5 x 5 x 2 = 50 voxels
    assert (big == 1).sum() - (t == 1).sum() == 50
    c_small, c_big = _cost(small, t), _cost(big, t)
    assert math.isclose(c_small, 0.95, rel_tol=1e-5)  # mean (1 - p_true) over the piece: p_true = 0.05
    assert math.isclose(c_small, c_big, rel_tol=1e-5)


def test_each_piece_is_charged_once() -> None:
    t = _truth()
    pred = t.copy()
    pred[15, 4, 9] = 1  # spurious fragment of class 1
    pred[4, 15, 9] = 2  # spurious fragment of class 2
    pred[4, 2:8, 2:8] = 0  # a slab cut through the class-1 cube: a split (its gap is one piece)
    ids, n = anomaly_components(t, pred, K)
    assert n == 3
    assert set(np.unique(ids[pred != t])) <= set(range(1, 4))
    # pieces are voxel errors only
    assert not ids[pred == t].any()
    assert math.isclose(_cost(pred, t), 3 * 0.95, rel_tol=1e-5)


def test_per_voxel_pull_is_inverse_to_the_piece_size() -> None:
    t = _truth()
    pred = t.copy()
    pred[15, 4, 9] = 1
    pred[2:7, 12:17, 9:11] = 2  # a 50-voxel spurious piece of class 2 elsewhere
    ids, n = anomaly_components(t, pred, K)
    assert n == 2
    p = _probs(pred).requires_grad_(True)
    component_term(p, torch.from_numpy(t)[None], torch.from_numpy(ids)[None]).backward()
    g = p.grad[0, 0]  # d/d p_background: the true class of both pieces
    assert math.isclose(float(g[15, 4, 9]), -1.0, rel_tol=1e-6)
    assert np.allclose(g[2:7, 12:17, 9:11].numpy(), -1.0 / 50, rtol=1e-6)
    assert float(g[t == 1].abs().sum()) == 0.0


def _net_output(pred: np.ndarray) -> tuple[NetOutput, torch.Tensor]:
    logits = torch.log(_probs(pred)).clone().requires_grad_(True)
    log_var = torch.zeros(1, 1, *pred.shape, requires_grad=True)
    return NetOutput(logits, log_var, []), logits


def test_tunepp_loss_component_mode_adds_the_anomaly_units_and_warms_up() -> None:
    t = _truth()
    pred = t.copy()
    pred[15, 4, 9] = 1
    cfg = LossConfig(topo_mode="component", lambda2=0.0, lambda3=0.0, lambda4=0.0)
    out, _ = _net_output(pred)
    lab = torch.from_numpy(t)[None]
    with_fragment = TuneppLoss(cfg)(out, lab)["topology"].item()
    clean_out, _ = _net_output(t)
    clean = TuneppLoss(cfg)(clean_out, lab)["topology"].item()
    # the fragment costs w_a * 0.95 plus its voxel's CE share, whatever else is in the volume
    assert with_fragment - clean > cfg.w_a * 0.95 - 1e-4
    warm = TuneppLoss(cfg.model_copy(update={"topo_warmup_epochs": 2}))
    assert warm(out, lab)["topology"].item() == 0.0
    warm.set_epoch(1)
    assert warm(out, lab)["topology"].item() == 0.0
    warm.set_epoch(2)
    assert math.isclose(warm(out, lab)["topology"].item(), with_fragment, rel_tol=1e-6)


def test_voxel_mode_is_unchanged_and_far_weaker_on_a_fragment() -> None:
    """The seed's voxel mean: the same fragment moves L_topo by ~w_a * CE / N (what #13 measured)."""
    t = _truth()
    pred = t.copy()
    pred[15, 4, 9] = 1
    cfg = LossConfig(topo_mode="voxel", lambda2=0.0, lambda3=0.0, lambda4=0.0)
    lab = torch.from_numpy(t)[None]
    d_voxel = TuneppLoss(cfg)(_net_output(pred)[0], lab)["topology"].item() - \
        TuneppLoss(cfg)(_net_output(t)[0], lab)["topology"].item()
    cfg_c = cfg.model_copy(update={"topo_mode": "component"})
    d_comp = TuneppLoss(cfg_c)(_net_output(pred)[0], lab)["topology"].item() - \
        TuneppLoss(cfg_c)(_net_output(t)[0], lab)["topology"].item()
    assert d_comp > 100 * d_voxel > 0
