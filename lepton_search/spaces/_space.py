"""The search space: which knobs a study explores, and how a trial's suggestions become a config.

The space is conditional: a parameter is suggested only when it applies (``int8_mode`` only for
int8, calibration only for static int8, ``prune_ratio`` only when pruning, distillation settings only
when distilling). Ordered knobs are suggested as numbers, not categories, so samplers keep their
order.

Why dynamic int8 never touches convolutions: ONNX Runtime's dynamic quantization computes the
activation scale at run time; for convolutions on CPUs without VNNI this measured 0.2-0.27x of fp32
speed (``shared/notes/latency.md``). Dynamic int8 therefore quantizes only MatMul/Gemm layers, and
static QDQ int8 is the mode for convolutional models.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lepton_search.spaces._config import (
    MAX_PRUNE_RATIO,
    CalibrationMethod,
    CompressionConfig,
    DistillConfig,
    DistillMethod,
    Int8Mode,
    Precision,
    PruneConfig,
    PruneMethod,
    QuantizeConfig,
)


class TrialLike(Protocol):
    """The part of ``optuna.trial.Trial`` the space uses; spaces never import optuna itself."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


def _non_empty_unique(values: list[Any], field: str) -> list[Any]:
    if not values:
        raise ValueError(f"{field} must list at least one choice")
    if len(set(values)) != len(values):
        raise ValueError(f"{field} lists a choice twice: {values}")
    return values


class _Section(BaseModel):
    # TOML has ``inf`` and ``nan`` literals; no knob of the space means anything with them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class QuantizationSpace(_Section):
    """Precision choices; int8 settings apply only when ``int8`` is among them."""

    precision: list[Precision] = Field(
        default_factory=lambda: ["fp32", "int8"],
        description="Weight precisions to try. fp16 is off by default: CPUs run it slower.",
    )
    int8_mode: list[Int8Mode] = Field(default_factory=lambda: ["static"])
    calibration_method: list[CalibrationMethod] = Field(default_factory=lambda: ["minmax", "percentile"])
    calibration_batches: Annotated[tuple[int, int], Field(description="[low, high] batch count")] = (2, 8)

    @field_validator("precision", "int8_mode", "calibration_method")
    @classmethod
    def _choices(cls, v: list[Any], info: Any) -> list[Any]:
        return _non_empty_unique(v, f"quantization.{info.field_name}")

    @field_validator("calibration_batches")
    @classmethod
    def _batches(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"must be [low, high] with 1 <= low <= high, got {list(v)}")
        return v


class PruningSpace(_Section):
    """Pruning methods and the ratio range (at most 0.9)."""

    method: list[PruneMethod] = Field(default_factory=lambda: ["none", "unstructured", "channel"])
    ratio: tuple[float, float] = Field(default=(0.1, 0.75), description="[low, high] in (0, 0.9]")
    ratio_step: float = Field(default=0.05, gt=0, le=0.5)

    @field_validator("method")
    @classmethod
    def _choices(cls, v: list[Any]) -> list[Any]:
        return _non_empty_unique(v, "pruning.method")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not (0.0 < low <= high <= MAX_PRUNE_RATIO):
            raise ValueError(
                f"pruning ratio must be [low, high] with 0 < low <= high <= {MAX_PRUNE_RATIO}, got {list(v)}"
            )
        return v


class DistillationSpace(_Section):
    """Distillation methods and their ranges; temperature is searched on a log scale."""

    method: list[DistillMethod] = Field(default_factory=lambda: ["none", "soft", "hard"])
    temperature: tuple[float, float] = (1.0, 20.0)
    alpha: tuple[float, float] = (0.0, 1.0)
    epochs: tuple[int, int] = (1, 6)
    learning_rate: float = Field(default=1e-3, gt=0)

    @field_validator("method")
    @classmethod
    def _choices(cls, v: list[Any]) -> list[Any]:
        return _non_empty_unique(v, "distillation.method")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 1.0 <= v[0] <= v[1] <= 20.0:
            raise ValueError(f"temperature must be [low, high] within [1, 20], got {list(v)}")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError(f"alpha must be [low, high] within [0, 1], got {list(v)}")
        return v

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 100:
            raise ValueError(f"epochs must be [low, high] within [1, 100], got {list(v)}")
        return v


