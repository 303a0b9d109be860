"""The TUNE++ network with an explicit Monte-Carlo-dropout interface.

``build_network(cfg)`` makes a :class:`TUNEPP`; its ``trunk`` / ``head`` / ``dropout_sites`` split is
the contract with the inference engine and the ONNX exporter (see :mod:`.network`).
"""

from tunepp_deploy.model.blocks.dropout import DropoutSite, MaskedDropout
from tunepp_deploy.model.network import (
    AUX_SITES,
    LOG_VAR_MAX,
    LOG_VAR_MIN,
    TUNEPP,
    NetOutput,
    build_network,
    repeat_for_samples,
)

__all__ = [
    "AUX_SITES",
    "LOG_VAR_MAX",
    "LOG_VAR_MIN",
    "TUNEPP",
    "DropoutSite",
    "MaskedDropout",
    "NetOutput",
    "build_network",
    "repeat_for_samples",
]
