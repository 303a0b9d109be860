"""The reusable workspace and the glibc thresholds: same storage across calls, a stated no-op elsewhere."""

from __future__ import annotations

import platform

import pytest
import torch

from tunepp_deploy.infer import allocator
from tunepp_deploy.infer.allocator import Workspace, tune_malloc


def test_workspace_reuses_and_grows() -> None:
    w = Workspace()
    a = w.get("x", (4, 5))
    b = w.get("x", (2, 10))
    assert a.data_ptr() == b.data_ptr() and b.shape == (2, 10) and b.is_contiguous()
    c = w.get("x", (100,))  # larger: a new buffer
    assert c.numel() == 100 and w.nbytes == 400
    assert w.get("x", (3,), torch.float64).dtype == torch.float64  # dtypes are separate buffers
    w.clear()
    assert w.nbytes == 0


def test_tune_malloc_is_idempotent_and_says_what_it_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_state", {})
    first = tune_malloc()
    assert tune_malloc() == first  # the first call decides
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first.startswith(("M_MMAP_THRESHOLD=", "no-op (glibc refused", "off"))
    else:
        assert first.startswith("no-op")


def test_tune_malloc_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setenv("TUNEPP_MALLOC_TUNE", "0")
    assert tune_malloc() == "off (TUNEPP_MALLOC_TUNE=0)"