class SearchSpace(_Section):
    """The whole space of one study, as written under ``[space]`` in a study file.

    Example:
        >>> space = SearchSpace()
        >>> import optuna
        >>> trial = optuna.create_study().ask()
        >>> config = space.suggest(trial)
    """

    quantization: QuantizationSpace = Field(default_factory=QuantizationSpace)
    pruning: PruningSpace = Field(default_factory=PruningSpace)
    distillation: DistillationSpace = Field(default_factory=DistillationSpace)

    def suggest(self, trial: TrialLike) -> CompressionConfig:
        """Asks the trial for each applicable parameter and returns the resulting config."""
        q, p, d = self.quantization, self.pruning, self.distillation
        precision = trial.suggest_categorical("precision", q.precision)
        if precision != "int8":
            quantize = QuantizeConfig(precision=precision)
        else:
            mode = trial.suggest_categorical("int8_mode", q.int8_mode)
            if mode == "static":
                quantize = QuantizeConfig(
                    precision="int8",
                    int8_mode="static",
                    calibration_method=trial.suggest_categorical("calibration_method", q.calibration_method),
                    calibration_batches=trial.suggest_int("calibration_batches", *q.calibration_batches),
                )
            else:
                quantize = QuantizeConfig(precision="int8", int8_mode="dynamic")

        prune = PruneConfig()
        method = trial.suggest_categorical("prune_method", p.method)
        if method != "none":
            ratio = trial.suggest_float("prune_ratio", p.ratio[0], p.ratio[1], step=p.ratio_step)
            prune = PruneConfig(method=method, ratio=round(ratio, 6))

        distill = DistillConfig()
        kd = trial.suggest_categorical("distill_method", d.method)
        if kd != "none":
            epochs = trial.suggest_int("distill_epochs", *d.epochs)
            if kd == "soft":
                distill = DistillConfig(
                    method="soft",
                    temperature=trial.suggest_float("distill_temperature", *d.temperature, log=True),
                    alpha=trial.suggest_float("distill_alpha", *d.alpha),
                    epochs=epochs,
                    learning_rate=d.learning_rate,
                )
            else:
                distill = DistillConfig(method="hard", epochs=epochs, learning_rate=d.learning_rate)
        return CompressionConfig(quantization=quantize, pruning=prune, distillation=distill)

    def contains(self, config: CompressionConfig) -> bool:
        """Whether :meth:`suggest` could produce ``config`` (every value within this space)."""
        q, p, d = self.quantization, self.pruning, self.distillation
        cq, cp, cd = config.quantization, config.pruning, config.distillation
        checks = [cq.precision in q.precision, cp.method in p.method, cd.method in d.method]
        if cq.precision == "int8":
            checks.append(cq.int8_mode in q.int8_mode)
            if cq.int8_mode == "static":
                checks += [
                    cq.calibration_method in q.calibration_method,
                    q.calibration_batches[0] <= (cq.calibration_batches or 0) <= q.calibration_batches[1],
                ]
        if cp.method != "none":
            checks.append(p.ratio[0] - 1e-9 <= cp.ratio <= p.ratio[1] + 1e-9)
        if cd.method != "none":
            checks += [d.epochs[0] <= cd.epochs <= d.epochs[1], cd.learning_rate == d.learning_rate]
            if cd.method == "soft":
                checks += [
                    d.temperature[0] <= (cd.temperature or 0) <= d.temperature[1],
                    d.alpha[0] <= (cd.alpha if cd.alpha is not None else -1) <= d.alpha[1],
                ]
        return all(checks)

    @staticmethod
    def params_of(config: CompressionConfig) -> dict[str, Any]:
        """The trial parameters that :meth:`suggest` would need to produce ``config``.

        Used to re-queue a trial (resume, warm start) with exactly the same configuration.
        """
        q, p, d = config.quantization, config.pruning, config.distillation
        params: dict[str, Any] = {"precision": q.precision, "prune_method": p.method, "distill_method": d.method}
        if q.precision == "int8":
            params["int8_mode"] = q.int8_mode
            if q.int8_mode == "static":
                params["calibration_method"] = q.calibration_method
                params["calibration_batches"] = q.calibration_batches
        if p.method != "none":
            params["prune_ratio"] = p.ratio
        if d.method != "none":
            params["distill_epochs"] = d.epochs
            if d.method == "soft":
                params["distill_temperature"] = d.temperature
                params["distill_alpha"] = d.alpha
        return params
