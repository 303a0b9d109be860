"""Compare two backends' outputs, Polygraphy-style: ``name -> array`` dicts, per-output tolerances.

Polygraphy (``polygraphy run --onnxrt --trt``) compares the outputs of two runners output by output,
each with its own ``atol``/``rtol``, and reports per output the largest absolute and relative
difference. This module does the same for the project's runners (torch, ONNX Runtime, TensorRT)
without taking Polygraphy on as a dependency (it would bring nothing else this project uses; its
value is its own runners and CLI), plus the check segmentation needs on top: **identical labels
wherever the reference's top-two probabilities differ by more than a margin** (a voxel whose two
best classes are within fp32 noise of each other may legitimately flip).

Element semantics follow Polygraphy's ``CompareFunc.simple``: an element fails only when it
exceeds *both* ``atol`` (absolute) and ``rtol`` (relative to the reference), so ``rtol=0`` is an
absolute-only check and ``atol=0`` a relative-only one.

    res = compare_outputs(outputs(torch_runner, x, masks), outputs(ort_runner, x, masks),
                          tolerances={"logits": Tolerance(atol=1e-4)}, labels={"probs": 1})
    assert res.passed, res.summary()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tunepp_deploy.infer.runners.base import Runner

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Tolerance:
    """Per-output tolerance: an element fails when ``|a - b| > atol`` **and** ``|a - b| / |a| > rtol``."""

    atol: float = 1e-4
    rtol: float = 0.0


@dataclass(frozen=True)
class OutputComparison:
    """How one output differs between the reference and the tested backend."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    mean_abs: float
    over: int  # elements failing the tolerance
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return self.over == 0

    def line(self) -> str:
        flag = "ok" if self.passed else "FAIL"
        return (
            f"{self.name:>12s} {self.shape!s:>22s}  max|d| {self.max_abs:.3e}  max rel {self.max_rel:.3e}  "
            f"mean|d| {self.mean_abs:.3e}  over tol {self.over} (atol {self.tolerance.atol:g}, "
            f"rtol {self.tolerance.rtol:g})  {flag}"
        )


@dataclass(frozen=True)
class LabelComparison:
    """Argmax labels of one probability output: mismatches where they matter and where they may flip."""

    name: str
    voxels: int
    mismatches: int  # labels differ and the reference's top-two margin exceeds ``margin``
    ambiguous: int  # labels differ but the margin is within ``margin`` (allowed)
    margin: float

    @property
    def passed(self) -> bool:
        return self.mismatches == 0

    def line(self) -> str:
        flag = "ok" if self.passed else "FAIL"
        return (
            f"{self.name:>12s} labels: {self.mismatches} of {self.voxels} differ where the top-two margin > "
            f"{self.margin:g} ({self.ambiguous} more within it)  {flag}"
        )


@dataclass(frozen=True)
class CompareResult:
    """Everything :func:`compare_outputs` found; ``passed`` when every output and label check passed."""

    outputs: dict[str, OutputComparison]
    labels: dict[str, LabelComparison] = field(default_factory=dict)
    missing: tuple[str, ...] = ()  # outputs present on only one side

    @property
    def passed(self) -> bool:
        return not self.missing and all(o.passed for o in self.outputs.values()) and all(
            lab.passed for lab in self.labels.values()
        )

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        lines = [o.line() for o in self.outputs.values()] + [lab.line() for lab in self.labels.values()]
        if self.missing:
            lines.append(f"outputs on one side only: {', '.join(self.missing)}")
        return "\n".join(lines)


def _np(a: Array) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu")
        a = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
        return a.numpy()
    return np.asarray(a)


def compare_arrays(name: str, ref: Array, test: Array, tol: Tolerance = Tolerance()) -> OutputComparison:
    """One output: max/mean absolute difference, max relative difference, elements over ``tol``."""
    a, b = _np(ref).astype(np.float64), _np(test).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"output {name!r}: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return OutputComparison(name, a.shape, 0.0, 0.0, 0.0, 0, tol)
    d = np.abs(a - b)
    d = np.where(np.isnan(a) & np.isnan(b), 0.0, d)  # NaN on both sides agrees; NaN on one side fails
    d = np.where(np.isnan(d), np.inf, d)
    rel = d / np.maximum(np.abs(a), np.finfo(np.float64).tiny)
    over = int(np.count_nonzero((d > tol.atol) & (rel > tol.rtol)))
    return OutputComparison(name, a.shape, float(d.max()), float(rel.max()), float(d.mean()), over, tol)


def compare_labels(
    name: str, ref_probs: Array, test_probs: Array, axis: int = 1, margin: float = 1e-4
) -> LabelComparison:
    """Argmax along ``axis``: mismatches where the reference's top-two probabilities differ by > ``margin``."""
    a, b = _np(ref_probs), _np(test_probs)
    if a.shape != b.shape:
        raise ValueError(f"output {name!r}: shapes differ, {a.shape} vs {b.shape}")
    if a.shape[axis] < 2:
        raise ValueError(f"output {name!r}: a label check needs >= 2 classes on axis {axis}")
    top2 = -np.partition(-a.astype(np.float64), 1, axis=axis)
    gap = np.take(top2, 0, axis=axis) - np.take(top2, 1, axis=axis)
    differ = np.argmax(a, axis=axis) != np.argmax(b, axis=axis)
    clear = gap > margin
    return LabelComparison(
        name, int(differ.size), int(np.count_nonzero(differ & clear)), int(np.count_nonzero(differ & ~clear)), margin
    )


def compare_outputs(
    ref: Mapping[str, Array],
    test: Mapping[str, Array],
    tolerances: Mapping[str, Tolerance] | Tolerance | None = None,
    labels: Mapping[str, int] | None = None,
    label_margin: float = 1e-4,
) -> CompareResult:
    """Compare two ``name -> array`` dicts output by output.

    ``tolerances``: one :class:`Tolerance` for all outputs, or per name (names not listed get the
    default ``Tolerance()``). ``labels``: ``{name: class axis}`` of probability outputs whose argmax
    labels must agree wherever the reference's top-two margin exceeds ``label_margin``.
    """
    per = tolerances if isinstance(tolerances, Mapping) else {}
    default = tolerances if isinstance(tolerances, Tolerance) else Tolerance()
    names = [n for n in ref if n in test]
    missing = tuple(sorted(set(ref) ^ set(test)))
    outs = {n: compare_arrays(n, ref[n], test[n], per.get(n, default)) for n in names}
    labs = {
        n: compare_labels(n, ref[n], test[n], axis, label_margin) for n, axis in (labels or {}).items() if n in outs
    }
    return CompareResult(outs, labs, missing)


@torch.inference_mode()
def runner_outputs(runner: Runner, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """One runner call as ``{"logits", "log_var", "probs"}`` (softmax over classes, fp32) on the host."""
    logits, log_var = runner(x, masks)
    probs = torch.softmax(logits.float(), dim=1)
    return {"logits": _np(logits), "log_var": _np(log_var), "probs": _np(probs)}


__all__ = [
    "CompareResult",
    "LabelComparison",
    "OutputComparison",
    "Tolerance",
    "compare_arrays",
    "compare_labels",
    "compare_outputs",
    "runner_outputs",
]
