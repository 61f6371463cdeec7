"""How one latency measurement is taken (:class:`MeasurementSettings`), and the names the
measurement modules share.

One settings object serves the study, ``bench``, re-measurement and the factor benchmark, so a
measurement is described the same way wherever it is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

Verdict = Literal["faster", "slower", "tie"]

#: The verdict's noise band when it is not calibrated (see the module docstring).
DEFAULT_NOISE_BAND = 0.05

#: One model input (single-input models, the historical form) or inputs by name.
Inputs: TypeAlias = "np.ndarray | Mapping[str, np.ndarray]"


@dataclass(frozen=True)
class MeasurementSettings:
    """How one latency measurement is taken. Defaults suit a quiet 2-core CPU."""

    backend: str = "onnxruntime-cpu"
    threads: int = 1
    batch_size: int = 64
    sessions: int = 3
    warmup_runs: int = 20
    warmup_s: float = 0.2
    min_iterations: int = 30
    min_session_s: float = 0.3
    max_session_s: float = 10.0
    bootstrap_resamples: int = 1000
    noise_band: float = DEFAULT_NOISE_BAND
    #: A/A runs that calibrate the noise band on the measuring device before its first verdict
    #: (see :func:`calibrated_noise_band`); 0 keeps the fixed ``noise_band``.
    calibration_runs: int = 0
    seed: int = 0
    #: Candidate and baseline runs alternate in blocks of about this many seconds; 0 runs whole
    #: sessions one after the other.
    block_s: float = 0.05
