"""Sampler registry: name -> validated options -> an Optuna sampler.

Options are checked against a strict model per sampler (unknown options are errors, never dropped).
The seed is not an option: it is derived per run from the study seed and the number of trials
already in the study, because Optuna does not persist sampler state and a resumed study with a
fixed seed re-proposes its first configurations (optuna issue 3255).

``bruteforce`` (Optuna's ``BruteForceSampler``: every configuration once, in a seeded random order)
needs a finite space: :func:`continuous_params` finds the parameters that would make it infinite,
and :class:`AskTellBruteForceSampler` reports exhaustion through ``exhausted`` instead of calling
``study.stop()``, which only works inside ``study.optimize`` (the driver uses ask-and-tell).

``tpe`` starts with a stratified design by default (``startup = "stratified"``,
:class:`StratifiedStartupTPESampler`): its first ``n_startup_trials`` proposals cover every branch of
the conditional space without repeats, instead of Optuna's independent random draws.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lepton_search.errors import ConfigError, SamplerSpaceError, UnknownNameError

if TYPE_CHECKING:
    import optuna


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TPEOptions(_Options):
    # How the first n_startup_trials are proposed. "stratified" (StratifiedStartupTPESampler): every
    # categorical parameter takes its least-used value so far among the study's trials, running ones
    # included (so every precision, pruning method and distillation method appears early, within the
    # first three trials of the default space, and configurations are not repeated), and numeric ones
    # fill their range. "random" is
    # Optuna's own start-up (independent random draws, with repeats), the default before.
    startup: Literal["stratified", "random"] = "stratified"
    # 6 (was 10): twice the widest branch choice of the default space (3 pruning, 3 distillation
    # methods), so TPE takes over sooner. On 600 replay seeds of the measured digits grid this raised
    # the median HV ratio at 10% of the grid from 0.875 to 0.899 and left 20% level (0.964); most of
    # that is the earlier hand-over, the stratified design adds a little (0.890 with random start-up
    # trials, 6 of them). benchmarks/README.md, "Stratified start-up".
    n_startup_trials: int = Field(default=6, ge=0)
    n_ei_candidates: int = Field(default=24, ge=1)
    # Independent (Optuna 5's own multi-objective default) and a lighter prior than Optuna's 1.0:
    # on the measured digits grid this pair reached a higher hypervolume at 20% of the grid than
    # multivariate + group, on 400 held-out replay seeds (benchmarks/README.md). The compression
    # knobs act nearly independently, so factorised densities learn from a few good trials, where a
    # joint density over the conditional groups splits them up; a lighter prior lets those few
    # trials weigh more against the uniform prior.
    prior_weight: float = Field(default=0.5, gt=0)
    multivariate: bool = False
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


class BruteForceOptions(_Options):
    # Optuna's default. False treats configurations being evaluated as tried: no proposal repeats a
    # trial in flight, and the sampler reports exhaustion when the last ones are in flight, which
    # the driver lets finish (optuna issue 5780 is about study.optimize stopping them). True also
    # proposes configurations in flight (repeats, which the driver serves without counting).
    avoid_premature_stop: bool = False


def _tpe(o: TPEOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    with warnings.catch_warnings():
        # ``group`` is marked experimental; it is what makes TPE model conditional spaces jointly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna 4.9 marked ``prior_weight`` for removal in 6.0; pyproject pins optuna < 6, and
        # test_tpe_defaults_are_the_benchmarked_ones fails when the argument stops taking effect.
        warnings.filterwarnings("ignore", message=".*prior_weight.*", category=FutureWarning)
        options = o.model_dump()
        startup = options.pop("startup")
        if options["group"] is None:
            options["group"] = o.multivariate
        cls = _stratified_startup_tpe_class() if startup == "stratified" else optuna.samplers.TPESampler
        return cls(seed=seed, **options)


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


def _bruteforce(o: BruteForceOptions, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _ask_tell_bruteforce_class()(seed=seed, **o.model_dump())


_BRUTEFORCE_CLASS: type | None = None


def _ask_tell_bruteforce_class() -> type:
    """:class:`AskTellBruteForceSampler`, defined on first use so that importing this module does not
    import Optuna (study files are validated without it)."""
    global _BRUTEFORCE_CLASS
    if _BRUTEFORCE_CLASS is None:
        import optuna

        class AskTellBruteForceSampler(optuna.samplers.BruteForceSampler):
            """``BruteForceSampler`` for ask-and-tell.

            When every configuration has been tried, Optuna's sampler calls ``study.stop()`` from
            ``after_trial``; outside ``study.optimize`` that raises ``RuntimeError`` from
            ``study.tell``. This one sets ``exhausted`` instead, for the driver to stop. A
            continuous parameter is a :class:`ConfigError` that names it.
            """

            exhausted: bool = False

            def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
                if isinstance(param_distribution, optuna.distributions.FloatDistribution):
                    if param_distribution.step is None:
                        raise SamplerSpaceError(bruteforce_space_message({param_name: _describe(param_distribution)}))
                return super().sample_independent(study, trial, param_name, param_distribution)

            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                try:
                    super().after_trial(study, trial, state, values)
                except RuntimeError as e:
                    # The only RuntimeError here is the stop request made outside an optimize loop.
                    if "Study.stop" not in str(e) or getattr(study._thread_local, "in_optimize_loop", False):
                        raise
                    self.exhausted = True

        _BRUTEFORCE_CLASS = AskTellBruteForceSampler
    return _BRUTEFORCE_CLASS


_STRATIFIED_TPE_CLASS: type | None = None

# Trial states whose parameters count as used by the stratified start-up: everything already tried
# or being tried (RUNNING: another worker's proposal in flight; WAITING: an enqueued configuration).
_USED_STATES = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")
# A discrete numeric range with at most this many values is stratified value by value.
_MAX_ENUMERATED_VALUES = 4096


class _OneReadPerTrial:
    """The study as TPE sees it while it proposes one trial: every read of the study's trials comes
    from the list that ``Study.ask`` refreshes once per trial.

    With ``constant_liar`` Optuna's TPE reads the storage again for every parameter, to see the
    other workers' running trials. Here every proposal of a study is made on the driver's one
    thread, all parameters at once, so those reads return what the first one did: with SQLite they
    were half of a proposal's time (``benchmarks/driver_overhead.py``)."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> Any:
        return self._study._get_trials(deepcopy, states, use_cache=True)


