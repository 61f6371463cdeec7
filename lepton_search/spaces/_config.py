"""Compression configurations: frozen, JSON round-trip, stable hash.

A :class:`CompressionConfig` is what one trial evaluates. It is plain data: the ``objectives``
package turns it into a compressed model, the ``search`` package stores it in trial attributes.
Serialisation is versioned and allow-listed (``{"_type", "_version", "_data"}``): a stored config is
resolved only against the classes registered here, never by importing a path read from a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, ClassVar, Literal

from lepton_search.errors import ConfigError

Precision = Literal["fp32", "fp16", "int8"]
Int8Mode = Literal["dynamic", "static"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
PruneMethod = Literal["none", "unstructured", "channel"]
DistillMethod = Literal["none", "soft", "hard"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
INT8_MODES: tuple[str, ...] = ("dynamic", "static")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
PRUNE_METHODS: tuple[str, ...] = ("none", "unstructured", "channel")
DISTILL_METHODS: tuple[str, ...] = ("none", "soft", "hard")
MAX_PRUNE_RATIO = 0.9


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    _require(
        isinstance(value, str) and value in allowed, f"{field} = {value!r} is not allowed; use one of {list(allowed)}."
    )


def _is_integer(value: object) -> bool:
    # bool is an int subclass, but ``epochs = true`` is a mistake, not one epoch.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(field: str, value: object) -> float:
    """``value`` as a float; a finite int or float is required (bool is not a number here)."""
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        f"{field} = {value!r} must be a finite number.",
    )
    return float(value)  # type: ignore[arg-type]


def _set_float(obj: object, name: str, value: float) -> None:
    # Stored as float so that equal configs (``0.5`` built from ``1/2`` or a JSON ``4`` versus
    # ``4.0``) serialise, and therefore hash, identically.
    object.__setattr__(obj, name, value)


def _set_keys(obj: object, names: tuple[str, ...]) -> list[str]:
    """``"name = value"`` for each of ``names`` that is set (not ``None``) on ``obj``."""
    return [f"{name} = {getattr(obj, name)!r}" for name in names if getattr(obj, name) is not None]


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Weight precision of the exported model.

    ``int8`` runs through ONNX Runtime's quantization tools: ``dynamic`` quantizes only MatMul and
    Gemm (linear) layers, because dynamic int8 convolutions run several times *slower* than fp32 on
    CPUs (see the space documentation); ``static`` inserts QDQ pairs calibrated on
    ``calibration_batches`` training batches with ``calibration_method``.
    """

    precision: Precision = "fp32"
    int8_mode: Int8Mode | None = None
    calibration_method: CalibrationMethod | None = None
    calibration_batches: int | None = None

    def __post_init__(self) -> None:
        _check_choice("quantization.precision", self.precision, PRECISIONS)
        if self.precision != "int8":
            extra = _set_keys(self, ("int8_mode", "calibration_method", "calibration_batches"))
            _require(
                not extra,
                f"quantization.precision = {self.precision!r} takes no int8 settings, got {', '.join(extra)}; "
                "remove them (they apply only with precision = 'int8').",
            )
            return
        _require(
            self.int8_mode is not None,
            f"quantization.precision = 'int8' needs int8_mode; use one of {list(INT8_MODES)}.",
        )
        _check_choice("quantization.int8_mode", self.int8_mode, INT8_MODES)
        if self.int8_mode == "dynamic":
            extra = _set_keys(self, ("calibration_method", "calibration_batches"))
            _require(
                not extra,
                f"quantization.int8_mode = 'dynamic' takes no calibration, got {', '.join(extra)}; remove them "
                "(calibration applies only with int8_mode = 'static').",
            )
            return
        _require(
            self.calibration_method is not None and self.calibration_batches is not None,
            "quantization.int8_mode = 'static' needs calibration_method (one of "
            f"{list(CALIBRATION_METHODS)}) and calibration_batches (an integer >= 1).",
        )
        _check_choice("quantization.calibration_method", self.calibration_method, CALIBRATION_METHODS)
        _require(
            _is_integer(self.calibration_batches) and self.calibration_batches >= 1,  # type: ignore[operator]
            f"quantization.calibration_batches = {self.calibration_batches!r} must be an integer >= 1.",
        )


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Pruning before export.

    ``channel`` physically removes output channels (torch-pruning), so the exported graph is
    smaller and faster. ``unstructured`` zeroes the smallest-magnitude weights: dense kernels run
    them at the same speed, so it only shrinks the compressed size of the model file.
    """

    method: PruneMethod = "none"
    ratio: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("pruning.method", self.method, PRUNE_METHODS)
        ratio = _check_number("pruning.ratio", self.ratio)
        _set_float(self, "ratio", ratio)
        if self.method == "none":
            _require(
                ratio == 0.0,
                f"pruning.ratio = {self.ratio!r} is not allowed with pruning.method = 'none'; remove the "
                "ratio or set it to 0.",
            )
            return
        _require(
            0.0 < self.ratio <= MAX_PRUNE_RATIO,
            f"pruning.ratio = {self.ratio!r} is out of range; use a value in (0, {MAX_PRUNE_RATIO}].",
        )


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Fine-tuning of the compressed student from the uncompressed teacher.

    ``soft`` minimises ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)``;
    ``hard`` trains on the teacher's argmax labels.
    """

    method: DistillMethod = "none"
    temperature: float | None = None
    alpha: float | None = None
    epochs: int = 0
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        _check_choice("distillation.method", self.method, DISTILL_METHODS)
        learning_rate = _check_number("distillation.learning_rate", self.learning_rate)
        _require(learning_rate > 0, f"distillation.learning_rate = {self.learning_rate!r} must be > 0.")
        _set_float(self, "learning_rate", learning_rate)
        if self.method == "none":
            extra = _set_keys(self, ("temperature", "alpha"))
            if not (_is_integer(self.epochs) and self.epochs == 0):
                extra.append(f"epochs = {self.epochs!r}")
            _require(
                not extra,
                f"distillation.method = 'none' takes no {', '.join(extra)}; remove them "
                "(or choose method 'soft' or 'hard').",
            )
            return
        _require(
            _is_integer(self.epochs) and self.epochs >= 1,
            f"distillation.epochs = {self.epochs!r} must be an integer >= 1.",
        )
        if self.method == "hard":
            extra = _set_keys(self, ("temperature", "alpha"))
            _require(
                not extra,
                f"distillation.method = 'hard' takes no {', '.join(extra)}; remove them (or use method 'soft').",
            )
            return
        temperature = _check_number("distillation.temperature", self.temperature)
        _require(
            1.0 <= temperature <= 20.0,
            f"distillation.temperature = {self.temperature!r} must be in [1, 20].",
        )
        alpha = _check_number("distillation.alpha", self.alpha)
        _require(0.0 <= alpha <= 1.0, f"distillation.alpha = {self.alpha!r} must be in [0, 1].")
        _set_float(self, "temperature", temperature)
        _set_float(self, "alpha", alpha)


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """Everything one trial applies to the teacher, in pipeline order: prune, distill, quantize."""

    SCHEMA_VERSION: ClassVar[int] = 1

    quantization: QuantizeConfig = dataclasses.field(default_factory=QuantizeConfig)
    pruning: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    distillation: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    @property
    def is_baseline(self) -> bool:
        """True for the identity configuration: fp32, no pruning, no distillation."""
        return self == CompressionConfig()

    def to_dict(self) -> dict[str, Any]:
        """The plain nested dict of the fields, with ``None`` values left out."""
        return {
            section.name: {k: v for k, v in dataclasses.asdict(getattr(self, section.name)).items() if v is not None}
            for section in dataclasses.fields(self)
        }

    def to_json(self) -> str:
        """Versioned JSON: ``{"_type": ..., "_version": ..., "_data": {...}}``, keys sorted."""
        payload = {"_type": "CompressionConfig", "_version": self.SCHEMA_VERSION, "_data": self.to_dict()}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))

    @property
    def config_hash(self) -> str:
        """A stable 16-hex-digit hash of the canonical JSON; equal configs hash equally."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Builds a config from :meth:`to_dict` output, rejecting unknown sections and keys."""
        sections = {"quantization": QuantizeConfig, "pruning": PruneConfig, "distillation": DistillConfig}
        _require(isinstance(data, dict), f"Config data must be an object of sections, got {data!r}.")
        unknown = set(data) - set(sections)
        _require(not unknown, f"Unknown config sections {sorted(map(str, unknown))}; allowed: {list(sections)}.")
        kwargs: dict[str, Any] = {}
        for name, section_cls in sections.items():
            section = data.get(name, {})
            _require(isinstance(section, dict), f"Config section {name} = {section!r} must be an object of keys.")
            values = dict(section)
            allowed = {f.name for f in dataclasses.fields(section_cls)}
            extra = set(values) - allowed
            _require(not extra, f"Unknown keys {sorted(extra)} in {name}; allowed: {sorted(allowed)}.")
            try:
                kwargs[name] = section_cls(**values)
            except TypeError as e:
                raise ConfigError(f"Invalid {name} section {values!r}: {e}") from e
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> CompressionConfig:
        """Inverse of :meth:`to_json`; accepts the envelope or a bare :meth:`to_dict` object."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"Config is not valid JSON: {e}") from e
        if not isinstance(payload, dict):
            raise ConfigError(f"Config JSON must be an object, got {type(payload).__name__}.")
        if "_type" in payload:
            _require(
                payload["_type"] == "CompressionConfig",
                f"Config _type {payload['_type']!r} is not allowed; expected 'CompressionConfig'.",
            )
            version = payload.get("_version")
            _require(
                _is_integer(version) and version == cls.SCHEMA_VERSION,
                f"Config _version {version!r} is not supported; this version of "
                f"lepton-search reads version {cls.SCHEMA_VERSION}.",
            )
            envelope = {"_type", "_version", "_data"}
            extra = set(payload) - envelope
            _require(not extra, f"Unknown envelope keys {sorted(extra)}; allowed: {sorted(envelope)}.")
            _require("_data" in payload, "Config envelope has no _data; expected the config's sections under it.")
            payload = payload["_data"]
        return cls.from_dict(payload)

    def describe(self) -> str:
        """A short human label, e.g. ``int8-static(minmax) + channel 50% + soft KD``."""
        q = self.quantization
        label = q.precision
        if q.precision == "int8":
            label += f"-{q.int8_mode}"
            if q.int8_mode == "static":
                label += f"({q.calibration_method})"
        parts = [label]
        if self.pruning.method != "none":
            parts.append(f"{self.pruning.method} {self.pruning.ratio:.0%}")
        if self.distillation.method != "none":
            parts.append(f"{self.distillation.method} KD x{self.distillation.epochs}")
        return " + ".join(parts)
