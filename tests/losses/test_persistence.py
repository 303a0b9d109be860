"""PH topology loss: diagrams against GUDHI, connectivity against the project's Betti numbers, and
behaviour under gradient descent (a spurious blob is deleted, a ring's gap is closed)."""

from __future__ import annotations

import math

import gudhi
import numpy as np
import pytest
import torch
from tunepp_deploy.kernels import betti_error, betti_numbers

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.losses.persistence import floored_persistence, persistence_loss, superlevel_persistence


def _gudhi_superlevel(p: np.ndarray) -> dict[int, np.ndarray]:
    """GUDHI's diagram of the superlevel filtration of p (sublevel of -p, top-dimensional cells),
    as p-values, the essential class's death set to min(p) like ours."""
    cc = gudhi.CubicalComplex(top_dimensional_cells=-p)
    cc.compute_persistence()
    out: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
    for k, (b, d) in cc.persistence():
        if b == d:
            continue
        out[k].append((-b, p.min() if math.isinf(d) else -d))
    return {k: np.array(sorted(v)).reshape(-1, 2) for k, v in out.items()}


@pytest.mark.parametrize("seed", range(6))
def test_pairs_equal_gudhi_and_coordinates_hold_the_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = [(5, 6, 4), (3, 7, 5), (6, 6, 6)][seed % 3]
    p = rng.random(shape)
    if seed % 2:  # ties and plateaus, as in near-binary probability maps
        p = np.round(p * 4) / 4
    pairs = superlevel_persistence(p)
    want = _gudhi_superlevel(p)
    for k in range(3):
        sel = (pairs.dim == k) & (pairs.birth != pairs.death)
        got = np.array(sorted(zip(pairs.birth[sel], pairs.death[sel], strict=True))).reshape(-1, 2)
        assert got.shape == want[k].shape, (k, got, want[k])
        assert np.allclose(got, want[k])
    assert np.array_equal(p.ravel()[pairs.birth_idx], pairs.birth)
    assert np.array_equal(p.ravel()[pairs.death_idx], pairs.death)
    assert (pairs.birth >= pairs.death).all()
    assert pairs.essential.sum() == 1 and pairs.birth[pairs.essential][0] == p.max()


@pytest.mark.parametrize("seed", range(6))
def test_floored_pairs_are_gudhis_clamped_and_located_on_p(seed: int) -> None:
    """max(p, floor) is a monotone change of values: GUDHI's pairs of p with both ends clamped, the
    empty ones dropped — although ours come from a crop to the box of {p > floor}."""
    rng = np.random.default_rng(200 + seed)
    p = rng.random((9, 8, 7)) ** 3  # most voxels near 0, like a trained map's background
    p[: 2 + seed % 3] = 0.0  # the box of {p > floor} is smaller than the volume
    floor = [0.05, 0.2, 0.5][seed % 3]
    pairs = floored_persistence(p, floor)
    want = _gudhi_superlevel(p)
    for k in range(3):
        clamped = np.maximum(want[k], floor)
        clamped = np.array(sorted(map(tuple, clamped[clamped[:, 0] > clamped[:, 1]]))).reshape(-1, 2)
        sel = pairs.dim == k
        got = np.maximum(np.stack([pairs.birth[sel], pairs.death[sel]], 1), floor)
        got = np.array(sorted(map(tuple, got[(got[:, 0] > got[:, 1]) | pairs.essential[sel]]))).reshape(-1, 2)
        if k == 0:  # the essential class keeps its true death min(p) < floor
            clamped[np.argmax(clamped[:, 0])] = (p.max(), floor)
        assert np.allclose(got, clamped), (k, got, clamped)
    assert np.array_equal(p.ravel()[pairs.birth_idx], pairs.birth)
    assert np.array_equal(p.ravel()[pairs.death_idx], pairs.death)
    ess = pairs.essential
    assert ess.sum() == 1 and pairs.birth_idx[ess][0] == np.argmax(p) and pairs.death_idx[ess][0] == np.argmin(p)


def test_floor_keeps_the_loss_and_a_missing_organ_still_pulls() -> None:
    torch.manual_seed(3)
    lab = _scene()
    z = _confident(lab, 4, scale=4.0) + 1.5 * torch.randn(1, 4, 16, 16, 8)
    exact = persistence_loss(z, lab, floor=0.0).item()
    assert persistence_loss(z, lab, floor=1e-3).item() == pytest.approx(exact, abs=0.01 + 0.01 * exact)
    # Class 2 predicted nowhere (p ~ 1e-9 < floor everywhere): the essential class still pushes its max up.
    z = _confident(lab, 4, scale=10.0)
    z[:, 2] = -10.0
    z.requires_grad_(True)
    loss = persistence_loss(z, lab, classes=[2])
    assert loss.item() == pytest.approx(1.0 + 1.0, abs=1e-3)  # b0 and b1 of the ring missing
    (grad,) = torch.autograd.grad(loss, z)
    assert grad[0, 2].min() < 0  # descent raises class 2's logit somewhere


