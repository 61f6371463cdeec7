"""The search space: which knobs a study explores, and how a trial's suggestions become a config.

The space is conditional: a parameter is suggested only when it applies (``int8_mode`` only for
int8, calibration only for static int8, ``prune_ratio`` only when pruning, distillation settings only
when distilling). Ordered knobs are suggested as numbers, not categories, so samplers keep their
order.

Why dynamic int8 never touches convolutions: ONNX Runtime's dynamic quantization computes the
activation scale at run time; for convolutions this measured 0.2-0.27x of fp32 speed on an AVX2 CPU
and 0.13x on one with AVX-512 VNNI and AMX. Dynamic int8 therefore quantizes only MatMul/Gemm
layers, and static QDQ int8 is the mode for convolutional models.

Hardware decisions (bf16 on torch-cpu, ``reduce_range``, the int8 format; ``spaces/_hardware.py``)
are made from the measuring CPU's ISA: :meth:`SearchSpace.for_hardware` fixes the CPU they are made
for, and a space used without it decides for the CPU this process runs on.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from lepton_search.errors import ConfigError
from lepton_search.spaces._config import (
    INT4_BLOCK_SIZES,
    MAX_DEPLOY_BATCH_SIZE,
    MAX_DEPLOY_THREADS,
    MAX_DISTILL_STEPS,
    MAX_PRUNE_ITERATIONS,
    MAX_PRUNE_RATIO,
    CalibrationMethod,
    ChannelImportance,
    CompressionConfig,
    DeploymentConfig,
    DistillConfig,
    DistillMethod,
    Granularity,
    GraphConfig,
    GraphFusion,
    Int8Format,
    Int8Mode,
    OptimizationLevel,
    Precision,
    PruneConfig,
    PruneMethod,
    PruneScope,
    QuantizeConfig,
    SkipLayerNorm,
    backend_traits,
    torch_precisions,
)
from lepton_search.spaces._hardware import HardwareDecisions, SpaceHardware, decide


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
    """Precision choices; each precision's settings are asked only when that precision is drawn.

    - ``int8``: ``int8_mode``; static mode adds ``calibration_method`` and ``calibration_batches``
      (batches of 64 training rows: the calibration size is ``calibration_batches x 64`` samples).
      ``granularity`` (param ``int8_granularity``), when given, searches the int8 weight scales per
      output channel or per tensor; left out, int8 is per channel (per-tensor int8 cost MiniLM about
      4% cosine on its test passages).
    - ``int4``: weight-only MatMulNBits, with ``int4_block_size`` and ``int4_symmetric`` (both always
      asked for int4). It quantizes linear (MatMul/Gemm) weights only; convolutions stay fp32.
    - ``fp32_fraction`` ([low, high] within [0, 1), step ``fp32_fraction_step``), when given, turns on
      per-layer mixed precision for int8 and int4: that fraction of the quantizable layers, the most
      sensitive first (measured once per study, ``objectives/_sensitivity.py``), stays fp32.
    - ``bf16`` runs on the torch backends only, so it is refused here (the torch backends take their
      precision from ``[space.deployment] torch_precision``); ``fp16`` runs no faster than fp32 on x86
      CPUs and is not offered by default.
    - ``reduce_range`` and ``int8_format`` (params ``int8_reduce_range``, ``int8_format``) are decided
      from the measuring CPU when left out (``spaces/_hardware.py``): reduce_range is searched on x86
      CPUs without VNNI only, and x86 runs int8 as U8S8. Listed, they are searched where the CPU
      allows them; a value it does not is dropped, and :meth:`SearchSpace.hardware_report` says why.
    """

    precision: list[Precision] = Field(
        default_factory=lambda: ["fp32", "int8"],
        description="Weight precisions to try. fp16 is off by default: CPUs run it slower.",
    )
    int8_mode: list[Int8Mode] = Field(default_factory=lambda: ["static"])
    calibration_method: list[CalibrationMethod] = Field(default_factory=lambda: ["minmax", "percentile"])
    calibration_batches: Annotated[
        tuple[int, int], Field(description="[low, high] count of 64-row calibration batches")
    ] = (2, 8)
    granularity: list[Granularity] | None = Field(
        default=None, description="int8 weight scales: per_channel and/or per_tensor (None: per channel, not searched)"
    )
    int4_block_size: list[int] = Field(default_factory=lambda: [32], description="MatMulNBits block sizes to try")
    int4_symmetric: list[bool] = Field(default_factory=lambda: [True], description="int4 without / with zero points")
    fp32_fraction: tuple[float, float] | None = Field(
        default=None, description="[low, high] within [0, 1): fraction of the most sensitive layers kept fp32"
    )
    fp32_fraction_step: float = Field(default=0.05, gt=0, le=0.5)
    reduce_range: list[bool] | None = Field(
        default=None, description="int8 7-bit weights: false and/or true (None: decided from the CPU's ISA)"
    )
    int8_format: list[Int8Format] | None = Field(
        default=None, description="static int8 formats: u8s8 and/or s8s8 (None: decided from the CPU's ISA)"
    )

    @field_validator(
        "precision",
        "int8_mode",
        "calibration_method",
        "granularity",
        "int4_block_size",
        "int4_symmetric",
        "reduce_range",
        "int8_format",
    )
    @classmethod
    def _choices(cls, v: list[Any] | None, info: Any) -> list[Any] | None:
        return None if v is None else _non_empty_unique(v, f"quantization.{info.field_name}")

    @field_validator("calibration_batches")
    @classmethod
    def _batches(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"must be [low, high] with 1 <= low <= high, got {list(v)}")
        return v

    @field_validator("precision")
    @classmethod
    def _no_bf16(cls, v: list[Any]) -> list[Any]:
        if "bf16" in v:
            raise ValueError(
                f"quantization.precision = {v} lists 'bf16', which runs only on the torch-* backends, not through "
                "ONNX Runtime's quantization; remove it here and list it in [space.deployment] torch_precision with "
                "backend torch-cpu or torch-cuda (or choose fp16/int8/int4 for ONNX Runtime)"
            )
        return v

    @field_validator("int4_block_size")
    @classmethod
    def _block_sizes(cls, v: list[int]) -> list[int]:
        wrong = [b for b in v if b not in INT4_BLOCK_SIZES]
        if wrong:
            raise ValueError(f"int4 block sizes {wrong} are not allowed; use some of {list(INT4_BLOCK_SIZES)}")
        return v

    @field_validator("fp32_fraction")
    @classmethod
    def _fraction(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] <= v[1] < 1.0:
            raise ValueError(f"fp32_fraction must be [low, high] with 0 <= low <= high < 1, got {list(v)}")
        return v

    def reduce_range_choices(self, decisions: HardwareDecisions) -> list[bool] | None:
        """The ``reduce_range`` values searched on a CPU with ``decisions``; None: the knob is off."""
        if not decisions.reduce_range_allowed:
            return None
        if self.reduce_range is None:
            return None if decisions.reduce_range_default is None else list(decisions.reduce_range_default)
        return [v for v in self.reduce_range if v in decisions.reduce_range_allowed] or None

    def int8_format_choices(self, decisions: HardwareDecisions) -> list[str] | None:
        """The static int8 formats searched on a CPU with ``decisions``; None: U8S8, not searched."""
        if self.int8_format is None:
            return None if decisions.int8_format_default is None else list(decisions.int8_format_default)
        kept = [f for f in self.int8_format if f in decisions.int8_format_allowed]
        if kept:
            return kept
        return None if decisions.int8_format_default is None else list(decisions.int8_format_default)

    def dropped(self, decisions: HardwareDecisions) -> list[tuple[str, Any]]:
        """``(knob, value)`` for each listed value that the CPU's decisions drop."""
        out: list[tuple[str, Any]] = []
        for value in self.reduce_range or []:
            if value not in decisions.reduce_range_allowed and value:
                out.append(("quantization.reduce_range", value))
        for value in self.int8_format or []:
            if value not in decisions.int8_format_allowed:
                out.append(("quantization.int8_format", value))
        return out

    def suggest(self, trial: TrialLike, hardware: SpaceHardware | None = None) -> QuantizeConfig:
        precision = trial.suggest_categorical("precision", self.precision)
        if precision not in ("int8", "int4"):
            return QuantizeConfig(precision=precision)
        fraction = None
        if self.fp32_fraction is not None:
            low, high = self.fp32_fraction
            fraction = round(trial.suggest_float("fp32_fraction", low, high, step=self.fp32_fraction_step), 6)
        if precision == "int4":
            return QuantizeConfig(
                precision="int4",
                int4_block_size=trial.suggest_categorical("int4_block_size", self.int4_block_size),
                int4_symmetric=trial.suggest_categorical("int4_symmetric", self.int4_symmetric),
                fp32_fraction=fraction,
            )
        decisions = decide(hardware or SpaceHardware.detect())
        mode = trial.suggest_categorical("int8_mode", self.int8_mode)
        granularity = (
            None if self.granularity is None else trial.suggest_categorical("int8_granularity", self.granularity)
        )
        reduce_choices = self.reduce_range_choices(decisions)
        reduce_range = (
            None if reduce_choices is None else trial.suggest_categorical("int8_reduce_range", reduce_choices)
        )
        if mode != "static":
            return QuantizeConfig(
                precision="int8",
                int8_mode=mode,
                granularity=granularity,
                fp32_fraction=fraction,
                reduce_range=reduce_range,
            )
        formats = self.int8_format_choices(decisions)
        return QuantizeConfig(
            precision="int8",
            int8_mode="static",
            calibration_method=trial.suggest_categorical("calibration_method", self.calibration_method),
            calibration_batches=trial.suggest_int("calibration_batches", *self.calibration_batches),
            granularity=granularity,
            fp32_fraction=fraction,
            reduce_range=reduce_range,
            int8_format=None if formats is None else trial.suggest_categorical("int8_format", formats),
        )

    def contains(self, config: QuantizeConfig, hardware: SpaceHardware | None = None) -> bool:
        checks = [config.precision in self.precision]
        if config.precision in ("int8", "int4"):
            fraction, offered = config.fp32_fraction, self.fp32_fraction
            checks.append(
                (fraction is None) == (offered is None)
                and (offered is None or offered[0] - 1e-9 <= fraction <= offered[1] + 1e-9)  # type: ignore[operator]
            )
        if config.precision == "int4":
            checks += [config.int4_block_size in self.int4_block_size, config.int4_symmetric in self.int4_symmetric]
        if config.precision == "int8":
            decisions = decide(hardware or SpaceHardware.detect())
            reduce_choices = self.reduce_range_choices(decisions)
            formats = self.int8_format_choices(decisions) if config.int8_mode == "static" else None
            checks += [
                config.int8_mode in self.int8_mode,
                (config.granularity is None) == (self.granularity is None)
                and (self.granularity is None or config.granularity in self.granularity),
                config.reduce_range is None if reduce_choices is None else config.reduce_range in reduce_choices,
                config.int8_format is None if formats is None else config.int8_format in formats,
            ]
            if config.int8_mode == "static":
                checks += [
                    config.calibration_method in self.calibration_method,
                    self.calibration_batches[0] <= (config.calibration_batches or 0) <= self.calibration_batches[1],
                ]
        return all(checks)

    @staticmethod
    def params_of(config: QuantizeConfig) -> dict[str, Any]:
        params: dict[str, Any] = {"precision": config.precision}
        if config.fp32_fraction is not None:
            params["fp32_fraction"] = config.fp32_fraction
        if config.precision == "int4":
            params["int4_block_size"] = config.int4_block_size
            params["int4_symmetric"] = config.int4_symmetric
        if config.precision == "int8":
            params["int8_mode"] = config.int8_mode
            if config.granularity is not None:
                params["int8_granularity"] = config.granularity
            if config.reduce_range is not None:
                params["int8_reduce_range"] = config.reduce_range
            if config.int8_mode == "static":
                params["calibration_method"] = config.calibration_method
                params["calibration_batches"] = config.calibration_batches
            if config.int8_format is not None:
                params["int8_format"] = config.int8_format
        return params


