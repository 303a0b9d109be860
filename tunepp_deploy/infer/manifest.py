"""What makes a case report trustworthy on resume: the run manifest and the recorded output files.

A report used to be trusted by its presence alone, so a deleted or corrupt map, an empty or truncated
report, or a case made with another model, S or seed were all "skipped" as complete. Each report now
carries

* ``manifest`` — what produced the case (:func:`run_manifest`): the model file's SHA-256, method,
  backend, samples S, seed, logit-noise draws, overlap, blend, flag threshold and the tunepp version;
* ``output_files`` — ``{key: {name, bytes, sha256}}`` of every file the case wrote (``outputs``
  stays the plain ``{key: name}`` map older readers use).

:func:`case_state` then decides, for a case about to be run, whether it is ``complete`` (skip),
must be redone (anything missing, unreadable or not matching its record), belongs to ``another`` run
configuration (refused unless ``--overwrite``), or is ``blocked`` (a path it must write is a folder).
Hashing a case's outputs costs one read of files just written; the model file is hashed once per
process (cached by path, size and modification time), not once per case.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunepp_deploy import __version__

#: Manifest keys compared on resume, in the order a mismatch is described.
MANIFEST_KEYS = ("model_sha256", "method", "backend", "samples", "seed", "noise_draws", "overlap", "blend",
                 "flag_threshold", "tunepp_version")

_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def model_sha256(path: Path) -> str:
    """SHA-256 of a model file, computed once per process for a given (path, inode, size, mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(Path(path))
    return _HASHES[key]


def run_manifest(predictor: Any, model: Path | None = None, flag_threshold: float | None = None) -> dict[str, Any]:
    """The manifest of a run of ``predictor`` (module docstring); ``model`` is the file it was opened from
    (``None`` or not a file: unknown, recorded as ``None``). Settings a method does not have are
    recorded as ``None``."""
    settings = getattr(predictor, "settings", None)

    def setting(key: str) -> Any:
        return getattr(settings, key, None)

    return {
        "model_sha256": model_sha256(model) if model is not None and Path(model).is_file() else None,
        "method": predictor.method,
        "backend": predictor.backend,
        "samples": setting("samples"),
        "seed": setting("seed"),
        "noise_draws": setting("noise_draws") if predictor.method == "tunepp" else None,
        "overlap": setting("overlap"),
        "blend": setting("blend"),
        "flag_threshold": flag_threshold,
        "tunepp_version": __version__,
    }


def file_record(path: Path) -> dict[str, Any]:
    """``{name, bytes, sha256}`` of one written output (the report's ``output_files`` entry)."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def complete_report(report: Mapping[str, Any], files: Mapping[str, Path],
                    manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` with what resume verifies: ``manifest``, ``outputs`` (``{key: name}``) and ``output_files``
    (:func:`file_record` of each of ``files``, which must be written already)."""
    return {**report, "manifest": dict(manifest), "outputs": {k: p.name for k, p in files.items()},
            "output_files": {k: file_record(p) for k, p in files.items()}}


def manifest_difference(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``samples 4 -> 2, seed 1 -> 0``: the keys that differ ('' when none)."""
    diffs = []
    for k in MANIFEST_KEYS:
        a, b = recorded.get(k), current.get(k)
        if a != b:
            if k == "model_sha256":
                a, b = (str(a)[:12] if a else a), (str(b)[:12] if b else b)
            diffs.append(f"{k} {a} -> {b}")
    return ", ".join(diffs)


@dataclass(frozen=True)
class CaseState:
    """What resume should do with one case: ``complete`` (skip), ``redo``, ``another`` (made by another
    run configuration: refuse unless overwriting) or ``blocked`` (cannot be written); ``reason`` says why."""

    status: Literal["complete", "redo", "another", "blocked"]
    reason: str = ""


def read_report(path: Path) -> dict[str, Any] | None:
    """The report as a dict, or ``None`` if it is missing, empty, truncated or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _blocked(paths: Mapping[str, Path]) -> CaseState | None:
    for p in paths.values():
        if p.is_dir():
            return CaseState("blocked", f"{p}: is a folder, where the case writes a file; move it away")
    return None


def case_state(report: Path, manifest: Mapping[str, Any] | None, expected: Mapping[str, Path] | None = None,
               overwrite: bool = False) -> CaseState:
    """Decide what to do with the case whose report is ``report`` (module docstring).

    ``expected``: every file the case writes by key (``report`` included); ``manifest``: the current run's
    (``None``: not compared). With ``overwrite`` only ``blocked`` is checked (the case is redone anyway).
    """
    blocked = _blocked({**(expected or {}), "report": report})
    if blocked:
        return blocked
    if overwrite:
        return CaseState("redo", "--overwrite")
    if not report.exists():
        return CaseState("redo", "no report")
    data = read_report(report)
    if data is None:
        return CaseState("redo", "report is empty, truncated or not JSON")
    outputs, files = data.get("outputs"), data.get("output_files")
    if not isinstance(outputs, dict) or not isinstance(files, dict):
        return CaseState("redo", "report lists no output files")
    recorded = data.get("manifest")
    if not isinstance(recorded, dict):
        return CaseState("redo", "report has no run manifest")
    if manifest is not None:
        diff = manifest_difference(recorded, manifest)
        if diff:
            return CaseState("another", diff)
    wanted = set(expected or {}) - {"report"}
    if wanted - set(files):
        return CaseState("redo", f"report lacks outputs {sorted(wanted - set(files))}")
    for key, rec in files.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            return CaseState("redo", f"report's record of '{key}' is malformed")
        p = report.parent / rec["name"]
        if Path(rec["name"]).name != rec["name"] or not p.is_file():
            return CaseState("redo", f"{rec['name']} is missing")
        if p.stat().st_size != rec.get("bytes"):
            return CaseState("redo", f"{rec['name']} has {p.stat().st_size} bytes, the report recorded "
                                     f"{rec.get('bytes')}")
        if file_sha256(p) != rec.get("sha256"):
            return CaseState("redo", f"{rec['name']} differs from the file the report recorded (SHA-256)")
    return CaseState("complete")


__all__ = ["MANIFEST_KEYS", "CaseState", "case_state", "complete_report", "file_record", "file_sha256",
           "manifest_difference", "model_sha256", "read_report", "run_manifest"]