@pytest.mark.parametrize("seed", range(4))
def test_pairs_alive_at_a_level_are_the_betti_numbers_of_the_superlevel_set(seed: int) -> None:
    """Connectivity check: the classes alive at t are b_k({p >= t}) as the kernels count them
    (26-connected foreground, 6-connected holes). A V-construction would fail this on diagonals."""
    rng = np.random.default_rng(100 + seed)
    p = rng.random((7, 6, 5))
    pairs = superlevel_persistence(p)
    for t in np.quantile(p, [0.2, 0.4, 0.5, 0.6, 0.8]):
        alive = (pairs.birth >= t) & (pairs.death < t)
        alive |= (pairs.birth >= t) & (pairs.death_idx == np.argmin(p)) & (pairs.dim == 0)
        got = tuple(int(((pairs.dim == k) & alive).sum()) for k in range(3))
        assert got == betti_numbers((p >= t).astype(np.uint8))


def test_diagonal_voxels_form_one_component() -> None:
    p = np.zeros((3, 3, 3))
    p[0, 0, 0] = p[1, 1, 1] = 1.0  # corner-adjacent only
    pairs = superlevel_persistence(p)
    long_lived = (pairs.dim == 0) & (pairs.birth - pairs.death > 0.5)
    assert long_lived.sum() == 1


def _scene() -> torch.Tensor:
    lab = torch.zeros(1, 16, 16, 8, dtype=torch.long)
    lab[0, 2:7, 2:7, 2:6] = 1  # a cube
    lab[0, 9:14, 9:14, 3] = 2  # a square ring (b1 = 1)
    lab[0, 10:13, 10:13, 3] = 0
    lab[0, 2:6, 10:14, 1:7] = 3
    return lab


def _confident(pred: torch.Tensor, K: int, scale: float = 10.0) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(pred, K).movedim(-1, 1).float()


def test_correct_confident_prediction_costs_about_zero() -> None:
    lab = _scene()
    assert persistence_loss(_confident(lab, 4), lab).item() < 1e-4
    assert persistence_loss(_confident(lab, 4), lab, downsample=2).item() < 1e-4


def test_confident_prediction_costs_its_betti_error() -> None:
    """On a 0/1 map every pair has persistence 1, so the loss is the mean per-class Betti error."""
    lab = _scene()
    pred = lab.clone()
    pred[0, 12:15, 2:5, 2:4] = 1  # spurious component of class 1
    pred[0, 4, 4, 3] = 0  # a cavity in class 1 (b2 += 1)
    pred[0, 11, 9, 3] = 0  # cut the ring of class 2 (b1 -> 0)
    got = persistence_loss(_confident(pred, 4, scale=30.0), lab).item()
    want = betti_error(pred[0].numpy(), lab[0].numpy(), num_labels=3).mean
    assert want == pytest.approx(1.0)  # class 1: (b0 + 1) + (b2 + 1), class 2: b1 - 1, class 3: 0
    assert got == pytest.approx(want, abs=1e-3)


def test_gradient_descent_deletes_a_spurious_blob_and_keeps_the_true_one() -> None:
    torch.manual_seed(0)
    lab = torch.zeros(1, 12, 12, 8, dtype=torch.long)
    lab[0, 2:6, 2:6, 2:6] = 1
    z = torch.zeros(1, 2, 12, 12, 8)
    z[:, 1] = -3.0
    z[0, 1, 2:6, 2:6, 2:6] = 2.5  # the true blob, p ~ 0.92
    z[0, 1, 8:10, 8:10, 4:6] = 1.2  # a spurious, less confident blob, p ~ 0.77
    z = (z + 0.05 * torch.randn_like(z)).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=5.0)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = persistence_loss(z, lab)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    p = torch.softmax(z.detach(), 1)[0, 1]
    assert p[8:10, 8:10, 4:6].max() < 0.5
    assert p[2:6, 2:6, 2:6].min() > 0.5
    assert persistence_loss(z, lab).item() < 0.05 * first


def test_ring_prior_closes_the_gap() -> None:
    lab = torch.zeros(1, 10, 10, 3, dtype=torch.long)
    lab[0, 2:8, 2:8, 1] = 1
    lab[0, 3:7, 3:7, 1] = 0  # the truth is a closed square ring: crop prior (1, 1, 0)
    z = torch.zeros(1, 2, 10, 10, 3)
    z[:, 1] = -3.0
    z[0, 1][lab[0] == 1] = 2.5
    z[0, 1, 2, 5, 1] = -1.0  # the prediction has a gap, p ~ 0.12
    z.requires_grad_(True)
    p0 = torch.softmax(z.detach(), 1)[0, 1]
    opt = torch.optim.SGD([z], lr=1.0)
    for _ in range(10):
        opt.zero_grad()
        persistence_loss(z, lab).backward()
        opt.step()
    p = torch.softmax(z.detach(), 1)[0, 1]
    assert p[2, 5, 1] > 0.5 > p0[2, 5, 1]
    assert p[5, 5, 1] < 0.1  # the hole stays open