def _stratified_startup_tpe_class() -> type:
    """:class:`StratifiedStartupTPESampler`, defined on first use so that importing this module does
    not import Optuna.

    It is long because the class body lives in it: the class subclasses Optuna's ``TPESampler``, so
    it can only be defined once Optuna is imported. Each of the class's methods is short."""
    global _STRATIFIED_TPE_CLASS
    if _STRATIFIED_TPE_CLASS is None:
        import numpy as np
        import optuna
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        from optuna.trial import TrialState

        used_states = tuple(TrialState[name] for name in _USED_STATES)

        class StratifiedStartupTPESampler(optuna.samplers.TPESampler):
            """``TPESampler`` whose start-up trials follow a stratified design over the conditional space.

            Optuna's TPE draws its first ``n_startup_trials`` independently at random: in a small
            conditional space that repeats configurations and can leave a branch (a precision, a
            pruning or distillation method) untried until TPE takes over. Here, while fewer than
            ``n_startup_trials`` trials are complete or pruned (TPE's own count, so the hand-over is
            where TPE's would be), each parameter is chosen from the study's trials:

            - a categorical parameter takes the value used least often so far among the trials that
              have the parameter; ties go to the value seen least often together with this trial's
              choices so far, pair by pair and then all at once (so the configuration is new), then
              to the seeded RNG;
            - a numeric parameter fills its range: with ``m`` values used so far, the range (log
              scale where the parameter is) is cut into ``m + 1`` equal strata and the value is drawn
              in a stratum that no used value falls in (sequential Latin-hypercube style); a discrete
              range takes a least-used value, preferring one in an empty stratum.

            The design is read from ``study.get_trials`` each time (running, waiting and failed trials
            count as used), so a resumed study, a second sampler instance and parallel workers
            continue it instead of starting over. Enqueued parameters and relative sampling are
            Optuna's as usual; after the start-up this is Optuna's TPE unchanged (``constant_liar``
            included).
            """

            def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
                super().__init__(*args, seed=seed, **kwargs)
                self._startup_rng = np.random.RandomState(seed)

            def reseed_rng(self) -> None:
                super().reseed_rng()
                self._startup_rng.seed()

            def in_startup(self, study: Any) -> bool:
                done = study._get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True
                )
                return len(done) < self._n_startup_trials

            def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
                if not self.in_startup(study):
                    return super().sample_independent(_OneReadPerTrial(study), trial, param_name, param_distribution)
                used = []
                # Optuna's own samplers read the study through the cache that ``ask`` refreshes once
                # per trial; reading the storage again for every parameter cost most of a proposal.
                for t in study._get_trials(deepcopy=False, states=used_states, use_cache=True):
                    if t.number == trial.number:
                        continue
                    params = t.params if t.state != TrialState.WAITING else t.system_attrs.get("fixed_params", {})
                    if param_name in params:
                        used.append(params)
                if isinstance(param_distribution, CategoricalDistribution):
                    return self._least_used(trial, param_name, list(param_distribution.choices), used, None)
                return self._fill_range(trial, param_name, param_distribution, used)

            def _least_used(
                self, trial: Any, name: str, values: list[Any], used: list[dict[str, Any]], strata: Any
            ) -> Any:
                """The value used least among ``used`` (the trials that have parameter ``name``); ties
                go to the value that has appeared least often together with each of this trial's
                choices so far (pairs, as in a covering design: a value already seen with int8 goes
                next with fp32), then with all of them at once (a new configuration), then, for a
                numeric range (``strata``: whether each value's stratum is taken), to a value in an
                empty stratum; the seeded RNG breaks what ties remain."""
                chosen = trial.params
                same_prefix = [p for p in used if all(p.get(k, _MISSING) == v for k, v in chosen.items())]
                keys = []
                for i, value in enumerate(values):
                    with_value = [p for p in used if p[name] == value]
                    keys.append(
                        (
                            len(with_value),
                            sum(p.get(k, _MISSING) == v for p in with_value for k, v in chosen.items()),
                            sum(p[name] == value for p in same_prefix),
                            0 if strata is None else int(strata[i]),
                        )
                    )
                best = min(keys)
                ties = [i for i, key in enumerate(keys) if key == best]
                return values[ties[self._startup_rng.randint(len(ties))]]

            def _fill_range(self, trial: Any, name: str, distribution: Any, used: list[dict[str, Any]]) -> Any:
                low, high, log = distribution.low, distribution.high, distribution.log

                def to_unit(x: Any) -> float | None:
                    """``x``'s place in the range, 0 to 1; None for a value that is not a number of it
                    (a trial from before the space changed)."""
                    if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x):
                        return None
                    x = min(max(float(x), low), high)
                    if high == low:
                        return 0.0
                    if log:
                        return float((np.log(x) - np.log(low)) / (np.log(high) - np.log(low)))
                    return (x - low) / (high - low)

                units = [(p, to_unit(p[name])) for p in used]
                units = [(p, u) for p, u in units if u is not None]
                n_strata = len(units) + 1
                taken = {min(int(u * n_strata), n_strata - 1) for _, u in units}
                step = distribution.step
                if isinstance(distribution, IntDistribution) or step is not None:
                    step = step or 1
                    count = int(np.floor((high - low) / step + 1e-9)) + 1
                    if count <= _MAX_ENUMERATED_VALUES:
                        values: list[Any] = [round(low + k * step, 12) for k in range(count)]
                        if isinstance(distribution, IntDistribution):
                            values = [int(v) for v in values]
                        # Used values on the grid's own points, so that 0.30000000000000004 is 0.3.
                        snapped = [
                            {**p, name: values[min(max(round((p[name] - low) / step), 0), count - 1)]} for p, _ in units
                        ]
                        in_taken = [min(int((to_unit(v) or 0.0) * n_strata), n_strata - 1) in taken for v in values]
                        return self._least_used(trial, name, values, snapped, in_taken)
                empty = [i for i in range(n_strata) if i not in taken]
                u = (empty[self._startup_rng.randint(len(empty))] + self._startup_rng.uniform()) / n_strata
                x = float(np.exp(np.log(low) + u * (np.log(high) - np.log(low)))) if log else low + u * (high - low)
                x = min(max(x, low), high)
                if isinstance(distribution, IntDistribution):
                    return int(min(max(low + round((x - low) / step) * step, low), high))
                if step is not None:
                    return float(min(low + round((x - low) / step) * step, high))
                assert isinstance(distribution, FloatDistribution)
                return x

        _STRATIFIED_TPE_CLASS = StratifiedStartupTPESampler
    return _STRATIFIED_TPE_CLASS


