"""Tasks, compression steps, accuracy, latency and cost.

This package knows nothing of Optuna or Ray: :func:`evaluate` turns one
:class:`~lepton_search.spaces.CompressionConfig` into scores and measurements.
"""

from lepton_search.objectives._compress import CompressedModel, compress
from lepton_search.objectives._cost import CostModel
from lepton_search.objectives._evaluate import (
    DeviceGate,
    NoGate,
    TrialRequest,
    TrialResult,
    evaluate,
    prepare,
)
from lepton_search.objectives._latency import (
    LatencyBackend,
    LatencyStats,
    MeasurementSettings,
    PairMeasurement,
    get_backend,
    known_backends,
    measure_pair,
    measure_sessions,
    summarize,
    verdict_of,
)

__all__ = [
    "CompressedModel",
    "CostModel",
    "DeviceGate",
    "LatencyBackend",
    "LatencyStats",
    "MeasurementSettings",
    "NoGate",
    "PairMeasurement",
    "TrialRequest",
    "TrialResult",
    "compress",
    "evaluate",
    "get_backend",
    "known_backends",
    "measure_pair",
    "measure_sessions",
    "prepare",
    "summarize",
    "verdict_of",
]
