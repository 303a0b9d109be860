"""Tiny configs, cases and a tiny TUNE++ backbone for the method tests (sizes kept CI-fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_config import ROOT, TINY

from tunepp_deploy.config.load import load_config
from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.dataset import LoadedCase
from tunepp_deploy.data.phantom import generate_case
from tunepp_deploy.data.preprocess import normalize_intensity
from tunepp_deploy.model import TUNEPP, build_network


@pytest.fixture(scope="session")
def tiny_cfg() -> TuneppConfig:
    return load_config(ROOT / "configs" / "phantom.yaml", TINY)


@pytest.fixture(scope="session")
def tiny_cases(tiny_cfg: TuneppConfig) -> list[LoadedCase]:
    out = []
    for i in range(3):
        c = generate_case(np.random.default_rng([7, i]), shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
        out.append(LoadedCase(f"c{i}", normalize_intensity(c.image, tiny_cfg.data.intensity), c.labels))
    return out


@pytest.fixture(scope="session")
def tiny_backbone(tiny_cfg: TuneppConfig) -> TUNEPP:
    torch.manual_seed(0)
    return build_network(tiny_cfg).eval()