def test_crop_prior_follows_the_crop_not_the_organ() -> None:
    """A ring cut by the crop border is an arc here; a correct prediction of the arc costs 0 with the
    crop's Betti numbers and a full error with the whole organ's (1, 1, 0)."""
    lab = torch.zeros(1, 10, 10, 3, dtype=torch.long)
    lab[0, 0:8, 2:8, 1] = 1
    lab[0, 0:7, 3:7, 1] = 0  # the ring's lower side lies outside the crop
    logits = _confident(lab, 2)
    assert persistence_loss(logits, lab).item() < 1e-4
    assert persistence_loss(logits, lab, prior={1: (1, 1, 0)}).item() == pytest.approx(1.0, abs=1e-3)


def test_gradient_finite_skip_and_autocast() -> None:
    torch.manual_seed(1)
    lab = _scene()
    z = torch.randn(1, 5, 16, 16, 8, requires_grad=True)  # class 4 has no truth
    loss = persistence_loss(z, lab)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = persistence_loss(z, lab)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(loss.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = persistence_loss(z.to(torch.bfloat16), lab)  # bf16 logits from an autocast forward
    assert half.dtype == torch.float32 and math.isfinite(half.item()) and half.item() > 0
    # A class with neither truth nor prediction is skipped: only class 1 is constrained here.
    strong = _confident(lab, 5)
    strong[:, 4] = -10.0
    assert persistence_loss(strong, lab, classes=[4]).item() == 0.0
    empty = torch.zeros(1, 16, 16, 8, dtype=torch.long)
    zero = persistence_loss(_confident(empty, 5).requires_grad_(), empty)
    assert zero.item() == 0.0 and zero.requires_grad


def test_threads_and_downsample() -> None:
    """Threads change nothing; the 2x map is the max-pooled one, compared with the pooled truth."""
    torch.manual_seed(2)
    lab = _scene()
    z = torch.randn(1, 4, 16, 16, 8, requires_grad=True)
    one = persistence_loss(z, lab, floor=0.0)
    (g_one,) = torch.autograd.grad(one, z)
    two = persistence_loss(z, lab, workers=3, floor=0.0)
    (g_two,) = torch.autograd.grad(two, z)
    assert one.item() == two.item() and torch.equal(g_one, g_two)
    pooled = torch.nn.functional.max_pool3d(torch.softmax(z.detach(), 1), 2)
    want = []
    for c in (1, 2, 3):
        pairs = superlevel_persistence(pooled[0, c].double().numpy())
        prior = betti_numbers(torch.nn.functional.max_pool3d((lab == c).float()[None], 2)[0, 0].numpy() > 0.5)
        total = 0.0
        for k in range(3):
            pers = np.sort((pairs.birth - pairs.death)[pairs.dim == k])[::-1]
            total += ((1 - pers[: prior[k]]) ** 2).sum() + (pers[prior[k] :] ** 2).sum() + max(prior[k] - len(pers), 0)
        want.append(total)
    assert persistence_loss(z, lab, downsample=2, floor=0.0).item() == pytest.approx(np.mean(want), rel=1e-5)
    assert persistence_loss(z, lab, workers=3).item() == persistence_loss(z, lab).item()


def test_bad_input_is_one_clear_error() -> None:
    lab = _scene()
    with pytest.raises(TuneppError, match="logits"):
        persistence_loss(torch.zeros(4, 16, 16, 8), lab)
    with pytest.raises(TuneppError, match="labels shape"):
        persistence_loss(torch.zeros(1, 4, 16, 16, 8), lab[:, :8])
    with pytest.raises(TuneppError, match="classes"):
        persistence_loss(torch.zeros(1, 4, 16, 16, 8), lab, classes=[7])
    with pytest.raises(TuneppError, match="prior"):
        persistence_loss(_confident(lab, 4), lab, prior={1: (1, 0)})
    with pytest.raises(TuneppError, match="workers"):
        persistence_loss(_confident(lab, 4), lab, workers=0)
    with pytest.raises(TuneppError, match="floor"):
        persistence_loss(_confident(lab, 4), lab, floor=1.0)
    with pytest.raises(TuneppError, match="NaN"):
        superlevel_persistence(np.full((2, 2, 2), np.nan))


def test_missing_cripser_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cripser", None)  # makes `import cripser` raise ImportError
    with pytest.raises(TuneppError, match="pip install cripser"):
        superlevel_persistence(np.zeros((2, 2, 2)))
