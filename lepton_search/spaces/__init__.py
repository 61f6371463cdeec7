"""Search-space definition: typed, conditional parameters and the configs they produce.

This package knows nothing of Ray, storage or how a config is applied.
"""

from lepton_search.spaces._config import (
    CompressionConfig,
    DeploymentConfig,
    DistillConfig,
    GraphConfig,
    PruneConfig,
    QuantizeConfig,
)
from lepton_search.spaces._hardware import SpaceHardware
from lepton_search.spaces._space import (
    DeploymentSpace,
    DistillationSpace,
    GraphSpace,
    PruningSpace,
    QuantizationSpace,
    SearchSpace,
)

__all__ = [
    "CompressionConfig",
    "DeploymentConfig",
    "DeploymentSpace",
    "DistillConfig",
    "DistillationSpace",
    "GraphConfig",
    "GraphSpace",
    "PruneConfig",
    "PruningSpace",
    "QuantizationSpace",
    "QuantizeConfig",
    "SearchSpace",
    "SpaceHardware",
]
