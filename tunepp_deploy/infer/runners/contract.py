"""The TUNE++ graph contract every ONNX-file runner checks before its first window.

Metadata can be copied onto any graph, so a file that opens fine may still not be the graph
:mod:`tunepp_deploy.export.onnx_export` writes; a graph whose mask inputs were folded into constants
would run deterministically and give zero epistemic maps, silently. Each runner reads its backend's
view of the graph's ports and hands the names here, then checks ranks and element types with its
backend's own API.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunepp_deploy.errors import ModelMismatchError
from tunepp_deploy.export.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMeta


def expected_io(meta: ModelMeta) -> tuple[dict[str, int], dict[str, int]]:
    """``({input: rank}, {output: rank})`` of the contract for ``meta``: ``x`` rank 5, each mask its
    site's mask rank, ``logits`` / ``log_var`` rank 5."""
    inputs = {INPUT_NAME: 5, **{n: len(s.mask_shape(meta.window, 1)) for n, s in zip(meta.mask_names, meta.sites,
                                                                                    strict=True)}}
    return inputs, {n: 5 for n in OUTPUT_NAMES}


def check_io_names(where: str, meta: ModelMeta, inputs: Iterable[str], outputs: Iterable[str]
                   ) -> tuple[dict[str, int], dict[str, int]]:
    """Refuse (one line) a graph whose input names are not exactly the contract's or that lacks an
    output; returns :func:`expected_io` for the caller's rank and type checks."""
    want_in, want_out = expected_io(meta)
    got_in, got_out = set(inputs), set(outputs)
    if got_in != set(want_in):
        raise ModelMismatchError(f"{where}: graph inputs {sorted(got_in)} are not the tunepp contract's "
                                 f"{sorted(want_in)} (a foreign graph with tunepp metadata?)")
    missing = [n for n in want_out if n not in got_out]
    if missing:
        raise ModelMismatchError(f"{where}: graph has no outputs {missing} (it has {sorted(got_out)})")
    return want_in, want_out


__all__ = ["check_io_names", "expected_io"]
