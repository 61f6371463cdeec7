"""The trial record: what a completed trial measured, as one typed, frozen object.

Optuna keeps a trial's results as user attributes (plain JSON). :func:`trial_attributes` is the
one place that writes them from the worker's ``TrialResult``, stamped with the record's schema
version; :meth:`TrialRecord.from_trial` is the one place that reads them back, refusing a schema
newer than it knows and reading the shapes older versions wrote (a trial without a recorded
deployment takes its configuration's, then the study's ``[measurement]``); every reader works on
the record's attributes. :meth:`TrialRecord.to_json` is the frontier JSON's entry, unchanged from
the shape ``lepton-search frontier --format json`` has always printed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from lepton_search import __version__
from lepton_search.devices._machine import device_class_of
from lepton_search.errors import StorageError
from lepton_search.spaces import CompressionConfig

if TYPE_CHECKING:
    import optuna

    from lepton_search.objectives import TrialResult

#: User attribute holding the :attr:`TrialRecord.SCHEMA_VERSION` a trial's attributes were written
#: in; trials written before it existed have none and read as version 1.
RECORD_SCHEMA_ATTR = "record_schema"


def _pair(value: Any) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if value else None


def _list(value: tuple[float, float] | None) -> list[float] | None:
    return list(value) if value is not None else None


@dataclasses.dataclass(frozen=True)
class LatencyRecord:
    """One latency measurement of a trial, interleaved with the baseline: at evaluation, or the
    frontier re-measurement in fresh processes."""

    median_ms: float | None = None
    #: Candidate over baseline in the same window (lower is faster), and its 95% interval.
    ratio_to_baseline: float | None = None
    ratio_ci: tuple[float, float] | None = None
    ci_ms: tuple[float, float] | None = None
    #: Where a re-run of the measurement would land (calibrated), when known.
    rerun_ci_ms: tuple[float, float] | None = None
    p95_ms: float | None = None
    cv: float | None = None
    sessions: int | None = None
    #: "faster", "slower" or "tie" against the baseline.
    verdict: str | None = None
    device_class: str | None = None
    device_class_name: str | None = None
    #: The baseline's median in the re-measurement's window (re-measurements only).
    baseline_median_ms: float | None = None
    #: When the re-measurement ran (re-measurements only).
    at: str | None = None

    @property
    def speedup(self) -> float | None:
        """How many times faster than the baseline: ``1 / ratio_to_baseline``."""
        return 1.0 / self.ratio_to_baseline if self.ratio_to_baseline else None

    @property
    def speedup_ci(self) -> tuple[float, float] | None:
        """The speedup's interval: the ratio's, inverted (so its ends swap)."""
        if not self.ratio_to_baseline or not self.ratio_ci or not all(self.ratio_ci):
            return None
        return (1.0 / self.ratio_ci[1], 1.0 / self.ratio_ci[0])

    @classmethod
    def from_remeasurement(cls, data: Mapping[str, Any]) -> LatencyRecord:
        """A ``lepton:remeasured:N`` study attribute (``_recording.remeasure_frontier``)."""
        candidate = data["candidate"]
        device = data.get("device") or {}
        return cls(
            median_ms=candidate["median_ms"],
            ratio_to_baseline=data["ratio"],
            ratio_ci=_pair(data["ratio_ci"]),
            ci_ms=_pair(candidate["ci_ms"]),
            rerun_ci_ms=_pair(candidate.get("rerun_ci_ms")),
            p95_ms=candidate["p95_ms"],
            cv=candidate["cv"],
            sessions=candidate["sessions"],
            verdict=data["verdict"],
            device_class=device_class_of(data.get("device")),
            device_class_name=device.get("device_class_name"),
            baseline_median_ms=data["baseline"]["median_ms"],
            at=data.get("at"),
        )

    def remeasurement_json(self) -> dict[str, Any]:
        """The frontier JSON's ``latency.remeasured``."""
        return {
            "median_ms": self.median_ms,
            "ci_ms": _list(self.ci_ms),
            "p95_ms": self.p95_ms,
            "cv": self.cv,
            "sessions": self.sessions,
            "ratio_to_baseline": self.ratio_to_baseline,
            "ratio_ci": _list(self.ratio_ci),
            "speedup": self.speedup,
            "speedup_ci": _list(self.speedup_ci),
            "verdict": self.verdict,
            "baseline_median_ms": self.baseline_median_ms,
            "rerun_ci_ms": _list(self.rerun_ci_ms),
            "device_class": self.device_class,
            "device_class_name": self.device_class_name,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyRecord:
        """Either latency shape of the frontier JSON."""
        names = {f.name for f in dataclasses.fields(cls)}
        pairs = {"ratio_ci", "ci_ms", "rerun_ci_ms"}
        return cls(**{k: (_pair(v) if k in pairs else v) for k, v in data.items() if k in names})


_DEPLOYMENT_KEYS = ("backend", "batch_size", "threads")


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """A completed trial: its configuration, objective values, latency and what it costs."""

    #: Bumped when the record's fields change meaning; :meth:`to_json` writes the current shape.
    SCHEMA_VERSION: ClassVar[int] = 1

    number: int
    label: str | None
    #: The configuration as the trial recorded it (``CompressionConfig.to_dict``; :attr:`config`
    #: reads it), kept as written so that a study of an older version reads back unchanged.
    config_data: Mapping[str, Any]
    #: Objective values by objective name, in the study's order.
    values: Mapping[str, float]
    latency: LatencyRecord
    #: The frontier re-measurement in fresh processes, when the run made one.
    remeasured: LatencyRecord | None = None
    slower_than_baseline: bool = False
    test_accuracy: float | None = None
    size_bytes: int | None = None
    cost_usd_per_million: float | None = None
    #: Where the trial was measured: ``backend``, ``batch_size`` and ``threads``.
    deployment: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    #: Constraint values by name (``<= 0`` is feasible).
    constraints: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> CompressionConfig | None:
        """The configuration; ``None`` for a trial recorded without one (a constructed trial)."""
        return CompressionConfig.from_dict(dict(self.config_data)) if self.config_data else None

    @property
    def shown_latency(self) -> LatencyRecord:
        """The re-measurement where there is one, else the evaluation's: what tables show."""
        return self.remeasured or self.latency

    @property
    def speedup(self) -> float | None:
        return self.shown_latency.speedup

    @property
    def speedup_ci(self) -> tuple[float, float] | None:
        return self.shown_latency.speedup_ci

    @property
    def feasible(self) -> bool:
        """Whether the trial meets every study constraint."""
        return all(v <= 0 for v in self.constraints.values())

    @classmethod
    def from_trial(
        cls,
        trial: optuna.trial.FrozenTrial,
        names: list[str],
        *,
        remeasurement: Mapping[str, Any] | None = None,
        default_deployment: Mapping[str, Any] | None = None,
    ) -> TrialRecord:
        """The record of ``trial``, whose objectives are ``names``: the one reader of its user
        attributes. ``remeasurement`` is its ``lepton:remeasured:N`` study attribute;
        ``default_deployment`` the study's ``[measurement]`` backend, batch size and threads, for
        trials that recorded none.

        Raises:
            StorageError: the trial was written by a newer lepton-search, in a schema this one does
                not know.
        """
        attrs = trial.user_attrs
        schema = attrs.get(RECORD_SCHEMA_ATTR, 1)
        if not isinstance(schema, int) or schema > cls.SCHEMA_VERSION:
            raise StorageError(
                f"Trial {trial.number} was recorded in trial-record schema {schema!r}, but this "
                f"lepton-search ({__version__}) reads schema {cls.SCHEMA_VERSION} and older; upgrade lepton-search "
                "to read this study."
            )
        latency = attrs.get("latency", {})
        device = attrs.get("device") or {}
        again = LatencyRecord.from_remeasurement(remeasurement) if remeasurement else None
        slower = bool(attrs.get("slower_than_baseline")) or (again is not None and again.verdict == "slower")
        if default_deployment is not None:
            deployment = recorded_deployment(attrs, default_deployment)
        else:
            deployment = attrs.get("deployment")
        return cls(
            number=trial.number,
            label=attrs.get("label"),
            config_data=attrs.get("config", {}),
            values=dict(zip(names, trial.values or [])),
            latency=LatencyRecord(
                median_ms=latency.get("median_ms"),
                ratio_to_baseline=attrs.get("ratio_to_baseline"),
                ratio_ci=_pair(attrs.get("ratio_ci")),
                ci_ms=_pair(latency.get("ci_ms")),
                rerun_ci_ms=_pair(latency.get("rerun_ci_ms")),
                p95_ms=latency.get("p95_ms"),
                cv=latency.get("cv"),
                sessions=latency.get("sessions"),
                verdict=attrs.get("verdict"),
                device_class=device_class_of(attrs.get("device")),
                device_class_name=device.get("device_class_name"),
            ),
            remeasured=again,
            slower_than_baseline=slower,
            test_accuracy=attrs.get("test_accuracy"),
            size_bytes=attrs.get("size_bytes"),
            cost_usd_per_million=attrs.get("cost_usd_per_million"),
            deployment=deployment,
            notes=tuple(attrs.get("notes", [])),
            constraints=dict(trial.constraints) if hasattr(trial, "constraints") else {},
        )

    def to_json(self) -> dict[str, Any]:
        """The frontier JSON's entry for this trial."""
        latency = self.latency
        return {
            "number": self.number,
            "label": self.label,
            "config": self.config_data,
            "values": dict(self.values),
            "latency": {
                "median_ms": latency.median_ms,
                "ratio_to_baseline": latency.ratio_to_baseline,
                "ratio_ci": _list(latency.ratio_ci),
                "speedup": latency.speedup,
                "speedup_ci": _list(latency.speedup_ci),
                "ci_ms": _list(latency.ci_ms),
                "rerun_ci_ms": _list(latency.rerun_ci_ms),
                "p95_ms": latency.p95_ms,
                "cv": latency.cv,
                "sessions": latency.sessions,
                "verdict": latency.verdict,
                "device_class": latency.device_class,
                "device_class_name": latency.device_class_name,
                "remeasured": self.remeasured.remeasurement_json() if self.remeasured is not None else None,
            },
            "slower_than_baseline": self.slower_than_baseline,
            "test_accuracy": self.test_accuracy,
            "size_bytes": self.size_bytes,
            "cost_usd_per_million": self.cost_usd_per_million,
            "deployment": dict(self.deployment) if self.deployment is not None else None,
            "notes": list(self.notes),
            "constraints": dict(self.constraints),
        }

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> TrialRecord:
        """A frontier JSON entry (``to_json``'s shape) read back."""
        latency = dict(entry["latency"])
        again = latency.pop("remeasured", None)
        return cls(
            number=entry["number"],
            label=entry.get("label"),
            config_data=entry.get("config") or {},
            values=dict(entry["values"]),
            latency=LatencyRecord.from_json(latency),
            remeasured=LatencyRecord.from_json(again) if again else None,
            slower_than_baseline=bool(entry.get("slower_than_baseline")),
            test_accuracy=entry.get("test_accuracy"),
            size_bytes=entry.get("size_bytes"),
            cost_usd_per_million=entry.get("cost_usd_per_million"),
            deployment=entry.get("deployment"),
            notes=tuple(entry.get("notes") or ()),
            constraints=dict(entry.get("constraints") or {}),
        )


def recorded_deployment(attrs: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    """The backend, batch size and threads a trial with user attributes ``attrs`` was measured at."""
    # Recorded since deployments were searched; before, the configuration's knobs or the study's.
    recorded = attrs.get("deployment")
    if recorded:
        return {k: recorded.get(k) for k in _DEPLOYMENT_KEYS}
    configured = (attrs.get("config") or {}).get("deployment") or {}
    return {k: configured.get(k, default[k]) for k in _DEPLOYMENT_KEYS}


def trial_attributes(
    config: CompressionConfig, result: TrialResult, cached_from: dict[str, Any] | None
) -> dict[str, Any]:
    """The user attributes that record ``result`` of ``config`` on its trial, stamped with
    :attr:`TrialRecord.SCHEMA_VERSION` (:meth:`TrialRecord.from_trial` reads them back). Values may
    still hold non-finite floats, which the recorder stores as null."""
    latency = result.latency
    attrs: dict[str, Any] = {
        RECORD_SCHEMA_ATTR: TrialRecord.SCHEMA_VERSION,
        "config": config.to_dict(),
        "config_hash": config.config_hash,
        "label": config.describe(),
        "accuracy": result.accuracy,
        "test_accuracy": result.test_accuracy,
        "latency": latency["candidate"],
        "baseline_latency": latency["baseline"],
        "ratio_to_baseline": latency["ratio"],
        "ratio_ci": latency["ratio_ci"],
        "verdict": latency["verdict"],
        "noise_band": latency["noise_band"],
        "slower_than_baseline": latency["verdict"] == "slower",
        "device": latency["device"],
        "cost_usd_per_million": result.cost_usd_per_million,
        "size_bytes": result.size_bytes,
        "gzip_size_bytes": result.gzip_size_bytes,
        "parameters": result.parameters,
        "sparsity": result.sparsity,
        "timings_s": result.timings_s,
        "notes": result.notes,
        "peak_rss_mb": result.peak_rss_mb,
        # The backend, batch size and threads the trial was measured (and priced) at.
        "deployment": latency.get("deployment"),
        "model_format": result.model_format,
        "graph_ops": result.graph_ops,
        "student": result.student,
    }
    if result.compression_seed is not None:
        attrs["compression_seed"] = result.compression_seed
    if "noise_calibration" in latency:
        attrs["noise_calibration"] = latency["noise_calibration"]
    if cached_from is not None:
        attrs["cached_from"] = cached_from
    return attrs
