"""Typed experiment configuration loaded from YAML."""

from tunepp_deploy.config.load import config_from_dict, config_to_dict, load_config
from tunepp_deploy.config.schema import (
    DataConfig,
    DropoutConfig,
    InferConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    TuneppConfig,
)

__all__ = [
    "DataConfig",
    "DropoutConfig",
    "InferConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "TuneppConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]
