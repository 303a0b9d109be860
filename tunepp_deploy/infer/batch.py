"""The resumable, failure-isolating loop over the scans of one ``tunepp infer`` call, for every method.

TUNE++ MC dropout, SegWithU and the variational networks differ in how one case is computed, not in
how a folder of cases is walked, so the walk is written once here. A method supplies
``infer_one(image) -> report path``, which writes all of the case's outputs and its
``NAME_report.json`` **last** (:func:`write_report`), removing what it wrote if anything fails
(:func:`case_outputs`). The loop then guarantees, whatever the method:

* **checked names** — every case name is checked before any work: empty or hidden names and scans
  that map to the same case (``case.nii`` / ``case.nii.gz`` / ``case_0000.nii.gz``) are one-line errors
  (:func:`tunepp_deploy.data.layout.case_names`); with ``-o`` equal to ``-i`` the tool's own outputs are
  not listed as scans;
* **a shared folder** — each case is computed under its own lock (:mod:`tunepp_deploy.infer.lock`):
  a case another live run holds is skipped ("in progress elsewhere") and the batch moves on, so two
  runs on one folder compute each case once. Temporary files a killed run left for a case are removed
  once its lock is held (only then can no live run be writing them). The write probe has a unique name;
* **verified resume** — a case is skipped only if its report parses, lists every output, every output
  has the recorded size and SHA-256, and its run manifest matches this run's
  (:func:`tunepp_deploy.infer.manifest.case_state`); otherwise its old files are removed and it is
  redone. Reports made with another configuration (model, method, S, seed, ...) refuse the **whole
  run** before any work, with a one-line error saying what differs and to use ``--overwrite``: one
  folder mixing configurations is what silently happened before. A path the case must write that is a
  folder fails that case;
* **isolation** — a case that fails in any way (bad scan, nibabel, backend, OS or memory error; any
  ``Exception``) is reported and the batch goes on; nothing of it is left behind. ``KeyboardInterrupt``
  (and SIGTERM, which the CLI turns into one) ends the batch, still removing the case's partial files;
* **one-line errors** — a single-file input re-raises its failure as a :class:`TuneppError`, which
  the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepp_deploy.data.layout import case_names, list_images
from tunepp_deploy.data.nifti import write_atomic
from tunepp_deploy.errors import DataError, TuneppError
from tunepp_deploy.infer.lock import discard_if_free, holder, lock_path, try_lock
from tunepp_deploy.infer.manifest import case_state, manifest_difference, read_report

#: ``on_case(name, status, message)`` with status ``done``, ``skipped`` or ``failed``.
CaseCallback = Callable[[str, str, str], None]
#: ``progress(done, total)``: units of work (windows x samples) completed in the current case.
WindowProgress = Callable[[int, int], None]
#: ``outputs_of(name) -> {key: path}``: every file case ``name`` writes, its report included.
OutputsOf = Callable[[str], Mapping[str, Path]]
#: Failures of one case that are isolated rather than ending the batch: every ``Exception`` (nibabel's
#: HeaderDataError, ONNX Runtime's errors, OSError, MemoryError, ...); never KeyboardInterrupt/SystemExit.
CASE_FAILURES = (Exception,)
#: The message of a case another live run is computing.
IN_PROGRESS = "in progress elsewhere"


@dataclass
class BatchResult:
    """Outcome of a batch: names done, skipped (already complete, or in progress in another run:
    ``busy``) and failed (with the message)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)


def report_path(out_dir: Path, name: str) -> Path:
    """``NAME_report.json``: the file whose (verified) presence marks case ``name`` complete."""
    return out_dir / f"{name}_report.json"


def check_output_dir(out_dir: Path) -> bool:
    """Create ``out_dir`` and prove it is writable before any work is done (one-line error).

    The probe file has a unique name (two runs starting at once must not delete each other's probe and
    report a false "not writable"). Returns whether the folder was created here (see :func:`remove_if_empty`).
    """
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create output folder ({e.strerror or e})") from None
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file, expected an output folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tunepp_write_test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"{out_dir}: output folder is not writable ({e.strerror or e})") from None
    return created


def remove_if_empty(out_dir: Path) -> None:
    """Remove an output folder this run created if nothing was written to it (a model error must not
    leave an empty folder behind)."""
    with suppress(OSError):
        out_dir.rmdir()  # fails unless empty


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
    """Write the case report atomically (call it last: it marks the case complete).

    Strict JSON (``allow_nan=False``): a NaN in a report is a bug to surface, not a file other tools
    cannot parse.
    """
    text = json.dumps(report, indent=2, allow_nan=False)
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
    if isinstance(e, TuneppError):
        return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _case_files(out_dir: Path, name: str, outputs_of: OutputsOf | None) -> dict[str, Path]:
    files = dict(outputs_of(name)) if outputs_of else {}
    files["report"] = report_path(out_dir, name)
    return files


def remove_stale_temps(files: Mapping[str, Path]) -> None:
    """Remove the temporary files (``.FILE.XXXX.tmp*``, :func:`~tunepp_deploy.data.nifti.write_atomic`) a
    killed run left for these outputs. Call it only while holding the case's lock."""
    for p in files.values():
        for tmp in glob.glob(os.path.join(glob.escape(str(p.parent)), f".{glob.escape(p.name)}.*.tmp*")):
            with suppress(OSError):
                os.unlink(tmp)


