"""Layers shared by the method networks (one layer type per module)."""

from tunepp_deploy.methods.blocks.bayes_conv import BayesConv3d, NoiseFeed
from tunepp_deploy.methods.blocks.preact import PreActResBlock

__all__ = ["BayesConv3d", "NoiseFeed", "PreActResBlock"]