class PruningSpace(_Section):
    """Pruning methods and the ratio range (at most 0.9).

    ``depth`` drops that fraction of the task's blocks (transformer layers, residual blocks), so
    it needs a task that names them (``Task.depth_blocks``). ``2:4`` takes no ratio and runs faster
    only on the ``torch-cuda`` backend (:meth:`check_backend`). ``importance`` and ``scope`` are
    searched for ``channel`` pruning only when listed; left out, channel pruning keeps its default
    (contribution importance for transformers, L1 magnitude otherwise; a uniform ratio per layer).
    For transformers, ``ratio`` is the feed-forward neurons' share and ``head_ratio`` (when listed)
    the attention heads'; ``reconstruction`` and ``iterations`` search the least-squares refit and
    iterative pruning (see :class:`~lepton_search.spaces.PruneConfig`).
    """

    method: list[PruneMethod] = Field(default_factory=lambda: ["none", "unstructured", "channel"])
    ratio: tuple[float, float] = Field(default=(0.1, 0.75), description="[low, high] in (0, 0.9]")
    ratio_step: float = Field(default=0.05, gt=0, le=0.5)
    importance: list[ChannelImportance] | None = Field(
        default=None, description="Channel importances to try: activation, l1, l2, taylor (None: the default)."
    )
    scope: list[PruneScope] | None = Field(
        default=None, description="uniform (every layer loses the ratio) and/or global (ranked across layers)."
    )
    head_ratio: tuple[float, float] | None = Field(
        default=None, description="[low, high] within [0, 0.9]: fraction of attention heads removed (None: none)"
    )
    head_ratio_step: float = Field(default=0.05, gt=0, le=0.5)
    reconstruction: list[Literal["none", "least_squares"]] | None = Field(
        default=None, description="none and/or least_squares (refit each pruned layer's output projection)"
    )
    iterations: list[int] | None = Field(default=None, description="prune-then-distill steps to try (1: one shot)")

    @field_validator("method")
    @classmethod
    def _choices(cls, v: list[Any]) -> list[Any]:
        return _non_empty_unique(v, "pruning.method")

    @field_validator("importance", "scope", "reconstruction")
    @classmethod
    def _optional_choices(cls, v: list[Any] | None, info: Any) -> list[Any] | None:
        return None if v is None else _non_empty_unique(v, f"pruning.{info.field_name}")

    @field_validator("head_ratio")
    @classmethod
    def _head_ratio(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] <= v[1] <= MAX_PRUNE_RATIO:
            raise ValueError(
                f"head_ratio must be [low, high] with 0 <= low <= high <= {MAX_PRUNE_RATIO}, got {list(v)}"
            )
        return v

    @field_validator("iterations")
    @classmethod
    def _iterations(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        bad = [x for x in _non_empty_unique(v, "pruning.iterations") if not 1 <= x <= MAX_PRUNE_ITERATIONS]
        if bad:
            raise ValueError(f"iterations choices must be in [1, {MAX_PRUNE_ITERATIONS}], got {bad}")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not (0.0 < low <= high <= MAX_PRUNE_RATIO):
            raise ValueError(
                f"pruning ratio must be [low, high] with 0 < low <= high <= {MAX_PRUNE_RATIO}, got {list(v)}"
            )
        return v

    def check_backend(self, backend: str) -> None:
        """Raises :class:`ConfigError` when a listed method cannot run faster on ``backend``
        (``2:4`` needs ``torch-cuda``); call it for every backend a study measures on."""
        if "2:4" in self.method:
            PruneConfig(method="2:4").check_backend(backend)

    def suggest(self, trial: TrialLike) -> PruneConfig:
        method = trial.suggest_categorical("prune_method", self.method)
        if method == "none":
            return PruneConfig()
        if method == "2:4":
            return PruneConfig(method="2:4")
        ratio = trial.suggest_float("prune_ratio", self.ratio[0], self.ratio[1], step=self.ratio_step)
        if method != "channel":
            return PruneConfig(method=method, ratio=round(ratio, 6))
        importance = None if self.importance is None else trial.suggest_categorical("prune_importance", self.importance)
        scope = None if self.scope is None else trial.suggest_categorical("prune_scope", self.scope)
        head_ratio = None
        if self.head_ratio is not None:
            low, high = self.head_ratio
            head_ratio = round(trial.suggest_float("prune_head_ratio", low, high, step=self.head_ratio_step), 6)
        reconstruction = None
        if self.reconstruction is not None:
            reconstruction = trial.suggest_categorical("prune_reconstruction", self.reconstruction)
        iterations = None if self.iterations is None else trial.suggest_categorical("prune_iterations", self.iterations)
        return PruneConfig(
            method=method,
            ratio=round(ratio, 6),
            importance=importance,
            scope=scope,
            head_ratio=head_ratio,
            reconstruction=None if reconstruction == "none" else reconstruction,
            iterations=iterations,
        )

    def contains(self, config: PruneConfig) -> bool:
        if config.method not in self.method:
            return False
        if config.method in ("none", "2:4"):
            return True
        if not self.ratio[0] - 1e-9 <= config.ratio <= self.ratio[1] + 1e-9:
            return False
        if config.method != "channel":
            return True
        for offered, value in ((self.importance, config.importance), (self.scope, config.scope)):
            if (value is None) != (offered is None) or (offered is not None and value not in offered):
                return False
        if self.head_ratio is None:
            if config.head_ratio is not None:
                return False
        elif not self.head_ratio[0] - 1e-9 <= (config.head_ratio or 0.0) <= self.head_ratio[1] + 1e-9:
            return False  # a head ratio of 0 is stored as None
        if self.reconstruction is None:
            if config.reconstruction is not None:
                return False
        elif (config.reconstruction or "none") not in self.reconstruction:
            return False
        if self.iterations is None:
            return config.iterations is None
        return (config.iterations or 1) in self.iterations

    @staticmethod
    def params_of(config: PruneConfig, space: PruningSpace | None = None) -> dict[str, Any]:
        """The parameters of ``config``; a knob's default (no reconstruction, one iteration) is one
        only for a ``space`` that searches the knob."""
        params: dict[str, Any] = {"prune_method": config.method}
        if config.method not in ("none", "2:4"):
            params["prune_ratio"] = config.ratio
        if config.importance is not None:
            params["prune_importance"] = config.importance
        if config.scope is not None:
            params["prune_scope"] = config.scope
        searched_heads = space is not None and space.head_ratio is not None and config.method == "channel"
        if config.head_ratio is not None or searched_heads:
            params["prune_head_ratio"] = config.head_ratio or 0.0
        if config.method == "channel" and (space is not None and space.reconstruction is not None):
            params["prune_reconstruction"] = config.reconstruction or "none"
        elif config.reconstruction is not None:
            params["prune_reconstruction"] = config.reconstruction
        if config.method == "channel" and (space is not None and space.iterations is not None):
            params["prune_iterations"] = config.iterations or 1
        elif config.iterations is not None:
            params["prune_iterations"] = config.iterations
        return params


class DistillationSpace(_Section):
    """Distillation methods and their ranges; temperature is searched on a log scale.

    The budget is ``epochs`` ([low, high] passes at a constant learning rate, Adam), or, when
    ``steps`` lists choices of optimizer steps, a step budget with AdamW, linear warm-up over the
    first ``warmup`` fraction and linear decay (``epochs`` is then not searched).
    ``learning_rate`` is one value, or [low, high] searched on a log scale.

    ``hidden_weight`` ([low, high] within [0, 1]) searches hidden-state distillation's weight when
    given; left out, no hidden-state loss is used. It needs a task that names its hidden layers
    (``Task.hidden_layers``). ``relation_weight`` does the same for MiniLM v2's attention-relation
    loss (``Task.relation_layers``).

    ``quantization_aware`` (``[false, true]``, say) searches whether a distilled student is trained
    through dynamic int8's rounding; it is asked only of trials quantized to dynamic int8.
    """

    method: list[DistillMethod] = Field(default_factory=lambda: ["none", "soft", "hard"])
    temperature: tuple[float, float] = (1.0, 20.0)
    alpha: tuple[float, float] = (0.0, 1.0)
    epochs: tuple[int, int] = (1, 6)
    steps: list[int] | None = Field(default=None, description="optimizer-step budgets to try (None: epochs)")
    warmup: float = Field(default=0.1, ge=0.0, lt=1.0, description="warm-up fraction of a step budget")
    learning_rate: Any = Field(default=1e-3, description="a value, or [low, high] searched on a log scale")
    hidden_weight: tuple[float, float] | None = Field(
        default=None, description="[low, high] within [0, 1]: weight of the hidden-state loss (None: off)"
    )
    relation_weight: tuple[float, float] | None = Field(
        default=None, description="[low, high] within [0, 1]: weight of the attention-relation loss (None: off)"
    )
    quantization_aware: list[bool] | None = Field(
        default=None, description="choices of quantization-aware distillation for dynamic int8 trials (None: off)"
    )

    @field_validator("quantization_aware")
    @classmethod
    def _aware(cls, v: list[bool] | None) -> list[bool] | None:
        return v if v is None else _non_empty_unique(v, "distillation.quantization_aware")

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

    @field_validator("hidden_weight", "relation_weight")
    @classmethod
    def _weight(cls, v: tuple[float, float] | None, info: Any) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError(f"{info.field_name} must be [low, high] within [0, 1], got {list(v)}")
        return v

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 100:
            raise ValueError(f"epochs must be [low, high] within [1, 100], got {list(v)}")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        bad = [x for x in _non_empty_unique(v, "distillation.steps") if not 1 <= x <= MAX_DISTILL_STEPS]
        if bad:
            raise ValueError(f"steps choices must be in [1, {MAX_DISTILL_STEPS}], got {bad}")
        return v

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _learning_rate(cls, v: Any) -> float | tuple[float, float]:
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if len(values) not in (1, 2) or (isinstance(v, (list, tuple)) and len(values) != 2):
            raise ValueError(f"learning_rate must be a number or [low, high], got {v!r}")
        for value in values:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"learning_rate must be a number or [low, high] of numbers, got {v!r}")
            if not math.isfinite(value):
                raise ValueError(f"learning_rate must be finite, got {v!r}")
            if value <= 0:
                raise ValueError(f"learning_rate must be greater than 0, got {v!r}")
        if len(values) == 1:
            return float(values[0])
        low, high = float(values[0]), float(values[1])
        if low > high:
            raise ValueError(f"learning_rate must be [low, high] with low <= high, got {v!r}")
        return (low, high)

    def suggest(self, trial: TrialLike, quantization: QuantizeConfig | None = None) -> DistillConfig:
        kd = trial.suggest_categorical("distill_method", self.method)
        if kd == "none":
            return DistillConfig()
        budget: dict[str, Any]
        if self.steps is not None:
            budget = {"steps": trial.suggest_categorical("distill_steps", self.steps), "warmup": self.warmup}
        else:
            budget = {"epochs": trial.suggest_int("distill_epochs", *self.epochs)}
        if isinstance(self.learning_rate, tuple):
            budget["learning_rate"] = trial.suggest_float("distill_learning_rate", *self.learning_rate, log=True)
        else:
            budget["learning_rate"] = self.learning_rate
        losses: dict[str, Any] = {"hidden_weight": self._hidden(trial), "relation_weight": self._relations(trial)}
        if self.asks_quantization_aware(quantization):
            losses["quantization_aware"] = trial.suggest_categorical(
                "distill_quantization_aware", self.quantization_aware
            )
        if kd == "hard":
            return DistillConfig(method="hard", **budget, **losses)
        temperature = trial.suggest_float("distill_temperature", *self.temperature, log=True)
        alpha = trial.suggest_float("distill_alpha", *self.alpha)
        return DistillConfig(method="soft", temperature=temperature, alpha=alpha, **budget, **losses)

    def asks_quantization_aware(self, quantization: QuantizeConfig | None) -> bool:
        """Whether a trial quantized with ``quantization`` is asked ``distill_quantization_aware``."""
        return (
            self.quantization_aware is not None
            and quantization is not None
            and quantization.precision == "int8"
            and quantization.int8_mode == "dynamic"
        )

    def _hidden(self, trial: TrialLike) -> float | None:
        if self.hidden_weight is None:
            return None
        return trial.suggest_float("distill_hidden_weight", *self.hidden_weight)

    def _relations(self, trial: TrialLike) -> float | None:
        if self.relation_weight is None:
            return None
        return trial.suggest_float("distill_relation_weight", *self.relation_weight)

    def contains(self, config: DistillConfig) -> bool:
        if config.method not in self.method:
            return False
        if config.method == "none":
            return True
        if self.steps is not None:
            checks = [config.steps in self.steps, config.warmup == self.warmup]
        else:
            checks = [config.steps is None, self.epochs[0] <= config.epochs <= self.epochs[1]]
        if isinstance(self.learning_rate, tuple):
            checks.append(self.learning_rate[0] <= config.learning_rate <= self.learning_rate[1])
        else:
            checks.append(config.learning_rate == self.learning_rate)
        if self.hidden_weight is None or config.hidden_weight is None:
            checks.append(self.hidden_weight is None and config.hidden_weight is None)
        else:
            checks.append(self.hidden_weight[0] <= config.hidden_weight <= self.hidden_weight[1])
        checks.append(not config.quantization_aware or True in (self.quantization_aware or []))
        if self.relation_weight is None:
            checks.append(config.relation_weight is None)
        else:  # a relation weight of 0 is stored as None
            checks.append(self.relation_weight[0] <= (config.relation_weight or 0.0) <= self.relation_weight[1])
        if config.method == "soft":
            checks += [
                self.temperature[0] <= (config.temperature or 0) <= self.temperature[1],
                self.alpha[0] <= (config.alpha if config.alpha is not None else -1) <= self.alpha[1],
            ]
        return all(checks)

    @staticmethod
    def params_of(
        config: DistillConfig, space: DistillationSpace | None = None, quantization: QuantizeConfig | None = None
    ) -> dict[str, Any]:
        """The parameters of ``config``; the learning rate is one only for a ``space`` that searches
        it, and quantization awareness only for a trial quantized with ``quantization`` that the
        ``space`` asks it of (or a config that has it on)."""
        params: dict[str, Any] = {"distill_method": config.method}
        if config.method != "none":
            if config.steps is not None:
                params["distill_steps"] = config.steps
            else:
                params["distill_epochs"] = config.epochs
            if space is not None and isinstance(space.learning_rate, tuple):
                params["distill_learning_rate"] = config.learning_rate
            if config.method == "soft":
                params["distill_temperature"] = config.temperature
                params["distill_alpha"] = config.alpha
            if config.hidden_weight is not None:
                params["distill_hidden_weight"] = config.hidden_weight
            if config.relation_weight is not None or (space is not None and space.relation_weight is not None):
                params["distill_relation_weight"] = config.relation_weight or 0.0
            if config.quantization_aware or (space is not None and space.asks_quantization_aware(quantization)):
                params["distill_quantization_aware"] = bool(config.quantization_aware)
        return params


