"""The TUPA fusion gate: its range, its floor, and which loss trains it (learned vs supervised)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_nets import make_net

from tunepp_deploy.config.load import load_config
from tunepp_deploy.errors import ConfigError, ModelMismatchError
from tunepp_deploy.losses.dice_ce import dice_ce_loss
from tunepp_deploy.losses.gate import gate_loss
from tunepp_deploy.model import TUNEPP, build_network
from tunepp_deploy.model.blocks.tupa import SupervisedGate, TUPABlock, UncertaintyGate
from tunepp_deploy.train.checkpoint import (
    check_compatible,
    checkpoint_config,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
#: The learned gate's parameter names as they were before ``model.gate`` existed (tupa.py at 160eee7).
OLD_GATE_KEYS = {"gate.mlp.0.weight", "gate.mlp.0.bias", "gate.mlp.2.weight", "gate.mlp.2.bias", "gate.a_raw",
                 "gate.b"}


def _supervised_net() -> TUNEPP:
    torch.manual_seed(0)
    return TUNEPP(1, 3, widths=[8, 16], depths=[1, 1], decoder_depths=[1], heads=2, proj_tokens=8,
                  dropout_sites=("dec0", "head"), gate="supervised")


def _gate_params(net: TUNEPP, part: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if ".gate." in n and part in n}


def _grad_sum(params: dict[str, torch.nn.Parameter]) -> float:
    return sum(0.0 if p.grad is None else float(p.grad.abs().sum()) for p in params.values())


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 1, 16, 16, 8, generator=g), torch.randint(0, 3, (2, 16, 16, 8), generator=g)


# ---------------------------------------------------------------------------- range and floor
def test_learned_gate_floor_at_init_is_one_third() -> None:
    """sigma >= 0 bounds w_t below by sigmoid(-a b); at init a = 1, b = ln 2: 1 / (1 + 2) = 1/3."""
    gate = UncertaintyGate(8)
    assert gate.floor() == pytest.approx(1 / 3, abs=1e-4)
    with torch.no_grad():
        gate.mlp[-1].weight.zero_()
        gate.mlp[-1].bias.fill_(-30.0)  # sigma = softplus(-30) ~ 1e-13: the floor itself
        _, w = gate(torch.randn(1, 6, 8))
    assert torch.allclose(w, torch.full_like(w, 1 / 3), atol=1e-4)
    _, w_any = UncertaintyGate(8)(torch.randn(4, 50, 8) * 10)
    assert (w_any > 1 / 3 - 1e-4).all()  # never below the floor, whatever the input


def test_supervised_gate_spans_zero_to_one_and_equals_u_at_init() -> None:
    gate = SupervisedGate(8)
    u, w, z = gate(torch.randn(2, 7, 8))
    assert torch.allclose(w, u, atol=1e-6)  # a = 1, shift = 0 at init
    assert torch.allclose(u, torch.sigmoid(z))
    with torch.no_grad():
        gate.error_head[-1].weight.zero_()
        gate.error_head[-1].bias.fill_(-12.0)
        _, w_low, _ = gate(torch.randn(1, 5, 8))
        gate.error_head[-1].bias.fill_(12.0)
        _, w_high, _ = gate(torch.randn(1, 5, 8))
    assert ((w_low > 0) & (w_low < 1e-5)).all() and ((w_high < 1) & (w_high > 1 - 1e-5)).all()


def test_supervised_gate_is_monotone_in_the_uncertainty() -> None:
    """w_t ranks tokens exactly as u does, whatever a > 0 and shift the task loss picks."""
    # seeded: unseeded, 8 of 300 draws gave two distinct u values one float32 w (a tie argsort may order
    # either way), and the fresh-clone CI of 2026-12-04 drew one of them
    torch.manual_seed(0)
    gate = SupervisedGate(8)
    with torch.no_grad():
        gate.slope_raw.fill_(-1.3)
        gate.shift.fill_(0.7)
    u, w, _ = gate(torch.randn(1, 200, 8))
    order_u, order_w = torch.argsort(u.flatten()), torch.argsort(w.flatten())
    assert torch.equal(order_u, order_w)


# ---------------------------------------------------------------------------- which loss trains it
def test_supervised_gate_is_trained_by_the_gate_loss_only() -> None:
    net = _supervised_net().train()
    x, y = _batch()
    out = net(x)
    assert len(out.gate_logits) == 3  # encoder 1 + 1, decoder 1
    assert [tuple(z.shape[2:]) for z in out.gate_logits] == [(8, 8, 4), (4, 4, 2), (8, 8, 4)]
    head, fuse = _gate_params(net, "error_head"), {**_gate_params(net, "slope_raw"), **_gate_params(net, "shift")}
    assert len(head) == 12 and len(fuse) == 6
    gate_loss(out.gate_logits, out.logits, y).backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.values())  # the fixed property
    trained = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == set(head)  # the error heads and nothing else: not a, shift, features, final logits
    net.zero_grad(set_to_none=True)
    dice, ce = dice_ce_loss(out.logits, y)
    (dice + ce).backward()
    assert _grad_sum(head) == 0.0  # the task cannot redefine what the uncertainty is ...
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fuse.values())  # ... only how it is used


def test_learned_gate_gets_gradient_only_from_the_task() -> None:
    net = make_net().train()
    x, y = _batch()
    out = net(x)
    assert out.gate_logits == ()
    g = gate_loss(out.gate_logits, out.logits, y)
    assert float(g) == 0.0 and not g.requires_grad  # nothing for the term to reach
    dice, ce = dice_ce_loss(out.logits, y)
    (dice + ce).backward()
    gate = _gate_params(net, "")
    assert set(n.split(".", 3)[3] for n in gate) >= {"gate.mlp.0.weight", "gate.a_raw", "gate.b"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.values())


def test_gate_logits_only_in_training_and_not_in_the_mc_head() -> None:
    net = _supervised_net()
    x, _ = _batch()
    assert net.eval()(x).gate_logits == ()
    assert len(net(x, with_aux=True).gate_logits) == 3
    trunk = net.trunk(x)
    masks = [torch.ones(2, s.channels) for s in net.dropout_sites()]
    logits, _ = net.head(*trunk, *masks)
    assert torch.allclose(logits, net(x, masks=masks).logits, atol=1e-5)


def test_supervised_gate_learns_a_constant_error_rate() -> None:
    """Frozen network, only the error heads train on L_gate: u moves from 1/2 to the true mean miss."""
    net = _supervised_net().train()
    x, y = _batch()
    head = list(_gate_params(net, "error_head").values())
    opt = torch.optim.Adam(head, lr=0.05)
    with torch.no_grad():
        target = float(gate_loss([torch.zeros(2, 1, 1, 1, 1)], net(x).logits, y))  # KL at u = 1/2
    for _ in range(60):
        out = net(x)
        loss = gate_loss(out.gate_logits, out.logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * target


# ---------------------------------------------------------------------------- config and checkpoints
def test_invalid_gate_is_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.gate"):
        TUNEPP(1, 3, widths=[8, 16], depths=[1, 1], heads=2, gate="fixed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gate must be"):
        TUPABlock(8, 2, 8, gate="nope")  # type: ignore[arg-type]


def test_config_default_is_learned_and_supervised_needs_its_loss() -> None:
    cfg = load_config(ROOT / "configs" / "phantom.yaml")
    assert cfg.model.gate == "learned" and cfg.loss.lambda_gate > 0
    raw = cfg.model_dump()
    raw["model"]["gate"] = "supervised"
    raw["loss"]["lambda_gate"] = 0.0
    with pytest.raises(ValueError, match="lambda_gate"):
        type(cfg).model_validate(raw)


def test_old_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    """A checkpoint written before ``model.gate`` existed (no key in its config) loads strictly."""
    cfg = load_config(ROOT / "configs" / "phantom.yaml")
    net = build_network(cfg)
    block_keys = {k.split(".", 3)[3] for k in net.state_dict() if k.startswith("encoder.0.0.gate.")}
    assert block_keys == OLD_GATE_KEYS
    path = save_checkpoint(tmp_path / "new.pt", net, cfg, epoch=1)
    raw = torch.load(path, weights_only=True)
    del raw["config"]["model"]["gate"]
    del raw["config"]["loss"]["lambda_gate"]
    torch.save(raw, tmp_path / "old.pt")
    ckpt = read_checkpoint(tmp_path / "old.pt")  # weights_only=True inside
    old_cfg = checkpoint_config(ckpt)
    assert old_cfg.model.gate == "learned"
    check_compatible(old_cfg, cfg, "old.pt")
    fresh = build_network(cfg)
    load_weights(fresh, ckpt, "old.pt")
    x = torch.randn(1, 1, *cfg.data.crop_size)
    assert torch.equal(fresh.eval()(x).logits, net.eval()(x).logits)


def test_supervised_weights_never_load_into_a_learned_network(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "phantom.yaml")
    sup = cfg.model_copy(update={"model": cfg.model.model_copy(update={"gate": "supervised"})})
    path = save_checkpoint(tmp_path / "sup.pt", build_network(sup), sup, epoch=1)
    ckpt = read_checkpoint(path)
    with pytest.raises(ModelMismatchError, match="gate"):
        check_compatible(checkpoint_config(ckpt), cfg, "sup.pt")
    with pytest.raises(ModelMismatchError, match="do not fit"):
        load_weights(build_network(cfg), ckpt, "sup.pt")



def test_recording_gates_reports_each_blocks_w_and_restores_forward() -> None:
    """The experiment's recorder sees what forward_with_internals computes, and leaves the net as it was."""
    from tunepp_deploy.experiments.tupa_gate import recording_gates

    net = _supervised_net().eval()
    x, _ = _batch()
    with torch.no_grad():
        ref = net(x).logits
        with recording_gates(net) as store:
            got = net(x).logits
        block = net.decoder[0][0]
        _, internals = block.forward_with_internals(net.up[0](net.encoder[1](net.down[0](net.encoder[0](
            net.stem(net.full(x)))))) + net.encoder[0](net.stem(net.full(x))))
    assert torch.equal(got, ref) and set(store) == {"encoder.0.0", "encoder.1.0", "decoder.0.0"}
    assert torch.allclose(store["decoder.0.0"][0], internals.w_topology)
    assert "forward" not in vars(block)  # the class's forward again
