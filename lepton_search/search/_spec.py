"""Study files: TOML, validated strictly.

Unknown keys are errors, every error names the key, the value received and what is allowed, and a
study must be named explicitly. Validation imports no torch or Ray, so it answers in well under a
second.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lepton_search.errors import ConfigError, LeptonSearchError
from lepton_search.objectives._cost import DEFAULT_CPU_CORE_USD_PER_HOUR, DEFAULT_GPU_USD_PER_HOUR
from lepton_search.spaces import SearchSpace

OBJECTIVES: dict[str, str] = {
    "accuracy": "maximize",
    "latency_ms": "minimize",
    "cost_usd_per_million": "minimize",
    "size_mb": "minimize",
}
ObjectiveName = Literal["accuracy", "latency_ms", "cost_usd_per_million", "size_mb"]


class _Strict(BaseModel):
    # TOML has ``inf`` and ``nan`` literals; ``warmup_s = inf`` would never finish measuring.
    # strict: ``n_trials = true`` or ``"3"`` is an error, not 1 or 3 (an int still fills a float).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class StudySection(_Strict):
    """``[study]``: what is searched and where results go."""

    name: str = Field(min_length=1, max_length=200, description="Unique study name in the storage.")
    task: str = Field(description="A built-in task name, or 'package.module:factory'.")
    task_options: dict[str, Any] = Field(default_factory=dict)
    storage: str | None = Field(default=None, description="Storage URL; default sqlite:///lepton-search.db")
    artifacts: str | None = Field(default=None, description="Artifact directory; default lepton-artifacts")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed of the sampler and of compression.")
    description: str = ""
    warm_start_from: list[str] = Field(
        default_factory=list,
        description="Studies in the same storage whose frontier configurations seed a new study.",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from lepton_search.objectives.tasks import check_task_reference

        try:
            check_task_reference(v)
        except LeptonSearchError as e:
            raise ValueError(str(e)) from e
        return v


class ObjectiveSpec(_Strict):
    """One ``[[objectives]]`` entry."""

    name: ObjectiveName
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _direction(self) -> ObjectiveSpec:
        natural = OBJECTIVES[self.name]
        if self.direction is not None and self.direction != natural:
            raise ValueError(f"objective {self.name!r} can only be {natural}d, got direction {self.direction!r}")
        return self

    @property
    def resolved_direction(self) -> str:
        return self.direction or OBJECTIVES[self.name]


class ConstraintsSpec(_Strict):
    """``[constraints]``: feasibility limits, recorded with ``trial.set_constraint``."""

    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    latency_slo_ms: float | None = Field(default=None, gt=0)
    max_size_mb: float | None = Field(default=None, gt=0)


class SamplerSpec(_Strict):
    """``[sampler]``: the sampler's name and its options in a nested table."""

    name: str = "tpe"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> SamplerSpec:
        from lepton_search.search._samplers import validate_sampler_options

        try:
            validate_sampler_options(self.name, self.options)
        except LeptonSearchError as e:
            raise ValueError(str(e)) from e
        return self


class BudgetSpec(_Strict):
    """``[budget]``: how many trials, for how long, how many at once.

    ``n_trials`` counts evaluations: distinct configurations of the study. A proposal that repeats a
    configuration the study already evaluated is served from the result cache, told to the sampler,
    marked ``duplicate_of``, and not counted; after ``max_repeats`` such proposals in a row the run
    stops, because the sampler has nothing new to propose.
    """

    n_trials: int | None = Field(default=20, ge=1, description="Evaluations (distinct configurations) to hold.")
    timeout_s: float | None = Field(default=None, gt=0)
    workers: int = Field(default=2, ge=1, le=1024)
    trial_timeout_s: float = Field(default=600.0, gt=0)
    max_repeats: int = Field(
        default=100,
        ge=1,
        le=100000,
        description="Consecutive proposals of already-evaluated configurations after which the run stops.",
    )

    @model_validator(mode="after")
    def _bounded(self) -> BudgetSpec:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("set n_trials, timeout_s or both; a study needs a budget")
        return self


