"""The resumable, failure-isolating loop over the scans of one ``tunepp infer`` call, for every method.

TUNE++ MC dropout, SegWithU and the variational networks differ in how one case is computed, not in
how a folder of cases is walked, so the walk is written once here. A method supplies
``infer_one(image) -> report path``, which writes all of the case's outputs and its
``NAME_report.json`` **last** (:func:`write_report`), removing what it wrote if anything fails
(:func:`case_outputs`). The loop then guarantees, whatever the method:

* **resume** — a case whose report exists is complete (the report is written last, every file
  atomically) and is skipped unless ``overwrite``; a case without one is redone from scratch;
* **isolation** — a case that fails (bad scan, backend error, out of memory) is reported and the
  batch goes on; nothing of it is left behind;
* **one-line errors** — a single-file input re-raises its failure as a :class:`TuneppError`, which
  the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepp_deploy.data.layout import case_name, list_images
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import DataError, TuneppError

#: ``on_case(name, status, message)`` with status ``done``, ``skipped`` or ``failed``.
CaseCallback = Callable[[str, str, str], None]
#: ``progress(done, total)``: units of work (windows x samples) completed in the current case.
WindowProgress = Callable[[int, int], None]
#: Failures of a backend on one case that are isolated rather than ending the batch (ONNX Runtime's own
#: exception classes are wrapped into RuntimeError by the runners).
CASE_FAILURES = (RuntimeError, ValueError, MemoryError)


@dataclass
class BatchResult:
    """Outcome of a batch: names done, skipped (already complete) and failed (with the message)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)


def report_path(out_dir: Path, name: str) -> Path:
    """``NAME_report.json``: the file whose presence marks case ``name`` complete."""
    return out_dir / f"{name}_report.json"


def check_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable before any work is done (one-line error)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create output folder ({e.strerror or e})") from None
    probe = out_dir / ".tunepp_write_test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{out_dir}: output folder is not writable ({e.strerror or e})") from None


@contextmanager
def case_outputs() -> Iterator[list[Path]]:
    """Collect the paths a case writes; on any failure inside the block remove them and re-raise.

    Each file is already atomic (temporary name + rename); this makes the *case* atomic, so a
    half-written case never looks like input to a later step and is simply redone on resume.
    """
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write the case report atomically (call it last: it marks the case complete)."""
    text = json.dumps(report, indent=2)
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


class StageTimer:
    """Wall seconds per stage of one case (the report's ``timing_s``): :meth:`lap` closes a stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._t, 4)
        self._t = now


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def run_batch(
    inputs: Path | Sequence[Path],
    out_dir: Path,
    infer_one: Callable[[Path], Path],
    overwrite: bool = False,
    on_case: CaseCallback | None = None,
) -> BatchResult:
    """Run ``infer_one`` on every scan under ``inputs`` (a file, a folder, or a list of a dataset's images,
    whose failures are always isolated); module docstring for the rules."""
    listed = not isinstance(inputs, (str, Path))
    images = [Path(p) for p in inputs] if listed else list_images(inputs)  # type: ignore[arg-type]
    check_output_dir(out_dir)
    single = not listed and Path(inputs).is_file()  # type: ignore[arg-type]
    res = BatchResult()

    def tell(name: str, status: str, message: str) -> None:
        if on_case:
            on_case(name, status, message)

    for image in images:
        name = case_name(image)
        if report_path(out_dir, name).exists() and not overwrite:
            res.skipped.append(name)
            tell(name, "skipped", "report exists")
            continue
        try:
            res.reports[name] = infer_one(image)
        except TuneppError as e:
            if single:
                raise
            res.failed.append((name, str(e)))
            tell(name, "failed", str(e))
            continue
        except CASE_FAILURES as e:  # a backend failure on one case: isolate it
            if single:
                raise TuneppError(f"{image}: inference failed ({_one_line(e)})") from None
            res.failed.append((name, _one_line(e)))
            tell(name, "failed", res.failed[-1][1])
            continue
        res.done.append(name)
        tell(name, "done", str(res.reports[name]))
    return res


__all__ = [
    "CASE_FAILURES",
    "BatchResult",
    "CaseCallback",
    "StageTimer",
    "WindowProgress",
    "case_outputs",
    "check_output_dir",
    "report_path",
    "run_batch",
    "write_report",
]
