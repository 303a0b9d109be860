"""Build a variational network by backbone name (``unet``, ``vnet``, ``fcn``)."""

from __future__ import annotations

from collections.abc import Sequence

from tunepp_deploy.errors import ConfigError
from tunepp_deploy.methods.variational.base import BayesianSegNet
from tunepp_deploy.methods.variational.fcn import VariationalFCN
from tunepp_deploy.methods.variational.unet import VariationalUNet
from tunepp_deploy.methods.variational.vnet import VariationalVNet

ARCHS: dict[str, type[BayesianSegNet]] = {"unet": VariationalUNet, "vnet": VariationalVNet, "fcn": VariationalFCN}
DEFAULT_WIDTHS = (16, 32, 64, 128)


def build_variational(
    arch: str, in_channels: int, num_classes: int, widths: Sequence[int] = DEFAULT_WIDTHS
) -> BayesianSegNet:
    """The ``arch`` backbone with Bayesian convolutions (see each module for its layout)."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown variational backbone {arch!r} (use {', '.join(ARCHS)})")
    return ARCHS[arch](in_channels, num_classes, tuple(widths))  # type: ignore[call-arg]


__all__ = ["ARCHS", "DEFAULT_WIDTHS", "build_variational"]