class MeasurementSpec(_Strict):
    """``[measurement]``: the latency protocol (see ``objectives.MeasurementSettings``)."""

    backend: str = Field(default="onnxruntime-cpu", description="A registered latency backend.")
    threads: int = Field(default=1, ge=1, le=512)
    batch_size: int = Field(default=64, ge=1, le=65536)
    sessions: int = Field(default=3, ge=2, le=100)
    warmup_runs: int = Field(default=20, ge=0)
    warmup_s: float = Field(default=0.2, ge=0)
    min_iterations: int = Field(default=30, ge=3)
    min_session_s: float = Field(default=0.3, ge=0)
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100000)
    noise_band: float | Literal["auto"] = Field(
        default="auto",
        description=(
            "The verdict's noise band: a fraction such as 0.05, or 'auto' to calibrate it by A/A runs of "
            "the baseline on each device at the start of every run (calibration_runs of them)."
        ),
    )
    calibration_runs: int = Field(default=5, ge=2, le=50, description="A/A runs when noise_band = 'auto'.")
    remeasure_sessions: int = Field(
        default=5, ge=0, le=100, description="Sessions when re-measuring the frontier at the end of a run; 0 skips it."
    )

    @field_validator("noise_band", mode="before")
    @classmethod
    def _noise_band(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(
                f"must be 'auto' (calibrated by A/A runs on each device) or a fraction in [0, 1) such as 0.05, "
                f"got {v!r}"
            )
        return float(v)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from lepton_search.objectives import known_backends

        if v not in known_backends():
            raise ValueError(f"unknown latency backend {v!r}; known backends: {', '.join(known_backends())}")
        return v


class CostSpec(_Strict):
    """``[cost]``: device prices in USD per hour."""

    cpu_core_usd_per_hour: float = Field(default=DEFAULT_CPU_CORE_USD_PER_HOUR, gt=0)
    gpu_usd_per_hour: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_GPU_USD_PER_HOUR)
    )


class FidelitySpec(_Strict):
    """``[fidelity]``: successive halving run by the driver.

    Configurations are first screened cheaply (distillation capped at ``screen_epochs``, latency
    over ``screen_sessions`` sessions) in a companion study named ``<name>:screen``; after every
    ``screen_trials`` screened configurations, the best ``promote_fraction`` by Pareto rank are
    evaluated at full fidelity in the study itself. Only full-fidelity trials are in the study, so
    only they can be on its frontier; ``[budget].n_trials`` counts them.
    """

    screen_trials: int = Field(default=12, ge=2)
    promote_fraction: float = Field(default=0.34, gt=0, le=1)
    screen_epochs: int = Field(default=1, ge=1)
    screen_sessions: int = Field(default=2, ge=1, le=100)


class NightlySpec(_Strict):
    """``[nightly]``: what `lepton-search nightly` does with this study each night."""

    trials: int = Field(default=10, ge=0, description="Trials added to the study each night.")
    timeout_s: float | None = Field(default=None, gt=0, description="Wall-time limit of the extension.")
    # Absolute latency moves more between processes and days than within one measurement window
    # (45% was seen between two processes on a 2-vCPU machine), so the default
    # is wider than the in-window noise band.
    regression_tolerance: float = Field(
        default=0.25, gt=0, lt=10, description="Slowdown (fraction) beyond which a frontier point regressed."
    )


def _default_objectives() -> list[ObjectiveSpec]:
    # Cost is proportional to latency while the deployment is fixed; with deployment knobs in the
    # space (batch size, threads, backend) the two differ, and the frontier shows the trade-off.
    return [
        ObjectiveSpec(name="accuracy"),
        ObjectiveSpec(name="latency_ms"),
        ObjectiveSpec(name="cost_usd_per_million"),
    ]


