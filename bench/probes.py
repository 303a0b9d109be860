"""Measurement probes for the MC benchmark: runner wrappers, clocks and a host-memory sampler.

The MC engine (:func:`tunepp_deploy.infer.mc.mc_predict`) reports only its total time, so the
benchmark splits it from the outside instead of adding timing code to the engine:

* :class:`TimedRunner` wraps any :class:`~tunepp_deploy.infer.runners.Runner` and adds up the time
  spent inside runner calls — the **network** stage. On CUDA it records a pair of CUDA events
  around each call (no synchronisation per call, so the engine's queueing is left as it is) and
  reads them once the engine has synchronised at its end.
* The engine calls ``progress`` after each window batch has been stitched; the time from the last
  call to the engine's return is the **uncertainty** stage (normalising the blended sums and
  :func:`~tunepp_deploy.infer.uncertainty.from_samples` / ``from_moments``). What is left of the
  engine's time is **stitching**: window extraction, per-row softmax and aleatoric variance, and
  Gaussian-weighted accumulation.
* :class:`ReuseOffRunner` feeds the graph ``x`` already repeated once per sample (``R == B``), so
  the trunk runs for every row: the same batched call with trunk reuse turned off, on any backend
  (the export's graph contract documents this use).

Host memory: ``ru_maxrss`` is a high-water mark for the whole process lifetime and cannot be reset,
so it cannot attribute a peak to one configuration measured after a bigger one. :class:`RssSampler`
instead polls ``psutil`` RSS from a thread every few milliseconds while one configuration runs;
allocations shorter than the interval can be missed, so the peak is a lower bound.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import psutil
import torch

from tunepp_deploy.infer.runners.base import Runner


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work before reading a host clock (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedRunner(Runner):
    """Delegates to ``inner`` and accumulates the seconds spent in its calls (module docstring)."""

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner.meta, inner.device)
        self.inner = inner
        self.name = inner.name
        self.calls = 0
        self._host_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @property
    def max_rows(self) -> int | None:
        return self.inner.max_rows

    def describe(self) -> str:
        return self.inner.describe()

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.inner(x, masks)
            end.record()
            self._events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.inner(x, masks)
        self._host_seconds += time.perf_counter() - t0
        return out

    def seconds(self) -> float:
        """Network seconds so far (synchronises on CUDA to read the events)."""
        if not self._events:
            return self._host_seconds
        synchronize(self.device)
        return self._host_seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1000.0


class ReuseOffRunner(Runner):
    """Runs ``inner`` with the trunk recomputed for every sample row (still one batched call)."""

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner.meta, inner.device)
        self.inner = inner
        self.name = inner.name

    @property
    def max_rows(self) -> int | None:
        return self.inner.max_rows

    def describe(self) -> str:
        return self.inner.describe() + ", trunk reuse off"

    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = int(masks[0].shape[0]) if masks else int(x.shape[0])
        reps = rows // int(x.shape[0])
        # sample-major rows (row s * B + b = window b), the order the masks are in
        return self.inner(x.repeat(reps, 1, 1, 1, 1), masks)


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


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and inter-quartile range of repeated timings (seconds)."""
    vals = sorted(float(v) for v in values)
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "q1": q1, "q3": q3,
            "iqr": q3 - q1, "n": len(vals)}


__all__ = ["ReuseOffRunner", "RssSampler", "TimedRunner", "spread", "synchronize"]
