"""Sampler registry: name -> validated options -> an Optuna sampler.

Options are checked against a strict model per sampler (unknown options are errors, never dropped).
The seed is not an option: it is derived per run from the study seed and the number of trials
already in the study, because Optuna does not persist sampler state and a resumed study with a
fixed seed re-proposes its first configurations (optuna issue 3255).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lepton_search.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    import optuna


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TPEOptions(_Options):
    n_startup_trials: int = Field(default=10, ge=0)
    n_ei_candidates: int = Field(default=24, ge=1)
    multivariate: bool = True
    # None follows ``multivariate``: Optuna refuses ``group`` without ``multivariate``, so setting
    # only ``multivariate = false`` must not fail later, at sampler construction.
    group: bool | None = None
    # Explicit because the default has changed across Optuna versions; with parallel workers it
    # keeps TPE from proposing the same region to every idle worker.
    constant_liar: bool = True

    @model_validator(mode="after")
    def _group_needs_multivariate(self) -> TPEOptions:
        if self.group and not self.multivariate:
            raise ValueError("group = true needs multivariate = true; set multivariate = true or remove group")
        return self


class RandomOptions(_Options):
    pass


class NSGAIIOptions(_Options):
    population_size: int = Field(default=20, ge=2)
    crossover_prob: float = Field(default=0.9, ge=0, le=1)
    swapping_prob: float = Field(default=0.5, ge=0, le=1)


class GPOptions(_Options):
    n_startup_trials: int = Field(default=10, ge=0)
    deterministic_objective: bool = False


class QMCOptions(_Options):
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True


def _tpe(o: TPEOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    with warnings.catch_warnings():
        # ``group`` is marked experimental; it is what makes TPE model conditional spaces jointly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        options = o.model_dump()
        if options["group"] is None:
            options["group"] = o.multivariate
        return optuna.samplers.TPESampler(seed=seed, **options)


def _random(o: RandomOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _nsga2(o: NSGAIIOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, **o.model_dump())


def _nsga3(o: NSGAIIOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIIISampler(seed=seed, **o.model_dump())


def _gp(o: GPOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, **o.model_dump())


def _qmc(o: QMCOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.QMCSampler(seed=seed, **o.model_dump())


_SAMPLERS: dict[str, tuple[type[_Options], Callable[[Any, int], Any]]] = {
    "tpe": (TPEOptions, _tpe),
    "random": (RandomOptions, _random),
    "nsga2": (NSGAIIOptions, _nsga2),
    "nsga3": (NSGAIIOptions, _nsga3),
    "gp": (GPOptions, _gp),
    "qmc": (QMCOptions, _qmc),
}


def known_samplers() -> list[str]:
    return sorted(_SAMPLERS)


def validate_sampler_options(name: str, options: dict[str, Any]) -> _Options:
    """Validated options for sampler ``name``.

    Raises:
        UnknownNameError: no sampler has that name.
        ConfigError: an option is unknown or has a bad value.
    """
    if name not in _SAMPLERS:
        raise UnknownNameError("sampler", name, _SAMPLERS)
    options_cls = _SAMPLERS[name][0]
    if "seed" in options:
        raise ConfigError(
            "sampler.options.seed is not an option: set [study].seed; each run derives its own "
            "sampler seed from it so that a resumed study does not replay its first trials."
        )
    try:
        return options_cls.model_validate(options)
    except ValidationError as e:
        problems = []
        for item in e.errors():
            key = ".".join(str(p) for p in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown option {key!r} (allowed: {', '.join(options_cls.model_fields) or 'none'})")
            elif not key:  # a check across options: the message names them
                problems.append(message)
            else:
                problems.append(f"{key} = {item.get('input')!r}: {message}")
        raise ConfigError(f"Sampler {name!r}: " + "; ".join(problems)) from None


def run_seed(study_seed: int, trials_so_far: int) -> int:
    """A seed for this run: different after every resume, reproducible for a given history."""
    digest = hashlib.sha256(f"{study_seed}:{trials_so_far}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def create_sampler(name: str, options: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    """An Optuna sampler named ``name`` with validated ``options`` and ``seed``."""
    validated = validate_sampler_options(name, options)
    return _SAMPLERS[name][1](validated, seed)
