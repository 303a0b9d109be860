"""kill -9 and SIGTERM in the middle of a batch, then a rerun that finishes with the outputs of an
uninterrupted run (issue 12, items 5 and 7): no temporary or lock file survives the rerun, SIGTERM
(what schedulers send) is handled like Ctrl-C, and a killed run's lock never blocks the next one."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from batch_tools import (
    assert_same_outputs,
    infer,
    leftovers,
    make_model,
    partial_cases,
    start_cli,
    wait_for_line,
    write_scans,
)

NAMES = ["c0", "c1", "c2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model, input folder, reference outputs of an uninterrupted run)."""
    root = tmp_path_factory.mktemp("signals")
    model = make_model(root / "model")
    write_scans(root / "in", NAMES)
    res = infer(root / "in", root / "ref", model)
    assert res.exit_code == 0, res.output
    return model, root / "in", root / "ref"


@pytest.mark.slow  # subprocess runs: ~3 torch start-ups
def test_kill9_then_sigterm_then_rerun_gives_the_uninterrupted_outputs(setup, tmp_path: Path) -> None:
    model, inp, ref = setup
    out = tmp_path / "out"

    killed = start_cli(inp, out, model)  # kill -9 once the first case is done, in the middle of the next
    wait_for_line(killed, "done ")
    killed.kill()
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    stale = out / ".c2_seg.nii.gz.k1ll3d00.tmp.nii.gz"  # what a kill during a write leaves, made certain
    stale.write_bytes(b"half a file")

    termed = start_cli(inp, out, model)  # SIGTERM in the middle of the batch: cleaned like Ctrl-C
    lines = wait_for_line(termed, "done ")
    termed.send_signal(signal.SIGTERM)
    _, err = termed.communicate(timeout=120)
    err = "".join(lines) + err
    assert termed.returncode == 143, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM" in errors[0], err
    assert [n for n in NAMES if f"skipped {n}: complete" in err] == ["c0"]  # the killed run's finished case
    assert not partial_cases(out, NAMES)
    assert set(leftovers(out)) <= {stale.name}  # no lock or temporary of the interrupted case

    final = start_cli(inp, out, model)
    _, err = final.communicate(timeout=240)
    assert final.returncode == 0, err
    assert "0 failed" in err and "Traceback" not in err
    assert_same_outputs(ref, out, NAMES)
    assert not leftovers(out) and not partial_cases(out, NAMES)