_MISSING = object()


_SAMPLERS: dict[str, tuple[type[_Options], Callable[[Any, int], Any]]] = {
    "tpe": (TPEOptions, _tpe),
    "random": (RandomOptions, _random),
    "nsga2": (NSGAIIOptions, _nsga2),
    "nsga3": (NSGAIIOptions, _nsga3),
    "gp": (GPOptions, _gp),
    "qmc": (QMCOptions, _qmc),
    "bruteforce": (BruteForceOptions, _bruteforce),
}

# Samplers that enumerate the space and so need every parameter to be discrete.
FINITE_SPACE_SAMPLERS = frozenset({"bruteforce"})


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


def _range_text(low: float, high: float, log: bool) -> str:
    return f"a float from {low:g} to {high:g}" + (" (log scale)" if log else "")


def _describe(distribution: Any) -> str:
    return _range_text(distribution.low, distribution.high, distribution.log)


def bruteforce_space_message(continuous: dict[str, str]) -> str:
    names = ", ".join(f"{name!r} ({what})" for name, what in continuous.items())
    return (
        "Sampler 'bruteforce' tries every configuration once, so every parameter must be discrete, but the "
        f"space has continuous parameters: {names}. Give each a single value (low = high) or a step where the "
        "space has one (e.g. pruning ratio_step), or choose another sampler (e.g. [sampler] name = 'tpe')."
    )