TorchPrecision = Literal["fp32", "fp16", "bf16"]


def torch_precision_param(backend: str) -> str:
    """The Optuna parameter name of the precision on torch backend ``backend``.

    Optuna requires one distribution per parameter name, and the precisions a torch backend runs
    differ from the ONNX ones (and between CPU and GPU), so each backend family has its own name:
    ``torch_cpu_precision`` or ``torch_gpu_precision``. ONNX backends use ``precision``.
    """
    _, device_kind = backend_traits(backend)
    return f"torch_{device_kind}_precision"


class DeploymentSpace(_Section):
    """``[space.deployment]``: the deployment knobs searched, each a list of choices.

    A knob left out is not searched: the trial is measured at the study's ``[measurement]`` value.
    With several backends, ONNX backends take their precision (and int8 settings) from
    ``[space.quantization]``; torch backends run the module cast to one of ``torch_precision``
    that the backend runs (fp32 and bf16 on ``torch-cpu``; fp32, fp16 and bf16 on CUDA), searched
    under their own parameter name (see :func:`torch_precision_param`).

    Batch size and threads are what make latency and cost different objectives: a larger batch
    takes longer per run but costs less per inference; more threads cut latency but a CPU
    deployment pays for every thread.
    """

    backend: list[str] | None = Field(default=None, description="Registered latency backends to deploy on.")
    batch_size: list[int] | None = Field(default=None, description="Batch sizes (requests per run).")
    threads: list[int] | None = Field(default=None, description="Intra-op thread counts.")
    torch_precision: list[TorchPrecision] = Field(
        default_factory=lambda: ["fp32", "bf16", "fp16"],
        description="Precisions for torch backends (each backend gets those it runs).",
    )

    @field_validator("backend")
    @classmethod
    def _backends(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for name in _non_empty_unique(v, "deployment.backend"):
            try:
                backend_traits(name)
            except ConfigError as e:
                raise ValueError(str(e)) from e
        return v

    @field_validator("batch_size", "threads")
    @classmethod
    def _counts(cls, v: list[int] | None, info: Any) -> list[int] | None:
        if v is None:
            return v
        high = MAX_DEPLOY_BATCH_SIZE if info.field_name == "batch_size" else MAX_DEPLOY_THREADS
        _non_empty_unique(v, f"deployment.{info.field_name}")
        bad = [x for x in v if not 1 <= x <= high]
        if bad:
            raise ValueError(f"deployment.{info.field_name} choices must be in [1, {high}], got {bad}")
        return v

    @field_validator("torch_precision")
    @classmethod
    def _precisions(cls, v: list[Any]) -> list[Any]:
        return _non_empty_unique(v, "deployment.torch_precision")

    @property
    def searched(self) -> bool:
        """Whether any deployment knob is searched."""
        return any(v is not None for v in (self.backend, self.batch_size, self.threads))

    def precisions_for(self, backend: str, hardware: SpaceHardware | None = None) -> list[str] | None:
        """``torch_precision`` choices that torch backend ``backend`` runs, on the CPU ``hardware``
        describes (default: this one) for a CPU backend; None for ONNX backends."""
        allowed = torch_precisions(backend)
        if allowed is None:
            return None
        choices = [p for p in self.torch_precision if p in allowed]
        if backend_traits(backend)[1] == "cpu" and not decide(hardware or SpaceHardware.detect()).torch_cpu_bf16:
            choices = [p for p in choices if p != "bf16"]
        return choices

    def suggest(self, trial: TrialLike) -> DeploymentConfig:
        return DeploymentConfig(
            backend=trial.suggest_categorical("deploy_backend", self.backend) if self.backend else None,
            batch_size=trial.suggest_categorical("deploy_batch_size", self.batch_size) if self.batch_size else None,
            threads=trial.suggest_categorical("deploy_threads", self.threads) if self.threads else None,
        )

    def contains(self, config: DeploymentConfig) -> bool:
        return all(
            (value is None) if choices is None else (value in choices)
            for value, choices in (
                (config.backend, self.backend),
                (config.batch_size, self.batch_size),
                (config.threads, self.threads),
            )
        )

    @staticmethod
    def params_of(config: DeploymentConfig) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, value in (
            ("deploy_backend", config.backend),
            ("deploy_batch_size", config.batch_size),
            ("deploy_threads", config.threads),
        ):
            if value is not None:
                params[name] = value
        return params


def _none_for_default(value: str | None) -> Any:
    return None if value == "default" else value


class GraphSpace(_Section):
    """``[space.graph]``: graph knobs of ONNX models, each searched only when listed.

    - ``fusion``: ``none`` and/or ``transformer`` (ONNX Runtime's transformer optimizer: fused
      ``Attention``, ``BiasGelu``; ``QAttention`` after dynamic int8). Not with static int8.
    - ``skip_layer_norm``: ``default`` (as ONNX Runtime and the fusion choose), ``fused`` and/or
      ``unfused`` (keep residual additions apart from the LayerNormalization after them; ONNX
      Runtime otherwise fuses them into ``SkipLayerNormalization``).
    - ``optimization_level``: ONNX Runtime session graph optimisation levels (``all`` is the
      default, and the level every baseline runs at).

    Left out, every trial is the plain ``torch.onnx.export`` graph at level ``all``.
    """

    fusion: list[GraphFusion] | None = Field(default=None, description="none and/or transformer")
    skip_layer_norm: list[Literal["default", SkipLayerNorm]] | None = Field(
        default=None, description="default (ONNX Runtime decides), fused and/or unfused"
    )
    optimization_level: list[OptimizationLevel] | None = Field(default=None, description="basic, extended, all")

    @field_validator("fusion", "skip_layer_norm", "optimization_level")
    @classmethod
    def _choices(cls, v: list[Any] | None, info: Any) -> list[Any] | None:
        return None if v is None else _non_empty_unique(v, f"graph.{info.field_name}")

    def suggest(self, trial: TrialLike, quantization: QuantizeConfig) -> GraphConfig:
        fusion_choices = self.fusion
        if fusion_choices is not None and quantization.precision == "int8" and quantization.int8_mode == "static":
            # Static QDQ int8 and fused Attention do not combine (see GraphConfig); only "none" remains.
            fusion_choices = ["none"] if "none" in fusion_choices else None
        skip = None
        if self.skip_layer_norm:
            skip = _none_for_default(trial.suggest_categorical("graph_skip_layer_norm", self.skip_layer_norm))
        return GraphConfig(
            fusion=trial.suggest_categorical("graph_fusion", fusion_choices) if fusion_choices else None,
            skip_layer_norm=skip,
            optimization_level=(
                trial.suggest_categorical("graph_optimization_level", self.optimization_level)
                if self.optimization_level
                else None
            ),
        )

    def contains(self, config: GraphConfig) -> bool:
        for value, choices, default in (
            (config.fusion, self.fusion, "none"),
            (config.skip_layer_norm, self.skip_layer_norm, "default"),
            (config.optimization_level, self.optimization_level, "all"),
        ):
            if choices is None:
                if value is not None:
                    return False
            elif (value if value is not None else default) not in choices:
                return False
        return True

    def params_of(self, config: GraphConfig, *, explicit: bool = False) -> dict[str, Any]:
        """The parameters of ``config``: its set knobs, and (unless ``explicit``) the default value of
        each knob this space searches."""
        params: dict[str, Any] = {}
        for name, value, choices, default in (
            ("graph_fusion", config.fusion, self.fusion, "none"),
            ("graph_skip_layer_norm", config.skip_layer_norm, self.skip_layer_norm, "default"),
            ("graph_optimization_level", config.optimization_level, self.optimization_level, "all"),
        ):
            if value is not None:
                params[name] = value
            elif choices is not None and not explicit and default is not None:
                params[name] = default
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
    deployment: DeploymentSpace = Field(default_factory=DeploymentSpace)
    graph: GraphSpace = Field(default_factory=GraphSpace)
    # The CPU the hardware decisions are made for (see for_hardware); None: the one detected here.
    _hardware: SpaceHardware | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _torch_backends_have_a_precision(self) -> SearchSpace:
        # Hardware-independent: whether a listed precision runs on the backend at all. Whether this
        # CPU runs it fast is for_hardware's question, asked where the measuring CPU is known.
        for backend in self.deployment.backend or []:
            allowed = torch_precisions(backend)
            if allowed is not None and not [p for p in self.deployment.torch_precision if p in allowed]:
                raise ValueError(
                    f"space.deployment.backend lists {backend!r}, but none of space.deployment.torch_precision "
                    f"{self.deployment.torch_precision} runs on it (it runs {list(allowed)}); "
                    "add one of those, or remove the backend"
                )
        return self

    @property
    def hardware(self) -> SpaceHardware:
        """The CPU this space's hardware decisions are made for."""
        return self._hardware if self._hardware is not None else SpaceHardware.detect()

    def for_hardware(self, hardware: SpaceHardware) -> SearchSpace:
        """This space with its hardware decisions made for ``hardware``.

        Raises:
            ConfigError: a listed torch CPU backend is left with no precision on that CPU (e.g.
                ``torch_precision = ["bf16"]`` where the CPU has no AVX-512 BF16 or AMX-BF16); the
                message gives the reason and the fix.
        """
        decisions = decide(hardware)
        for backend in self.deployment.backend or []:
            choices = self.deployment.precisions_for(backend, hardware)
            if choices is not None and not choices:
                raise ConfigError(
                    f"space.deployment.backend lists {backend!r}, but on this CPU none of "
                    f"space.deployment.torch_precision {self.deployment.torch_precision} is offered there: "
                    f"{decisions.reasons['deployment.torch_precision bf16']}. Add fp32 to torch_precision, remove "
                    f"{backend!r}, or run the study on a CPU with AVX-512 BF16 or AMX-BF16."
                )
        space = self.model_copy()
        space._hardware = hardware
        return space

    def hardware_report(self, hardware: SpaceHardware | None = None) -> list[str]:
        """What the hardware decided for this space, one sentence each, with the reasons."""
        hardware = hardware or self.hardware
        decisions = decide(hardware)
        lines: list[str] = []
        backends = self.deployment.backend or []
        torch_cpu = [b for b in backends if torch_precisions(b) is not None and backend_traits(b)[1] == "cpu"]
        if torch_cpu and "bf16" in self.deployment.torch_precision:
            lines.append(decisions.reasons["deployment.torch_precision bf16"])
        if torch_cpu and "fp16" in self.deployment.torch_precision:
            lines.append(decisions.reasons["deployment.torch_precision fp16"])
        onnx_cpu = not backends or any(torch_precisions(b) is None and backend_traits(b)[1] == "cpu" for b in backends)
        q = self.quantization
        if onnx_cpu and "fp16" in q.precision:
            lines.append(decisions.reasons["quantization.precision fp16"])
        if "int8" in q.precision:
            if "dynamic" in q.int8_mode:
                lines.append(decisions.reasons["quantization.int8_mode dynamic"])
            lines.append(decisions.reasons["quantization.reduce_range"])
            if "static" in q.int8_mode:
                lines.append(decisions.reasons["quantization.int8_format"])
            for knob, value in q.dropped(decisions):
                lines.append(f"{knob} lists {value!r}, which this CPU does not run: dropped (see above)")
        return lines

    def _suggest_quantization(self, trial: TrialLike, backend: str | None) -> QuantizeConfig:
        # The deployment is suggested first: which precisions exist depends on the backend.
        choices = self.deployment.precisions_for(backend, self.hardware) if backend is not None else None
        if choices is None:
            return self.quantization.suggest(trial, self.hardware)
        return QuantizeConfig(precision=trial.suggest_categorical(torch_precision_param(backend), choices))

    def suggest(self, trial: TrialLike) -> CompressionConfig:
        """Asks the trial for each applicable parameter and returns the resulting config."""
        deployment = self.deployment.suggest(trial)
        quantization = self._suggest_quantization(trial, deployment.backend)
        onnx_backend = deployment.backend is None or torch_precisions(deployment.backend) is None
        return CompressionConfig(
            quantization=quantization,
            pruning=self.pruning.suggest(trial),
            distillation=self.distillation.suggest(trial, quantization),
            deployment=deployment,
            graph=self.graph.suggest(trial, quantization) if onnx_backend else GraphConfig(),
        )

    def contains(self, config: CompressionConfig) -> bool:
        """Whether :meth:`suggest` could produce ``config`` (every value within this space)."""
        backend = config.deployment.backend
        choices = self.deployment.precisions_for(backend, self.hardware) if backend is not None else None
        quantization_ok = (
            self.quantization.contains(config.quantization, self.hardware)
            if choices is None
            else config.quantization == QuantizeConfig(precision=config.quantization.precision)
            and config.quantization.precision in choices
        )
        return (
            quantization_ok
            and self.pruning.contains(config.pruning)
            and self.distillation.contains(config.distillation)
            and self.deployment.contains(config.deployment)
            and (config.graph.is_default or self.graph.contains(config.graph))
        )

    @staticmethod
    def params_of(config: CompressionConfig, space: SearchSpace | None = None) -> dict[str, Any]:
        """The trial parameters that :meth:`suggest` would need to produce ``config``.

        Used to re-queue a trial (resume, warm start) with exactly the same configuration. Pass the
        ``space`` the trial will be asked in when it searches graph knobs: a default graph setting
        (no fusion, level ``all``) is then a parameter too.
        """
        backend = config.deployment.backend
        quantization = (
            {torch_precision_param(backend): config.quantization.precision}
            if backend is not None and torch_precisions(backend) is not None
            else QuantizationSpace.params_of(config.quantization)
        )
        return {
            **DeploymentSpace.params_of(config.deployment),
            **quantization,
            **PruningSpace.params_of(config.pruning, space.pruning if space is not None else None),
            **DistillationSpace.params_of(
                config.distillation, None if space is None else space.distillation, config.quantization
            ),
            **(space.graph if space is not None else GraphSpace()).params_of(config.graph, explicit=space is None),
        }
