"""Two ``tunepp infer`` runs started together on the same folders compute each case once (issue 12,
item 3): a case one run holds the lock of is "skipped (in progress elsewhere)" by the other, a case it
finished is skipped as complete, both exit 0 and every case ends complete and verifiable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from batch_tools import MAPS, leftovers, make_model, start_cli, write_scans

from tunepp_deploy.infer.batch import report_path
from tunepp_deploy.infer.manifest import case_state

NAMES = ["k0", "k1", "k2", "k3"]


@pytest.mark.slow  # subprocess runs: ~3 torch start-ups
def test_two_concurrent_runs_compute_each_case_once(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    inp = tmp_path / "in"
    write_scans(inp, NAMES)
    out = tmp_path / "out"
    runs = [start_cli(inp, out, model) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in runs]
    for p, err in zip(runs, errs, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    done = [set(re.findall(r"^done (\w+):", err, flags=re.M)) for err in errs]
    assert done[0] | done[1] == set(NAMES), errs
    assert not done[0] & done[1], errs
    for err, mine, other in ((errs[0], done[0], done[1]), (errs[1], done[1], done[0])):
        skipped = set(re.findall(r"^skipped (\w+):", err, flags=re.M))
        assert skipped == set(NAMES) - mine and skipped <= other
    assert not leftovers(out)
    for n in NAMES:  # every case complete and verifiable (its outputs match its report's record)
        expected = {m: out / f"{n}_{m}.nii.gz" for m in MAPS}
        assert case_state(report_path(out, n), None, expected).status == "complete"
