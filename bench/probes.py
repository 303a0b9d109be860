"""Measurement probes for the MC benchmark: runner wrappers, clocks and a host-memory sampler.

The MC engine (:func:`tunepp_deploy.infer.mc.mc_predict`) reports only its total time, so the
benchmark splits it from the outside instead of adding timing code to the engine:

* :class:`TimedRunner` wraps any :class:`~tunepp_deploy.infer.runners.Runner` and adds up the time
  spent inside runner calls — whole-graph calls, and the :meth:`~Runner.trunk` / :meth:`~Runner.head`
  calls of a runner that :attr:`~Runner.splits` (torch), which the engine uses to run the trunk once
  per window batch and to cache it across sample chunks — the **network** stage. On CUDA it records
  a pair of CUDA events around each call (no synchronisation per call, so the engine's queueing is
  left as it is) and reads them once the engine has synchronised at its end.
* The engine calls ``progress`` after each window batch has been stitched; the time from the last
  call to the engine's return is the **uncertainty** stage (folding the last sample chunk into the
  float64 statistics, :class:`~tunepp_deploy.infer.moments.SampleStats`, and computing the maps).
  What is left of the engine's time is **stitching**: window extraction, each sample's predictive
  with the logit noise averaged in (:func:`~tunepp_deploy.infer.logit_noise.sampled_softmax`),
  Gaussian-weighted accumulation — and, when the samples run in several chunks, the folds of the
  earlier chunks (they happen between two passes; the engine has no hook to time them apart).
* :class:`ReuseOffRunner` feeds the graph ``x`` already repeated once per sample (``R == B``), so
  the trunk runs for every row: the same batched call with trunk reuse turned off, on any backend
  (the export's graph contract documents this use). It never :attr:`~Runner.splits`.
* :class:`RowCapRunner` lowers a runner's :attr:`~Runner.max_rows`, so the engine plans smaller
  calls (the memory benchmark gives two runs the same call plan with it).

Every wrapper passes :attr:`~Runner.splits` and :meth:`~Runner.trunk_bytes` through, so the engine
plans the wrapped runner exactly as the bare one (trunk cache included).

Host memory: ``ru_maxrss`` is a high-water mark for the whole process lifetime and cannot be reset,
so it cannot attribute a peak to one configuration measured after a bigger one. :class:`RssSampler`
instead polls ``psutil`` RSS from a thread every few milliseconds while one configuration runs;
allocations shorter than the interval can be missed, so the peak is a lower bound.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import psutil
import torch

from tunepp_deploy.infer.runners.base import Runner

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work before reading a host clock (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DelegatingRunner(Runner):
    """A runner wrapping ``inner``: the engine-visible properties (row cap, trunk / head split, trunk size,
    description) and the calls pass through; subclasses override what they change."""

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner.meta, inner.device)
        self.inner = inner
        self.name = inner.name

    @property
    def max_rows(self) -> int | None:
        return self.inner.max_rows

    @property
    def splits(self) -> bool:
        return self.inner.splits

    def enable_split(self) -> bool:
        return self.inner.enable_split()

    def trunk_bytes(self, windows: int) -> int | None:
        return self.inner.trunk_bytes(windows)

    def describe(self) -> str:
        return self.inner.describe()

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x, masks)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner.trunk(x)

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.head(feats, masks)


class TimedRunner(DelegatingRunner):
    """Delegates to ``inner`` and accumulates the seconds spent in its calls (module docstring).

    ``calls`` counts what the engine counts as runner calls: whole-graph calls and head calls
    (``trunk_calls`` the trunk calls of a splitting runner). ``trunk_windows`` and ``head_rows``
    count the windows the trunk ran on and the rows the head ran on, whichever way they were
    called — what the benchmark's FLOP count is built from (a one-graph call runs the trunk once per
    window, unless the runner repeats ``x`` per row, :attr:`ReuseOffRunner.trunk_per_row`).
    """

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner)
        self.calls = 0
        self.trunk_calls = 0
        self.trunk_windows = 0
        self.head_rows = 0
        self._host_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        #: minor page faults inside runner calls (trunk and head calls included), for faults per call
        self.call_faults = 0

    def _timed(self, fn: Callable[[], T]) -> T:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            self._events.append((start, end))
            return out
        f0 = minor_faults()
        t0 = time.perf_counter()
        out = fn()
        self._host_seconds += time.perf_counter() - t0
        self.call_faults += minor_faults() - f0
        return out

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        rows = int(masks[0].shape[0]) if masks else int(x.shape[0])
        self.head_rows += rows
        self.trunk_windows += rows if getattr(self.inner, "trunk_per_row", False) else int(x.shape[0])
        return self._timed(lambda: self.inner(x, masks))

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.trunk_calls += 1
        self.trunk_windows += int(x.shape[0])
        return self._timed(lambda: self.inner.trunk(x))

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        self.head_rows += int(masks[0].shape[0]) if masks else int(feats[0].shape[0])
        return self._timed(lambda: self.inner.head(feats, masks))

    def seconds(self) -> float:
        """Network seconds so far (synchronises on CUDA to read the events)."""
        if not self._events:
            return self._host_seconds
        synchronize(self.device)
        return self._host_seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1000.0


def minor_faults() -> int:
    """This process's minor page faults so far (``ru_minflt``; 0 where ``resource`` is missing, i.e. Windows).

    Why minor faults: a temporary above glibc's mmap threshold is a fresh zero-filled mapping on every
    call, one fault per 4 KiB page touched — issue 14 measured 806k of them per MC-25 run, which cost
    more than the arithmetic. The counter is process-wide, so threads of the runtimes are included.
    """
    try:
        import resource
    except ImportError:
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


class FaultCounter:
    """``with FaultCounter() as f: ...`` then ``f.delta``: minor page faults of the block (>= 0)."""

    def __init__(self) -> None:
        self.start = 0
        self.delta = 0

    def __enter__(self) -> FaultCounter:
        self.start = minor_faults()
        return self

    def __exit__(self, *exc: object) -> None:
        self.delta = max(0, minor_faults() - self.start)


class ReuseOffRunner(DelegatingRunner):
    """Runs ``inner`` with the trunk recomputed for every sample row (still one batched call)."""

    #: The trunk runs once per row, not once per window (read by :class:`TimedRunner`'s FLOP count).
    trunk_per_row = True

    @property
    def splits(self) -> bool:
        return False  # the baseline: one whole-graph call per rows, nothing shared or cached

    def enable_split(self) -> bool:
        return False

    def trunk_bytes(self, windows: int) -> int | None:
        return None

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError("the trunk-reuse-off baseline runs its graph whole")

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("the trunk-reuse-off baseline runs its graph whole")

    def describe(self) -> str:
        return self.inner.describe() + ", trunk reuse off"

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = int(masks[0].shape[0]) if masks else int(x.shape[0])
        reps = rows // int(x.shape[0])
        # sample-major rows (row s * B + b = window b), the order the masks are in
        return self.inner(x.repeat(reps, 1, 1, 1, 1), masks)


class RowCapRunner(DelegatingRunner):
    """``inner`` with at most ``max_rows`` rows per call planned by the engine (trunk / head split kept)."""

    def __init__(self, inner: Runner, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        super().__init__(inner)
        self._max_rows = int(max_rows)

    @property
    def max_rows(self) -> int | None:
        inner = self.inner.max_rows
        return self._max_rows if inner is None else min(inner, self._max_rows)

    def describe(self) -> str:
        return f"{self.inner.describe()}, <= {self.max_rows} rows per call"


class RssSampler:
    """Peak resident set size of this process while the ``with`` block runs (module docstring)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = 0
        self.peak_bytes = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.start_bytes = self.peak_bytes = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)


#: Timed runs whose slowest is more than this times the fastest did not measure one steady state (a
#: configuration still warming up, or the machine's load changed mid-way): their median is not quoted as met.
UNSETTLED_SPREAD = 1.5


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and inter-quartile range of repeated timings (seconds), and whether they are
    ``settled`` (max <= :data:`UNSETTLED_SPREAD` x min)."""
    vals = sorted(float(v) for v in values)
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "q1": q1, "q3": q3,
            "iqr": q3 - q1, "n": len(vals), "settled": vals[-1] <= UNSETTLED_SPREAD * vals[0]}


__all__ = ["UNSETTLED_SPREAD", "DelegatingRunner", "FaultCounter", "ReuseOffRunner", "RowCapRunner", "RssSampler",
           "TimedRunner", "minor_faults", "spread", "synchronize"]
