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

    def suggest(self, trial: TrialLike) -> QuantizeConfig:
        precision = trial.suggest_categorical("precision", self.precision)
        if precision != "int8":
            return QuantizeConfig(precision=precision)
        mode = trial.suggest_categorical("int8_mode", self.int8_mode)
        if mode != "static":
            return QuantizeConfig(precision="int8", int8_mode=mode)
        return QuantizeConfig(
            precision="int8",
            int8_mode="static",
            calibration_method=trial.suggest_categorical("calibration_method", self.calibration_method),
            calibration_batches=trial.suggest_int("calibration_batches", *self.calibration_batches),
        )

    def contains(self, config: QuantizeConfig) -> bool:
        checks = [config.precision in self.precision]
        if config.precision == "int8":
            checks.append(config.int8_mode in self.int8_mode)
            if config.int8_mode == "static":
                checks += [
                    config.calibration_method in self.calibration_method,
                    self.calibration_batches[0] <= (config.calibration_batches or 0) <= self.calibration_batches[1],
                ]
        return all(checks)

    @staticmethod
    def params_of(config: QuantizeConfig) -> dict[str, Any]:
        params: dict[str, Any] = {"precision": config.precision}
        if config.precision == "int8":
            params["int8_mode"] = config.int8_mode
            if config.int8_mode == "static":
                params["calibration_method"] = config.calibration_method
                params["calibration_batches"] = config.calibration_batches
        return params


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

    def suggest(self, trial: TrialLike) -> PruneConfig:
        method = trial.suggest_categorical("prune_method", self.method)
        if method == "none":
            return PruneConfig()
        ratio = trial.suggest_float("prune_ratio", self.ratio[0], self.ratio[1], step=self.ratio_step)
        return PruneConfig(method=method, ratio=round(ratio, 6))

    def contains(self, config: PruneConfig) -> bool:
        if config.method not in self.method:
            return False
        return config.method == "none" or self.ratio[0] - 1e-9 <= config.ratio <= self.ratio[1] + 1e-9

    @staticmethod
    def params_of(config: PruneConfig) -> dict[str, Any]:
        params: dict[str, Any] = {"prune_method": config.method}
        if config.method != "none":
            params["prune_ratio"] = config.ratio
        return params


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

    def suggest(self, trial: TrialLike) -> DistillConfig:
        kd = trial.suggest_categorical("distill_method", self.method)
        if kd == "none":
            return DistillConfig()
        epochs = trial.suggest_int("distill_epochs", *self.epochs)
        if kd == "hard":
            return DistillConfig(method="hard", epochs=epochs, learning_rate=self.learning_rate)
        return DistillConfig(
            method="soft",
            temperature=trial.suggest_float("distill_temperature", *self.temperature, log=True),
            alpha=trial.suggest_float("distill_alpha", *self.alpha),
            epochs=epochs,
            learning_rate=self.learning_rate,
        )

    def contains(self, config: DistillConfig) -> bool:
        if config.method not in self.method:
            return False
        if config.method == "none":
            return True
        checks = [self.epochs[0] <= config.epochs <= self.epochs[1], config.learning_rate == self.learning_rate]
        if config.method == "soft":
            checks += [
                self.temperature[0] <= (config.temperature or 0) <= self.temperature[1],
                self.alpha[0] <= (config.alpha if config.alpha is not None else -1) <= self.alpha[1],
            ]
        return all(checks)

    @staticmethod
    def params_of(config: DistillConfig) -> dict[str, Any]:
        params: dict[str, Any] = {"distill_method": config.method}
        if config.method != "none":
            params["distill_epochs"] = config.epochs
            if config.method == "soft":
                params["distill_temperature"] = config.temperature
                params["distill_alpha"] = config.alpha
        return params


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
        return CompressionConfig(
            quantization=self.quantization.suggest(trial),
            pruning=self.pruning.suggest(trial),
            distillation=self.distillation.suggest(trial),
        )

    def contains(self, config: CompressionConfig) -> bool:
        """Whether :meth:`suggest` could produce ``config`` (every value within this space)."""
        return (
            self.quantization.contains(config.quantization)
            and self.pruning.contains(config.pruning)
            and self.distillation.contains(config.distillation)
        )

    @staticmethod
    def params_of(config: CompressionConfig) -> dict[str, Any]:
        """The trial parameters that :meth:`suggest` would need to produce ``config``.

        Used to re-queue a trial (resume, warm start) with exactly the same configuration.
        """
        return {
            **QuantizationSpace.params_of(config.quantization),
            **PruningSpace.params_of(config.pruning),
            **DistillationSpace.params_of(config.distillation),
        }
