"""Tasks, compression steps, accuracy, latency and cost.

This package knows nothing of Optuna or Ray: :func:`evaluate` turns one
:class:`~lepton_search.spaces.CompressionConfig` into scores and measurements.
"""

from lepton_search.objectives._bench import (
    BenchResult,
    InputSpec,
    bench,
    bench_table,
    parse_dims,
    read_input_specs,
    synthesize_inputs,
)
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
from lepton_search.objectives._rebuild import RebuildRecipe, RebuiltModel, rebuild
from lepton_search.objectives._torch_export import compress_to_program, export_program
from lepton_search.objectives.latency import (
    Availability,
    LatencyBackend,
    LatencyStats,
    MeasurementSettings,
    MemoryProbe,
    NoiseBand,
    PairMeasurement,
    RerunCalibration,
    Runner,
    available_backends,
    calibrate_noise_band,
    calibrate_reruns,
    get_backend,
    known_backends,
    measure_model,
    measure_pair,
    measure_sessions,
    noise_band_from_ratios,
    ratio_interval,
    register_backend,
    summarize,
    verdict_of,
)

__all__ = [
    "Availability",
    "BenchResult",
    "CompressedModel",
    "CostModel",
    "DeviceGate",
    "InputSpec",
    "LatencyBackend",
    "LatencyStats",
    "MeasurementSettings",
    "MemoryProbe",
    "NoGate",
    "NoiseBand",
    "PairMeasurement",
    "RebuildRecipe",
    "RebuiltModel",
    "RerunCalibration",
    "Runner",
    "TrialRequest",
    "TrialResult",
    "available_backends",
    "bench",
    "bench_table",
    "calibrate_noise_band",
    "calibrate_reruns",
    "compress",
    "compress_to_program",
    "evaluate",
    "export_program",
    "get_backend",
    "known_backends",
    "measure_model",
    "measure_pair",
    "measure_sessions",
    "noise_band_from_ratios",
    "parse_dims",
    "prepare",
    "ratio_interval",
    "read_input_specs",
    "rebuild",
    "register_backend",
    "summarize",
    "synthesize_inputs",
    "verdict_of",
]
