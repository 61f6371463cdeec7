"""Latency: fresh inference sessions timed by an interleaved protocol, and statistics that say
how far their results can be trusted.

The parts, each in its own module:

* ``_settings``: :class:`MeasurementSettings`, how one measurement is taken;
* ``_backends``: the :class:`LatencyBackend` base class and its registry; ``_onnxruntime`` and
  ``_torch`` hold the ONNX Runtime and PyTorch backends;
* ``_protocol``: sessions, warm-up, interleaved rounds (:func:`measure_pair`,
  :func:`measure_against`, :func:`measure_model`);
* ``_statistics``: medians over sessions, within-run and re-run intervals, the ratio interval and
  the verdict;
* ``_noise``: the noise band from A/A measurements, calibrated once per run and device class.
"""

from lepton_search.objectives.latency._backends import (
    Availability,
    LatencyBackend,
    MemoryProbe,
    ResidentMemoryProbe,
    Runner,
    available_backends,
    get_backend,
    known_backends,
    register_backend,
)
from lepton_search.objectives.latency._noise import (
    DEFAULT_NOISE_FLOOR,
    NoiseBand,
    calibrate_noise_band,
    calibrated_noise_band,
    noise_band_file,
    noise_band_from_ratios,
)
from lepton_search.objectives.latency._protocol import (
    calibrate_reruns,
    measure_against,
    measure_model,
    measure_pair,
    measure_sessions,
    time_interleaved,
    time_session,
)
from lepton_search.objectives.latency._settings import DEFAULT_NOISE_BAND, Inputs, MeasurementSettings, Verdict
from lepton_search.objectives.latency._statistics import (
    MIN_RERUN_REFERENCES,
    RERUN_CONFIDENCE,
    LatencyStats,
    PairMeasurement,
    RerunCalibration,
    bootstrap_ratio_interval,
    paired_t_ratio_interval,
    ratio_interval,
    summarize,
    verdict_of,
    with_rerun_interval,
)
from lepton_search.objectives.latency._torch import load_exported_program, user_input_names

__all__ = [
    "DEFAULT_NOISE_BAND",
    "DEFAULT_NOISE_FLOOR",
    "MIN_RERUN_REFERENCES",
    "RERUN_CONFIDENCE",
    "Availability",
    "Inputs",
    "LatencyBackend",
    "LatencyStats",
    "MeasurementSettings",
    "MemoryProbe",
    "NoiseBand",
    "PairMeasurement",
    "RerunCalibration",
    "ResidentMemoryProbe",
    "Runner",
    "Verdict",
    "available_backends",
    "bootstrap_ratio_interval",
    "calibrate_noise_band",
    "calibrate_reruns",
    "calibrated_noise_band",
    "get_backend",
    "known_backends",
    "load_exported_program",
    "measure_against",
    "measure_model",
    "measure_pair",
    "measure_sessions",
    "noise_band_file",
    "noise_band_from_ratios",
    "paired_t_ratio_interval",
    "ratio_interval",
    "register_backend",
    "summarize",
    "time_interleaved",
    "time_session",
    "user_input_names",
    "verdict_of",
    "with_rerun_interval",
]
