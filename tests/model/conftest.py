"""Fixtures for the model tests."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import make_net

from tunepp_deploy.model import TUNEPP


@pytest.fixture
def net() -> TUNEPP:
    return make_net()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 1, 16, 16, 8)
