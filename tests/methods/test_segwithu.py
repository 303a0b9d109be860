"""SegWithU head: codes, maps, temperature >= 1 with unchanged argmax, loss, training, ONNX parity
(graph and whole-volume predictors)."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tunepp_deploy.methods.segwithu import SegWithU, load_segwithu, probe_codes, save_segwithu
from tunepp_deploy.methods.segwithu.export import OUTPUTS, export_segwithu
from tunepp_deploy.methods.segwithu.losses import pairwise_ranking, segwithu_loss
from tunepp_deploy.methods.segwithu.runner import TorchSegWithURunner
from tunepp_deploy.methods.segwithu.train import HeadSettings, train_head
from tunepp_deploy.predictors.segwithu import SegWithUPredictor, open_segwithu_predictor
from tunepp_deploy.predictors.settings import RunOptions, resolve

WIN = (16, 16, 8)


@pytest.fixture
def model(tiny_backbone) -> SegWithU:
    torch.manual_seed(3)
    m = SegWithU(tiny_backbone, width=8, rank=8)
    with torch.no_grad():  # a head that actually tempers and perturbs (fresh init is near-neutral)
        for p in m.head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


def test_probe_codes_formula() -> None:
    c = probe_codes(8)
    assert c.shape == (8, 8) and set(c.unique().tolist()) == {-1.0, 1.0}
    assert torch.all(c[0] == 1)
    for k in range(8):
        for r in range(8):
            assert c[k, r] == math.copysign(1.0, math.cos(math.pi * k * (r + 0.5) / 8))
    assert torch.linalg.matrix_rank(c) == 8  # the K codes probe independent directions


def test_shapes_temperature_and_argmax(model: SegWithU) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, *WIN) * 3
    logits, out = model(x)
    assert logits.shape == out.tempered_logits.shape == (2, 5, *WIN)
    for t in (out.temperature, out.u_cal, out.u_rnk, out.u_epi, out.residual):
        assert t.shape == (2, 1, *WIN)
    assert float(out.temperature.detach().min()) >= 1.0
    assert float(out.temperature.max()) > 1.01  # it does temper somewhere
    assert torch.equal(out.tempered_logits.argmax(1), logits.argmax(1))
    assert float(out.u_epi.min()) >= 0.0 and float(out.u_cal.min()) >= 0.0


def test_no_perturbation_no_epistemic(model: SegWithU) -> None:
    with torch.no_grad():
        model.head.lift.weight.zero_()
    _, out = model(torch.randn(1, 1, *WIN))
    assert float(out.u_epi.abs().max()) == 0.0 and float(out.residual.abs().max()) == 0.0


def test_gradients_reach_head_only(model: SegWithU) -> None:
    model.train()
    torch.manual_seed(1)
    x = torch.randn(2, 1, *WIN)
    y = torch.randint(0, 5, (2, *WIN))
    logits, out = model(x)
    loss, parts = segwithu_loss(out, logits, y, torch.Generator().manual_seed(0))
    loss.backward()
    assert set(parts) == {"nll", "bce", "pair", "tail", "trust", "anchor", "residual"}
    for name, p in model.head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not model.backbone.training


def test_pairwise_ranking_by_hand() -> None:
    u = torch.tensor([3.0, 0.0, 1.0])
    e = torch.tensor([True, False, False])
    # pairs (error 3.0 vs correct 0.0 / 1.0): softplus(0 - 3), softplus(1 - 3); sampled uniformly
    got = pairwise_ranking(u, e, torch.Generator().manual_seed(0), max_pairs=10_000)
    want = 0.5 * (math.log1p(math.exp(-3)) + math.log1p(math.exp(-2)))
    assert abs(float(got) - want) < 0.01
    assert float(pairwise_ranking(u, torch.zeros(3, dtype=torch.bool), None)) == 0.0


def test_loss_deterministic_with_generator(model: SegWithU) -> None:
    x = torch.randn(1, 1, *WIN)
    y = torch.randint(0, 5, (1, *WIN))
    logits, out = model(x)
    a, _ = segwithu_loss(out, logits, y, torch.Generator().manual_seed(4))
    b, _ = segwithu_loss(out, logits, y, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_train_save_load(tiny_backbone, tiny_cfg, tiny_cases, tmp_path) -> None:
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    run = train_head(tiny_backbone, tiny_cfg, tiny_cases, HeadSettings(iters=4, batch=1, width=8))
    assert len(run.history) == 4 and all(np.isfinite(h["loss"]) for h in run.history)
    assert all(torch.equal(before[k], v) for k, v in tiny_backbone.state_dict().items())
    path = save_segwithu(tmp_path / "head.pt", run.model, tiny_cfg)
    loaded, _ = load_segwithu(path)
    x = torch.randn(1, 1, *WIN)
    with torch.no_grad():
        assert torch.equal(loaded(x)[1].u_rnk, run.model(x)[1].u_rnk)


def test_onnx_single_pass_parity(model: SegWithU, tiny_cfg, tmp_path) -> None:
    path = export_segwithu(model, tiny_cfg, WIN, tmp_path / "segwithu.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]  # no masks, no noise
    x = torch.randn(2, 1, *WIN)
    got = sess.run(list(OUTPUTS), {"x": x.numpy()})
    assert np.array_equal(got[0], sess.run(["logits"], {"x": x.numpy()})[0])  # deterministic
    with torch.no_grad():
        logits, o = model(x)
    ref = [logits, o.tempered_logits, o.temperature, o.u_cal, o.u_rnk, o.u_epi]
    for name, g, r in zip(OUTPUTS, got, ref, strict=True):
        assert np.abs(g - r.numpy()).max() <= 1e-4, name
    # the whole-volume predictors on either backend: the ONNX file alone (config + window from its metadata)
    image = np.random.default_rng(2).standard_normal((24, 20, 12)).astype(np.float32)
    cpu = torch.device("cpu")
    torch_pred = SegWithUPredictor(TorchSegWithURunner(model, cpu), tiny_cfg, WIN, resolve(tiny_cfg))
    with open_segwithu_predictor(path, "auto", cpu, 1, RunOptions()) as ort_pred:
        assert ort_pred.backend == "ort" and ort_pred.window == WIN and ort_pred.classes == torch_pred.classes
        a, b = torch_pred.predict(image), ort_pred.predict(image)
    assert torch.allclose(a.probs, b.probs, atol=1e-4) and a.info == b.info
    for name in a.maps:
        assert torch.allclose(a.maps[name], b.maps[name], atol=1e-4), name
