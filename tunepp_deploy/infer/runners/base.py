"""The runner interface shared by every backend, in the spirit of Polygraphy's runners.

A runner evaluates the exported graph contract (:mod:`tunepp_deploy.export.onnx_export`)::

    runner(x [B, in, *window], masks [R = S' * B rows, sample-major]) -> (logits [R, K, *window],
                                                                          log_var [R, 1, *window])

whatever executes it, so the MC engine, the parity tests and the benchmark treat PyTorch, ONNX
Runtime and TensorRT alike. Inputs and outputs are torch tensors on :attr:`Runner.device`: the MC
engine stitches windows there, and GPU backends bind ``tensor.data_ptr()`` directly (no pycuda, no
host round trip).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.export.metadata import ModelMeta

#: Row cap per call on a CPU for runners that run their graph whole (ONNX Runtime's one graph,
#: OpenVINO): a call of fewer rows than a window's S samples reruns the trunk, so these take all S
#: rows of a window in one call as long as S fits. Large calls of many windows cost more than they
#: save: on the 2-core CI box, MC-25 of a 64x64x48 phantom (8 windows) took 12.4 s with 7 windows x
#: 25 samples = 175 rows per call and 8.6 s with 25 rows per call (torch, 2 threads).
CPU_ROWS_PER_CALL = 32
#: Head rows x window voxels per head call on a CPU, for runners that split trunk and head (torch,
#: the ONNX Runtime / OpenVINO pairs): the trunk runs once per window batch whatever the call size, so the
#: head can run in calls that keep its activations small. 884,736 = one row of a 96^3 window (12 rows of
#: the phantom's 48x48x32). Measured on a 96^3 synapse window, MC-25, 2 threads (bench/results/
#: head_calls_synapse_2threads_zen5*.md), one row per call vs two: torch 17.4 vs 19.9 s (33.6 vs 44.6 s
#: in a run before the bench used the engine's allocator), ONNX Runtime pair 16.3 vs 17.0 s, OpenVINO pair
#: 13.5 vs 13.7 s; the issue's own run (ORT pair) 2.40x vs 2.25x over 25 full passes for 1 vs 5 rows. On the
#: phantom volume the torch engine does not care (12 vs 25 rows: 2.93 vs 2.86 s; 1 / 2 / 4 / 25 rows
#: 3.43 / 3.47 / 3.35 / 3.50 s, alternated).
CPU_HEAD_VOXELS_PER_CALL = 96 * 96 * 96


def default_rows_per_call(window: Sequence[int], splits: bool) -> int:
    """Rows per call on a CPU when nobody chose: the head budget for split runners, else the cap."""
    if not splits:
        return CPU_ROWS_PER_CALL
    voxels = max(1, math.prod(int(n) for n in window))
    return max(1, min(CPU_ROWS_PER_CALL, CPU_HEAD_VOXELS_PER_CALL // voxels))


class Runner(ABC):
    """One loaded model on one backend. Use as a context manager or call :meth:`close`."""

    #: Backend name as the CLI spells it (``torch``, ``ort``, ``trt``).
    name: str = "?"

    def __init__(self, meta: ModelMeta, device: torch.device) -> None:
        self.meta = meta
        self.device = device

    @property
    def max_rows(self) -> int | None:
        """Most rows one call should take: a TensorRT profile's maximum (overridden there, a hard
        limit), on a CPU :func:`default_rows_per_call`, else None (the memory budget alone decides).
        ``MCSettings.rows_per_call`` replaces this default (and is bounded by a backend's own limit)."""
        return default_rows_per_call(self.meta.window, self.splits) if self.device.type == "cpu" else None

    @property
    def splits(self) -> bool:
        """Whether :meth:`trunk` / :meth:`head` can be called apart (torch); exported graphs run whole."""
        return False

    def enable_split(self) -> bool:
        """Switch to a trunk / head graph pair where the backend has one (ONNX Runtime and OpenVINO on a
        CPU); returns whether the runner :attr:`splits` now. The TUNE++ predictor calls it when a window's
        S rows do not fit one call, where a one-graph runner would rerun the trunk per call."""
        return self.splits

    def trunk_bytes(self, windows: int) -> int | None:
        """Bytes of :meth:`trunk`'s outputs for ``windows`` windows (only where :attr:`splits`)."""
        return None

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The deterministic trunk alone (only where :attr:`splits`)."""
        raise NotImplementedError(f"the {self.name} runner runs its graph whole")

    def head(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stochastic head on :meth:`trunk` outputs (only where :attr:`splits`)."""
        raise NotImplementedError(f"the {self.name} runner runs its graph whole")

    def describe(self) -> str:
        """One line for reports: backend, device and precision."""
        return f"{self.name} on {self.device}"

    def check_inputs(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> None:
        """Shape checks that every backend shares (a clear error instead of a backend's own)."""
        win = tuple(self.meta.window)
        if x.dim() != 5 or tuple(x.shape[2:]) != win or x.shape[1] != self.meta.in_channels:
            raise TuneppError(f"runner input must be [B, {self.meta.in_channels}, *{win}], got {tuple(x.shape)}")
        if len(masks) != len(self.meta.sites):
            raise TuneppError(f"runner needs {len(self.meta.sites)} masks, got {len(masks)}")
        rows = {int(m.shape[0]) for m in masks}
        if len(rows) > 1 or (rows and next(iter(rows)) % x.shape[0]):
            raise TuneppError(f"mask rows {sorted(rows)} must be equal and a multiple of the {x.shape[0]} windows")

    @abstractmethod
    def infer(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the graph; returns ``(logits, log_var)`` (float32 or float16) on :attr:`device`."""

    def __call__(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(x, masks)
        return self.infer(x, masks)

    def close(self) -> None:  # noqa: B027 - optional hook, most runners hold nothing to release
        """Release sessions/engines (default: nothing to release)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["CPU_HEAD_VOXELS_PER_CALL", "CPU_ROWS_PER_CALL", "Runner", "default_rows_per_call"]