class _SuggestFn(Protocol):
    def __call__(self, trial: Any) -> Any: ...


class _ProbeTrial:
    """A stand-in for an Optuna trial that follows a given path of categorical choices, takes the low
    end of every numeric range, and records the numeric ranges that have no step."""

    def __init__(self, path: list[int]) -> None:
        self.path = path
        self.chosen: list[int] = []
        self.widths: list[int] = []
        self.continuous: dict[str, str] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        index = self.path[len(self.chosen)] if len(self.chosen) < len(self.path) else 0
        self.chosen.append(index)
        self.widths.append(len(choices))
        return choices[index]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if step is None and low < high:
            self.continuous[name] = _range_text(low, high, log)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return low


def continuous_params(suggest: _SuggestFn, *, max_branches: int = 20000) -> dict[str, str]:
    """The continuous parameters (floats without a step) that the define-by-run ``suggest`` can ask
    for, found by walking every combination of its categorical choices (up to ``max_branches`` of
    them; numeric parameters take their lowest value, which does not change which ones are asked).

    Errors that ``suggest`` raises for a combination (e.g. an invalid configuration) are ignored:
    the parameters it asked for before raising are still seen.
    """
    found: dict[str, str] = {}
    path: list[int] = []
    for _ in range(max_branches):
        probe = _ProbeTrial(path)
        try:
            suggest(probe)
        except Exception:  # an invalid combination: what it asked for so far still counts
            pass
        found.update(probe.continuous)
        # The next combination: advance the deepest choice that has an alternative left.
        depth = len(probe.chosen) - 1
        while depth >= 0 and probe.chosen[depth] + 1 >= probe.widths[depth]:
            depth -= 1
        if depth < 0:
            break
        path = [*probe.chosen[:depth], probe.chosen[depth] + 1]
    return found


def check_sampler_space(name: str, suggest: _SuggestFn) -> None:
    """Raises ConfigError when sampler ``name`` cannot search the space that ``suggest`` defines
    (``bruteforce`` needs every parameter to be discrete)."""
    if name not in FINITE_SPACE_SAMPLERS:
        return
    continuous = continuous_params(suggest)
    if continuous:
        raise SamplerSpaceError(bruteforce_space_message(continuous))


def run_seed(study_seed: int, trials_so_far: int, *, driver: int = 0) -> int:
    """A seed for this run: different after every resume, reproducible for a given history, and
    different for each of several drivers that start on the same history (``driver``: how many
    others were running)."""
    key = f"{study_seed}:{trials_so_far}" + (f":{driver}" if driver else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "little")


def create_sampler(name: str, options: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    """An Optuna sampler named ``name`` with validated ``options`` and ``seed``."""
    validated = validate_sampler_options(name, options)
    return _SAMPLERS[name][1](validated, seed)
