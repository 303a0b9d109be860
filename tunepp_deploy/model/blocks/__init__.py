"""Building blocks of TUNE++ (the network itself is in :mod:`tunepp_deploy.model.network`)."""

from tunepp_deploy.model.blocks.attention_channel import ChannelAttention
from tunepp_deploy.model.blocks.attention_spatial import SpatialAttention, pool_grid
from tunepp_deploy.model.blocks.conv import Downsample, ResConvBlock, Upsample, group_norm
from tunepp_deploy.model.blocks.dropout import DropoutSite, MaskedDropout
from tunepp_deploy.model.blocks.topology_branch import CriticalPointDetector, TopologyAttention
from tunepp_deploy.model.blocks.tupa import TUPABlock, TupaInternals, UncertaintyGate

__all__ = [
    "ChannelAttention",
    "CriticalPointDetector",
    "Downsample",
    "DropoutSite",
    "MaskedDropout",
    "ResConvBlock",
    "SpatialAttention",
    "TUPABlock",
    "TopologyAttention",
    "TupaInternals",
    "UncertaintyGate",
    "Upsample",
    "group_norm",
    "pool_grid",
]
