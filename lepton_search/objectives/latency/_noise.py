"""The noise band: how large a difference A/A measurements on this device show.

Noise band and verdict. ``verdict_of`` calls the candidate faster only if the whole ratio interval
lies below ``1 - δ``, slower only if it lies above ``1 + δ``, and otherwise a tie. δ is the
device's noise band: what an A/A measurement (a model against itself, same protocol) shows as a
difference. :func:`calibrate_noise_band` measures it: it runs ``runs`` A/A measurements and takes
δ = max(floor, q-quantile of |ratio - 1|), with q = 1 (the largest deviation) by default and a
floor of 0.02. With q = 1 none of the calibration runs would itself have been called a difference
under δ. The static default (``MeasurementSettings.noise_band = 0.05``) has margin over what A/A
runs at one thread on the 2-core machines here showed: 20 A/A runs of the digits CNN deviated by
at most 2.6% with block interleaving (10% with whole sessions one after the other). With several
threads or on a busier machine, calibrate (``lepton-search bench --noise-band auto``): A/A runs
with all threads of a shared 2-core machine deviated by 15-20%.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_search._atomic import write_json_atomically
from lepton_search.devices._machine import (
    device_class_of,
)
from lepton_search.errors import MeasurementError
from lepton_search.objectives.latency._backends import (
    LatencyBackend,
    get_backend,
)
from lepton_search.objectives.latency._protocol import measure_pair
from lepton_search.objectives.latency._settings import Inputs, MeasurementSettings
from lepton_search.objectives.latency._statistics import (
    RerunCalibration,
    verdict_of,
)

#: The smallest noise band a calibration returns: below 2% the verdict would hang on timer and
#: frequency effects that a handful of A/A runs cannot show.
DEFAULT_NOISE_FLOOR = 0.02


@dataclass(frozen=True)
class NoiseBand:
    """A noise band derived from A/A measurements (see the module docstring for the policy).

    ``medians_ms`` holds each A/A run's median of the model (the geometric mean of its two sides):
    separate measurements one after another, from which :meth:`rerun_calibration` gives re-run
    intervals. ``device_class`` is the device the band was calibrated on; it judges measurements on
    that class only. Both are empty in bands stored before they were recorded.
    """

    delta: float
    ratios: list[float]
    ratio_cis: list[tuple[float, float]]
    quantile: float
    floor: float
    medians_ms: list[float] = field(default_factory=list)
    device_class: str | None = None

    @property
    def runs(self) -> int:
        return len(self.ratios)

    @property
    def ties(self) -> int:
        """A/A runs whose verdict under ``delta`` is a tie, as it should be for a model and itself."""
        return sum(verdict_of(ci, self.delta) == "tie" for ci in self.ratio_cis)

    @property
    def cis_containing_one(self) -> int:
        """A/A runs whose ratio interval contains 1.0, as a correct interval's should."""
        return sum(low <= 1.0 <= high for low, high in self.ratio_cis)

    def rerun_calibration(self) -> RerunCalibration | None:
        """The A/A runs' medians as a :class:`RerunCalibration` (None for a band without them)."""
        if not self.medians_ms:
            return None
        return RerunCalibration(tuple(self.medians_ms), self.device_class, tuple(self.ratios))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseBand:
        """The inverse of :meth:`to_dict` (also of bands stored before medians were recorded)."""
        return cls(
            delta=float(data["delta"]),
            ratios=[float(r) for r in data["ratios"]],
            ratio_cis=[(float(lo), float(hi)) for lo, hi in data["ratio_cis"]],
            quantile=float(data["quantile"]),
            floor=float(data["floor"]),
            medians_ms=[float(m) for m in data.get("medians_ms") or []],
            device_class=data.get("device_class"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back."""
        rerun = self.rerun_calibration()
        return {
            "delta": self.delta,
            "runs": self.runs,
            "quantile": self.quantile,
            "floor": self.floor,
            "ratios": list(self.ratios),
            "ratio_cis": [list(ci) for ci in self.ratio_cis],
            "ties": self.ties,
            "cis_containing_one": self.cis_containing_one,
            "medians_ms": list(self.medians_ms),
            "rerun_spread": None if rerun is None else rerun.spread(),
            "device_class": self.device_class,
        }


def noise_band_from_ratios(
    ratios: list[float] | np.ndarray, *, quantile: float = 1.0, floor: float = DEFAULT_NOISE_FLOOR
) -> float:
    """δ = max(``floor``, the ``quantile`` of |ratio - 1| over A/A ``ratios``).

    ``quantile = 1`` takes the largest deviation (the conservative default for a handful of runs);
    a high quantile such as 0.95 suits many runs, where one outlier should not set the band.

    Raises:
        MeasurementError: no ratios, or one that is not a positive finite number.
        ValueError: ``quantile`` outside (0, 1] or ``floor`` outside [0, 1).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile = {quantile!r} must be in (0, 1]; use 1 for the largest A/A deviation.")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor = {floor!r} must be in [0, 1); 0.02 is the default.")
    values = np.asarray(ratios, dtype=float)
    if values.size == 0:
        raise MeasurementError("A noise band needs at least one A/A ratio; got none. Run at least one A/A measurement.")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise MeasurementError(
            f"A/A ratios must be positive finite numbers; got {values.tolist()}. A model timed at 0 ms or "
            f"a failed session gives such a ratio: check the measurement settings."
        )
    deviation = float(np.quantile(np.abs(values - 1.0), quantile, method="higher"))
    return max(floor, deviation)


def calibrate_noise_band(
    model: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    *,
    runs: int = 5,
    quantile: float = 1.0,
    floor: float = DEFAULT_NOISE_FLOOR,
    backend: LatencyBackend | None = None,
) -> NoiseBand:
    """Measures ``model`` against itself ``runs`` times with ``settings`` and derives δ from the
    spread of the A/A ratios (:func:`noise_band_from_ratios`).

    Calibrate with the settings (backend, threads, sessions, batch size) of the measurements the
    band will judge: the noise of one thread says nothing about the noise of two.
    """
    if runs < 1:
        raise ValueError(f"runs = {runs!r}; an A/A calibration needs at least 1 run (5 or more is useful).")
    backend = backend or get_backend(settings.backend)
    ratios: list[float] = []
    cis: list[tuple[float, float]] = []
    medians: list[float] = []
    for r in range(runs):
        pair = measure_pair(model, model, inputs, dataclasses.replace(settings, seed=settings.seed + r), backend)
        ratios.append(pair.ratio)
        cis.append(pair.ratio_ci)
        medians.append(math.sqrt(pair.candidate.median_ms * pair.baseline.median_ms))
    delta = noise_band_from_ratios(ratios, quantile=quantile, floor=floor)
    return NoiseBand(
        delta=delta,
        ratios=ratios,
        ratio_cis=cis,
        quantile=quantile,
        floor=floor,
        medians_ms=medians,
        device_class=device_class_of(backend.manifest(settings.threads)),
    )


def noise_band_file(
    directory: Path, baseline: Path, settings: MeasurementSettings, device_class: str | None = None
) -> Path:
    """Where the calibration of ``baseline`` under ``settings`` on this host is kept in ``directory``.

    One file per host, device class, backend, thread count, batch size and baseline model: the
    noise of one thread says nothing about the noise of two, nor one CPU's about another's (a host
    name can move to another CPU).
    """
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in platform.node() or "host")
    klass = f"{device_class}-" if device_class else ""
    name = f"{host}-{klass}{settings.backend}-t{settings.threads}-b{settings.batch_size}-{baseline.stem}.json"
    return directory / name


def calibrated_noise_band(
    baseline: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    directory: Path,
    backend: LatencyBackend | None = None,
) -> NoiseBand:
    """The A/A noise band of this device for ``settings``, calibrated once per ``directory``.

    Studies call this inside a trial's exclusive measurement window, before the trial's own
    measurement: the first trial measured on a host and device class (per backend, threads and
    batch size) runs
    ``settings.calibration_runs`` A/A measurements of the baseline and stores the band in
    ``directory``; later trials read it. A run of a study uses a directory of its own, so each run
    calibrates against the machine as it is that day. The file is written atomically, so a reader
    never sees half of it.
    """
    backend = backend or get_backend(settings.backend)
    device_class = device_class_of(backend.manifest(settings.threads))
    path = noise_band_file(directory, baseline, settings, device_class)
    if path.exists():
        try:
            band = NoiseBand.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            band = None  # unreadable (a foreign or damaged file): calibrate again and replace it
        if band is not None and band.device_class == device_class:
            return band
    band = calibrate_noise_band(baseline, inputs, settings, runs=max(1, settings.calibration_runs), backend=backend)
    write_json_atomically(path, band.to_dict())
    return band
