"""Per-case locks, so several ``tunepp infer`` runs can share one output folder.

Without them two runs on the same folders computed every case twice and the last writer won per file.
The lock scope is **one case**: ``OUT/.NAME.lock``, held with ``fcntl.flock(LOCK_EX | LOCK_NB)`` while
the case is checked, computed and written. ``flock`` belongs to the open file, so the kernel releases it
when its process dies — a run killed with ``kill -9`` never leaves a lock that blocks the next one
(the file stays, holding the dead run's pid/host/time, and is simply locked again). A case locked by a
live run is not waited for: the batch reports it as skipped (in progress elsewhere) and moves on, so two
runs started on one folder split its cases between them.

The lock file is removed when released. Because another process may have opened the old file just
before that, :func:`try_lock` checks after locking that the path still names the file it locked, and
retries otherwise (the usual unlink-while-locked race of lock files).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


def lock_path(out_dir: Path, name: str) -> Path:
    """``OUT/.NAME.lock``: hidden, so it is never listed as a scan or taken for an output."""
    return out_dir / f".{name}.lock"


class CaseLock:
    """A held lock on one case; :meth:`release` (or leaving the ``with`` block) unlinks and unlocks it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd < 0:
            return
        with suppress(OSError):
            self.path.unlink(missing_ok=True)  # while still locked: nobody can lock this inode in between
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = -1

    def __enter__(self) -> CaseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its file says (``pid 123 on host since 12:00:01``), or ''."""
    try:
        text = path.read_text().split()
    except OSError:
        return ""
    if len(text) < 3:
        return ""
    try:
        since = time.strftime("%H:%M:%S", time.localtime(float(text[2])))
    except ValueError:
        since = text[2]
    return f"pid {text[0]} on {text[1]} since {since}"


def _names_same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def try_lock(out_dir: Path, name: str) -> CaseLock | None:
    """Lock case ``name`` in ``out_dir`` without waiting; ``None`` if a live process holds it."""
    path = lock_path(out_dir, name)
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            if not _names_same_file(path, fd):  # released and unlinked by its holder after we opened it
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode())
            return CaseLock(path, fd)
        except BaseException:  # interrupted (SIGTERM) while taking it: leave no lock file behind
            with suppress(OSError):
                path.unlink()
            os.close(fd)
            raise
    return None


def discard_if_free(path: Path, cleanup: Callable[[], None] | None = None) -> None:
    """If no live process holds the lock at ``path``: run ``cleanup`` (e.g. remove the case's temporaries)
    while holding it, then remove the file. Used after an interruption, which can strike between creating
    a lock file and releasing it."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _names_same_file(path, fd):
            if cleanup is not None:
                cleanup()
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["CaseLock", "discard_if_free", "holder", "lock_path", "try_lock"]
