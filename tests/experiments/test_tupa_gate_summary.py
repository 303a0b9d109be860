"""The TUPA gate experiment's seed statistics (tunepp_deploy/experiments/tupa_gate.py): the paired
supervised-minus-learned difference and the t-interval, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tunepp_deploy.experiments.tupa_gate import ci95, paired_difference


def _run(gate: str, seed: int, rho: float, dice: float) -> dict:
    return {"gate": gate, "seed": seed, "rho_gate_mean": rho, "rho_gate_finest": rho / 2, "heldout_dice": dice}


def test_ci95_matches_hand_computed_interval() -> None:
    # values 1, 2, 3: mean 2, sd 1, n 3; t_{0.975, 2} = 4.302653
    mean, half = ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(ci95([5.0])[1]) and ci95([5.0])[0] == 5.0


def test_paired_difference_pairs_by_seed_and_skips_unpaired() -> None:
    runs = [_run("learned", 0, 0.1, 0.5), _run("supervised", 0, 0.3, 0.4),
            _run("learned", 1, 0.0, 0.6), _run("supervised", 1, 0.4, 0.6),
            _run("learned", 2, 0.9, 0.9)]  # seed 2 has no supervised run: not paired
    out = paired_difference(runs)
    assert out["seeds"] == [0, 1]
    assert out["per_seed"]["rho_gate_mean"] == pytest.approx([0.2, 0.4])
    # two differences 0.2, 0.4: mean 0.3, sd 0.141421, t_{0.975, 1} = 12.706205
    mean, half = out["rho_gate_mean"]
    assert mean == pytest.approx(0.3)
    assert half == pytest.approx(12.706205 * 0.1414214 / math.sqrt(2), rel=1e-5)
    assert out["heldout_dice"][0] == pytest.approx(-0.05)
    assert paired_difference([_run("learned", 0, 0.1, 0.5)]) == {}
