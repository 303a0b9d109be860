"""TuneppLoss: the named terms, their combination from LossConfig, and gradient flow."""

from __future__ import annotations

import math

import numpy as np
import torch

from tunepp_deploy.config.schema import LossConfig
from tunepp_deploy.losses import TERMS, TuneppLoss, structure_weights
from tunepp_deploy.model import NetOutput


def _output(seed: int = 0) -> tuple[NetOutput, torch.Tensor]:
    torch.manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, 4, requires_grad=True)
    log_var = torch.randn(2, 1, 8, 8, 4, requires_grad=True)
    aux = [torch.randn(2, 3, 4, 4, 2, requires_grad=True), torch.randn(2, 3, 2, 2, 1, requires_grad=True)]
    labels = torch.zeros(2, 8, 8, 4, dtype=torch.long)
    labels[:, 2:6, 2:6, 1:3] = 1
    labels[:, 6:8, 2:6, 1:3] = 2
    return NetOutput(logits, log_var, aux), labels


def test_total_is_the_configured_combination() -> None:
    cfg = LossConfig()
    out, labels = _output()
    terms = TuneppLoss(cfg)(out, labels)
    assert set(terms) == set(TERMS)
    expected = (
        terms["dice"]
        + terms["ce"]
        + cfg.lambda1 * terms["topology"]
        + cfg.lambda2 * terms["uncertainty"]
        + cfg.lambda3 * terms["calibration"]
        + cfg.lambda4 * terms["hierarchical"]
    )
    assert math.isclose(terms["total"].item(), expected.item(), rel_tol=1e-6)
    assert all(torch.isfinite(v) for v in terms.values())


def test_every_term_has_gradient() -> None:
    out, labels = _output()
    terms = TuneppLoss(LossConfig())(out, labels)
    reaches = {
        "dice": [out.logits],
        "ce": [out.logits],
        "topology": [out.logits],
        "uncertainty": [out.logits, out.log_var],
        "calibration": [out.logits],
        "hierarchical": out.aux_logits,
    }
    for name, tensors in reaches.items():
        grads = torch.autograd.grad(terms[name], tensors, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads), name


def test_zero_lambdas_skip_terms() -> None:
    cfg = LossConfig(lambda1=0, lambda2=0, lambda3=0, lambda4=0)
    out, labels = _output()
    terms = TuneppLoss(cfg)(out, labels)
    assert terms["topology"].item() == terms["hierarchical"].item() == 0.0
    assert math.isclose(terms["total"].item(), (terms["dice"] + terms["ce"]).item(), rel_tol=1e-6)


def test_precomputed_structure_weights_match() -> None:
    cfg = LossConfig()
    out, labels = _output()
    struct = np.stack([structure_weights(v, cfg.w_b, cfg.w_j, cfg.topo_sigma) for v in labels.numpy()])
    loss = TuneppLoss(cfg)
    torch.manual_seed(0)
    a = loss(out, labels)["topology"]
    b = loss(out, labels, structure=torch.from_numpy(struct))["topology"]
    assert torch.allclose(a, b)
