"""``make_session``: the CPU session's thread count and its idle threads not spinning (they would take
the cores the MC engine's numba kernels run on between ONNX Runtime calls; the speed is a benchmark)."""

from __future__ import annotations

from pathlib import Path

import torch

from tunepp_deploy.infer.runners.ort_runner import make_session


def test_cpu_session_threads_and_no_spinning(onnx_file: Path) -> None:
    sess = make_session(str(onnx_file), torch.device("cpu"), threads=1)
    opts = sess.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = sess.get_inputs()[0]
    assert x.name == "x" and sess.get_providers() == ["CPUExecutionProvider"]