class StudySpec(_Strict):
    """A whole study file."""

    study: StudySection
    objectives: list[ObjectiveSpec] = Field(default_factory=_default_objectives)
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    space: SearchSpace = Field(default_factory=SearchSpace)
    measurement: MeasurementSpec = Field(default_factory=MeasurementSpec)
    cost: CostSpec = Field(default_factory=CostSpec)
    nightly: NightlySpec | None = None
    fidelity: FidelitySpec | None = None
    recipes: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Known configurations evaluated first, as config sections (quantization, pruning, ...).",
    )

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[ObjectiveSpec]) -> list[ObjectiveSpec]:
        names = [o.name for o in v]
        if not 1 <= len(v) <= 4:
            raise ValueError(f"list 1 to 4 objectives, got {len(v)}")
        if len(set(names)) != len(names):
            raise ValueError(f"objectives list a name twice: {names}")
        return v

    @model_validator(mode="after")
    def _torch_measurement_backend(self) -> StudySpec:
        from lepton_search.spaces._config import torch_precisions

        backend = self.measurement.backend
        if self.space.deployment.backend is None and torch_precisions(backend) is not None:
            raise ValueError(
                f"measurement.backend = {backend!r} measures torch.export programs, which run only the precisions "
                f"{list(torch_precisions(backend) or ())} (no ONNX Runtime int8); set [space.deployment] "
                f"backend = [{backend!r}] so the space offers only those (chosen from "
                "space.deployment.torch_precision)"
            )
        return self

    @model_validator(mode="after")
    def _pruning_backends(self) -> StudySpec:
        # 2:4 sparsity is only faster where sparse kernels exist; a trial's backend is the searched
        # deployment backend when there is one, else the measurement backend.
        for backend in self.space.deployment.backend or [self.measurement.backend]:
            try:
                self.space.pruning.check_backend(backend)
            except ConfigError as e:
                raise ValueError(str(e)) from e
        return self

    @field_validator("recipes")
    @classmethod
    def _recipes_are_configs(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from lepton_search.spaces import CompressionConfig

        for i, recipe in enumerate(v):
            try:
                CompressionConfig.from_dict(recipe)
            except ConfigError as e:
                raise ValueError(f"recipe {i + 1} is not a valid configuration: {e}") from e
        return v

    @model_validator(mode="after")
    def _recipes_in_space(self) -> StudySpec:
        for i, config in enumerate(self.recipe_configs):
            if not self.space.contains(config):
                raise ValueError(
                    f"recipe {i + 1} ({config.describe()}) lies outside [space]: a sampler could never propose it, so "
                    "its trial could not be re-queued. Widen [space] to include it, or remove the recipe"
                )
        return self

    @property
    def recipe_configs(self) -> list[Any]:
        """``[[recipes]]`` as :class:`~lepton_search.spaces.CompressionConfig` objects."""
        from lepton_search.spaces import CompressionConfig

        return [CompressionConfig.from_dict(recipe) for recipe in self.recipes]

    @property
    def backends(self) -> list[str]:
        """Every latency backend a trial of this study can be measured on."""
        return sorted({self.measurement.backend, *(self.space.deployment.backend or [])})

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.resolved_direction for o in self.objectives]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source} is not a valid study file:"]
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(StudySpec, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            lines.append(f"  - {key}: unknown key. Allowed keys here: {', '.join(allowed)}.{hint}")
            continue
        message = item["msg"].removeprefix("Value error, ").rstrip(".")
        if item["type"] == "missing":
            lines.append(f"  - {key}: required key is missing.")
            continue
        if not loc:  # a check across sections: the message names what it is about
            lines.append(f"  - {message}.")
            continue
        lines.append(f"  - {key} = {item.get('input')!r}: {message}.")
    return "\n".join(lines)


def parse_study(data: dict[str, Any], source: str = "study file") -> StudySpec:
    """Validates an already-parsed study mapping."""
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_study_file(path: str | Path) -> StudySpec:
    """Reads and validates a TOML study file.

    Raises:
        ConfigError: the file is missing, is not TOML, or does not validate.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Study file {str(path)!r} does not exist. Check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Cannot read study file {str(path)!r}: {e}.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}.") from None
    return parse_study(data, str(path))
