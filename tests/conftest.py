"""Suite-wide setup: under pytest-xdist (``make test`` runs ``pytest -n auto``) each worker gets its share
of the cores, so two workers on two cores run one thread each instead of four threads fighting for two.

The thread variables are set when this file is imported, before any test module imports torch, numba or
ONNX Runtime (they read them once, at import), and subprocesses the tests start inherit them. A value the
caller already exported wins. Without xdist nothing changes.
"""

from __future__ import annotations

import os
import sys

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def worker_threads() -> int | None:
    """Threads per xdist worker (cores // workers, at least 1); None outside xdist."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None
    return max(1, (os.cpu_count() or 1) // max(1, int(workers)))


_threads = worker_threads()
if _threads is not None:
    for _var in THREAD_VARS:
        os.environ.setdefault(_var, str(_threads))
    if "torch" in sys.modules:  # a plugin imported torch before us: its pool is already sized
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