def _clear(files: Mapping[str, Path]) -> None:
    """Remove a case's old outputs before redoing it, report first (it is what marks a case complete)."""
    order = [files["report"], *(p for k, p in files.items() if k != "report")]
    for p in order:
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)


def refuse_other_runs(names: Sequence[str], out_dir: Path, manifest: Mapping[str, Any] | None) -> None:
    """One-line :class:`DataError` if a report in ``out_dir`` of one of ``names`` was made with another run
    configuration (module docstring: the whole run is refused before any work)."""
    if manifest is None:
        return
    others = []
    for n in names:
        p = report_path(out_dir, n)
        data = read_report(p) if p.is_file() else None
        rec = data.get("manifest") if data else None
        if isinstance(rec, dict) and manifest_difference(rec, manifest):
            others.append((n, manifest_difference(rec, manifest)))
    if others:
        n, diff = others[0]
        raise DataError(f"{out_dir}: {len(others)} case report(s) were made with another configuration "
                        f"({diff}; e.g. {n}); rerun with --overwrite to redo them, or use another -o")


def run_batch(
    inputs: Path | Sequence[Path],
    out_dir: Path,
    infer_one: Callable[[Path], Path],
    overwrite: bool = False,
    on_case: CaseCallback | None = None,
    manifest: Mapping[str, Any] | None = None,
    outputs_of: OutputsOf | None = None,
) -> BatchResult:
    """Run ``infer_one`` on every scan under ``inputs`` (a file, a folder, or a list of a dataset's images,
    whose failures are always isolated); module docstring for the rules.

    ``manifest``: this run's (:func:`tunepp_deploy.infer.manifest.run_manifest`), compared with each
    report's; ``outputs_of``: the files a case writes (verified on resume, cleared before a redo).
    """
    listed = not isinstance(inputs, (str, Path))
    images = [Path(p) for p in inputs] if listed else list_images(inputs, out_dir)  # type: ignore[arg-type]
    names = case_names(images)
    check_output_dir(out_dir)
    single = not listed and Path(inputs).is_file()  # type: ignore[arg-type]
    if not overwrite:
        refuse_other_runs(names, out_dir, manifest)
    res = BatchResult()

    def tell(name: str, status: str, message: str) -> None:
        if on_case:
            on_case(name, status, message)

    def fail(name: str, image: Path, e: BaseException | str) -> None:
        msg = e if isinstance(e, str) else _one_line(e)
        if single:
            if isinstance(e, TuneppError):
                raise e
            raise TuneppError(msg if isinstance(e, str) else f"{image}: inference failed ({msg})") from None
        res.failed.append((name, msg))
        tell(name, "failed", msg)

    def one_case(image: Path, name: str) -> None:
        if image.is_symlink() and not image.exists():
            fail(name, image, f"{image}: dangling symbolic link (its target {os.readlink(image)} does not exist)")
            return
        try:
            lock = try_lock(out_dir, name)
        except OSError as e:
            fail(name, image, f"{lock_path(out_dir, name)}: cannot create the case lock ({e.strerror or e})")
            return
        if lock is None:
            who = holder(lock_path(out_dir, name))
            res.skipped.append(name)
            res.busy.append(name)
            tell(name, "skipped", f"{IN_PROGRESS}{f' ({who})' if who else ''}")
            return
        with lock:
            files = _case_files(out_dir, name, outputs_of)
            try:
                remove_stale_temps(files)
                state = case_state(files["report"], manifest, files if outputs_of else None, overwrite)
            except Exception as e:  # an unreadable output folder entry: this case only
                fail(name, image, e)
                return
            if state.status == "complete":
                res.skipped.append(name)
                tell(name, "skipped", "complete (report and outputs verified)")
                return
            if state.status == "blocked":
                fail(name, image, state.reason)
                return
            if state.status == "another":  # made by another run while this one was starting
                fail(name, image, f"{files['report']}: made with another configuration ({state.reason}); "
                                  "rerun with --overwrite to redo it")
                return
            try:
                _clear(files)
                res.reports[name] = infer_one(image)
            except CASE_FAILURES as e:  # any failure of one case: isolate it
                fail(name, image, e)
                return
        res.done.append(name)
        tell(name, "done", str(res.reports[name]))

    current: str | None = None
    try:
        for image, name in zip(images, names, strict=True):
            current = name
            one_case(image, name)
    except BaseException:  # interrupted: leave no lock or temporary of the case in progress
        if current is not None:
            files = _case_files(out_dir, current, outputs_of)
            discard_if_free(lock_path(out_dir, current), lambda: remove_stale_temps(files))
        raise
    return res


__all__ = [
    "CASE_FAILURES",
    "IN_PROGRESS",
    "BatchResult",
    "CaseCallback",
    "OutputsOf",
    "StageTimer",
    "WindowProgress",
    "case_outputs",
    "check_output_dir",
    "refuse_other_runs",
    "remove_if_empty",
    "remove_stale_temps",
    "report_path",
    "run_batch",
    "write_report",
]
