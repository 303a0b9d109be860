"""Graph runners: one model graph on one backend, fed by name, in the spirit of Polygraphy's runners.

TUNE++'s :class:`~tunepp_deploy.infer.runners.base.Runner` executes one fixed contract (``x`` +
dropout masks -> logits, log-variance) with backend tricks that only that contract needs (trunk
reuse, CUDA graphs, TensorRT profiles). The other methods' graphs are plain "named tensors in,
named tensors out": SegWithU's single pass (``x`` -> six maps) and a variational network's sample
(``x``, ``eps_<i>`` -> ``logits``). So they share one interface, :class:`GraphRunner`, and **one**
ONNX Runtime implementation, :class:`OrtGraphRunner`; only the torch side differs per method (a
:class:`TorchGraphRunner` subclass in the method's folder maps the names onto its module's
``forward``). A predictor (:mod:`tunepp_deploy.predictors`) decides what to feed; the runner only runs.

Contract: ``run(feeds)`` takes exactly :attr:`GraphRunner.input_names` (torch tensors, any device)
and returns ``{name: float32 CPU tensor}`` for every :attr:`GraphRunner.output_names` — the CPU
because the predictors stitch windows there. A backend's own exception during a call becomes a
one-line ``RuntimeError`` (the batch loop isolates it as a failed case); a wrong set of feed names
is a :class:`TuneppError`. :func:`single_backend` is how a model file picks its backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import torch
from torch import nn

from tunepp_deploy.errors import ModelMismatchError, TuneppError
from tunepp_deploy.model_file import read_onnx_props, single_backend


class GraphRunner(ABC):
    """One loaded graph on one backend (module docstring). Use as a context manager or :meth:`close`."""

    #: Backend name as the CLI spells it (``torch``, ``ort``).
    name: str = "?"

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str], device: torch.device,
                 detail: str = "fp32") -> None:
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.device = device
        self.detail = detail

    def describe(self) -> str:
        """One line for reports: backend, device and what runs it."""
        return f"{self.name} on {self.device} ({self.detail})"

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the graph on ``feeds`` (exactly :attr:`input_names`); returns float32 CPU outputs by name."""
        if set(feeds) != set(self.input_names):
            raise TuneppError(f"{self.name} runner takes inputs {list(self.input_names)}, got {sorted(feeds)}")
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backend part of :meth:`run` (names already checked)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the session or network."""

    def __enter__(self) -> GraphRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class TorchGraphRunner(GraphRunner):
    """A module on ``device`` in eval mode, no gradients; subclasses map the names in :meth:`forward`.

    ``forward(*inputs)`` gets the feeds in :attr:`input_names` order (on the device) and returns the
    outputs in :attr:`output_names` order.
    """

    name = "torch"

    def __init__(self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str],
                 device: torch.device, threads: int | None = None, detail: str = "fp32") -> None:
        super().__init__(input_names, output_names, device, detail)
        if threads:
            torch.set_num_threads(threads)
        self.module = module.to(device).eval()

    @abstractmethod
    def forward(self, *inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        """The module's outputs for ``inputs`` (module docstring)."""

    def _run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            outs = self.forward(*(feeds[n].to(self.device) for n in self.input_names))
        return {n: o.float().cpu() for n, o in zip(self.output_names, outs, strict=True)}


def one_line(e: BaseException) -> str:
    """The first line of a backend's exception (at most 200 characters), or its type when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class OrtGraphRunner(GraphRunner):
    """An ONNX graph (path or serialized bytes) in one ONNX Runtime session.

    The session comes from :func:`~tunepp_deploy.infer.runners.ort_runner.make_session` (provider
    choice and load errors as for TUNE++'s graphs). Feeds go in as host float32 arrays: these graphs
    are small per call and ORT copies to the CUDA provider itself. ``outputs``: which graph outputs
    :meth:`run` returns (default: all, in graph order).
    """

    name = "ort"

    def __init__(self, model: str | Path | bytes, device: torch.device, threads: int | None = None,
                 outputs: Sequence[str] | None = None) -> None:
        from tunepp_deploy.infer.runners.ort_runner import make_session

        source = model if isinstance(model, bytes) else str(model)
        self.session = make_session(source, device, threads)
        graph_outputs = [o.name for o in self.session.get_outputs()]
        wanted = list(outputs) if outputs is not None else graph_outputs
        missing = [n for n in wanted if n not in graph_outputs]
        if missing:
            where = "the graph" if isinstance(model, bytes) else str(model)
            raise ModelMismatchError(f"{where}: has no outputs {missing} (it has {graph_outputs})")
        super().__init__([i.name for i in self.session.get_inputs()], wanted, device,
                         f"{self.session.get_providers()[0]}, fp32")

    @property
    def input_shapes(self) -> dict[str, tuple[int | str | None, ...]]:
        """Each input's declared shape (ints where static, a name or None where dynamic)."""
        return {i.name: tuple(i.shape) for i in self.session.get_inputs()}

    def _run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {n: t.detach().to("cpu", torch.float32).contiguous().numpy() for n, t in feeds.items()}
        try:
            outs = self.session.run(list(self.output_names), arrays)
        except Exception as e:  # ORT's exception classes derive from Exception only: make it a case failure
            raise RuntimeError(f"ONNX Runtime: {one_line(e)}") from None
        return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs, strict=True)}


def onnx_props(path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata props (:func:`tunepp_deploy.model_file.read_onnx_props`)."""
    return read_onnx_props(path)


__all__ = ["GraphRunner", "OrtGraphRunner", "TorchGraphRunner", "one_line", "onnx_props", "single_backend"]
