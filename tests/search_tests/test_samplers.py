"""The sampler registry builds real Optuna samplers from strictly validated options."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pytest

from lepton_search.errors import ConfigError, UnknownNameError
from lepton_search.search import load_study_file
from lepton_search.search._samplers import (
    check_sampler_space,
    continuous_params,
    create_sampler,
    known_samplers,
    run_seed,
    validate_sampler_options,
)
from lepton_search.spaces import SearchSpace
from lepton_search.testing.studies import FAST_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXPECTED_CLASSES = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "nsga3": optuna.samplers.NSGAIIISampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "bruteforce": optuna.samplers.BruteForceSampler,
}
ALLOWED_OPTIONS = {
    "tpe": ["startup", "n_startup_trials", "n_ei_candidates", "prior_weight", "multivariate", "group", "constant_liar"],
    "random": [],
    "nsga2": ["population_size", "crossover_prob", "swapping_prob"],
    "nsga3": ["population_size", "crossover_prob", "swapping_prob"],
    "gp": ["n_startup_trials", "deterministic_objective"],
    "qmc": ["qmc_type", "scramble"],
    "bruteforce": ["avoid_premature_stop"],
}
# 18 configurations, every parameter discrete: a space bruteforce can enumerate.
DISCRETE_SPACE = SearchSpace.model_validate(FAST_SPACE)


def _space_for(name: str) -> SearchSpace:
    return DISCRETE_SPACE if name == "bruteforce" else SearchSpace()


def _run(sampler: optuna.samplers.BaseSampler, n: int = 4, space: SearchSpace | None = None) -> list[dict]:
    """Runs ``n`` trials of ``space`` (default: the default search space) on a two-objective study;
    returns the params."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    space = space or SearchSpace()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for _ in range(n):
            trial = study.ask()
            config = space.suggest(trial)
            study.tell(trial, [1.0 - config.pruning.ratio, 1.0 + config.distillation.epochs])
    return [t.params for t in study.trials]


def test_known_samplers() -> None:
    assert known_samplers() == sorted(EXPECTED_CLASSES)


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_each_name_builds_a_working_optuna_sampler(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = create_sampler(name, {}, seed=7)
    # bruteforce is a subclass that reports exhaustion instead of calling study.stop() (ask-and-tell);
    # tpe is a subclass whose start-up trials are stratified.
    assert type(sampler) is EXPECTED_CLASSES[name] or (
        name in ("bruteforce", "tpe") and type(sampler).__bases__[0] is EXPECTED_CLASSES[name]
    )
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    params = _run(sampler, space=_space_for(name))
    assert len(params) == 4
    assert all("precision" in p for p in params)


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "nsga2", "bruteforce"])
def test_same_seed_same_proposals_different_seed_different(name: str) -> None:
    def proposals(seed: int) -> list[dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _run(create_sampler(name, {}, seed=seed), n=6, space=_space_for(name))

    assert proposals(1) == proposals(1)
    assert proposals(1) != proposals(2)


def test_options_reach_the_sampler() -> None:
    # Optuna keeps these as private attributes; reading them is the only way to see what it got.
    assert create_sampler("tpe", {"n_startup_trials": 3}, seed=0)._n_startup_trials == 3
    nsga = create_sampler("nsga2", {"population_size": 6, "crossover_prob": 0.5}, seed=0)
    assert nsga._population_size == 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        qmc = create_sampler("qmc", {"qmc_type": "halton", "scramble": False}, seed=0)
    assert (qmc._qmc_type, qmc._scramble) == ("halton", False)


def test_tpe_group_follows_multivariate() -> None:
    """Optuna refuses group without multivariate, so group follows multivariate unless it is set."""
    assert validate_sampler_options("tpe", {}).model_dump()["group"] is None
    independent = create_sampler("tpe", {}, seed=0)
    joint = create_sampler("tpe", {"multivariate": True}, seed=0)
    assert (independent._multivariate, independent._group) == (False, False)
    assert (joint._multivariate, joint._group) == (True, True)
    for sampler in (independent, joint):
        assert len(_run(sampler, n=3)) == 3


def test_tpe_builds_without_a_deprecation_warning() -> None:
    """``prior_weight`` is deprecated in Optuna (removal planned for 6.0, which pyproject excludes);
    users of the registry should not see that warning for a default they did not choose."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        create_sampler("tpe", {"prior_weight": 0.25}, seed=0)


def test_tpe_group_without_multivariate_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        validate_sampler_options("tpe", {"multivariate": False, "group": True})
    message = str(info.value)
    assert message.startswith("Sampler 'tpe': group = true needs multivariate = true")


def test_unknown_sampler_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_sampler("cmaes", {}, seed=0)
    assert str(info.value) == "Unknown sampler 'cmaes'. Known samplers: bruteforce, gp, nsga2, nsga3, qmc, random, tpe."
    assert info.value.known == sorted(EXPECTED_CLASSES)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("name", sorted(ALLOWED_OPTIONS))
def test_unknown_option_names_it_and_lists_allowed(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_sampler(name, {"n_startup": 5}, seed=0)
    message = str(info.value)
    assert f"Sampler {name!r}" in message
    assert "unknown option 'n_startup'" in message
    allowed = ", ".join(ALLOWED_OPTIONS[name]) or "none"
    assert f"(allowed: {allowed})" in message


@pytest.mark.parametrize("name", sorted(ALLOWED_OPTIONS))
def test_seed_option_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_sampler_options(name, {"seed": 1})
    assert "sampler.options.seed is not an option" in str(info.value)
    assert "[study].seed" in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("tpe", {"n_startup_trials": -1}, "n_startup_trials = -1: Input should be greater than or equal to 0"),
        ("tpe", {"n_ei_candidates": 0}, "n_ei_candidates = 0: Input should be greater than or equal to 1"),
        ("tpe", {"prior_weight": 0}, "prior_weight = 0: Input should be greater than 0"),
        ("nsga2", {"population_size": 1}, "population_size = 1: Input should be greater than or equal to 2"),
        ("nsga3", {"crossover_prob": 1.5}, "crossover_prob = 1.5: Input should be less than or equal to 1"),
        ("qmc", {"qmc_type": "lhs"}, "qmc_type = 'lhs': Input should be 'sobol' or 'halton'"),
        ("gp", {"deterministic_objective": "sometimes"}, "deterministic_objective = 'sometimes'"),
    ],
)
def test_bad_option_value_names_key_value_and_limit(name: str, options: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_sampler_options(name, options)
    assert expected in str(info.value)


def test_run_seed_is_deterministic() -> None:
    assert run_seed(0, 0) == run_seed(0, 0)
    assert run_seed(42, 17) == run_seed(42, 17)
    # Pinned: a resumed study relies on the same history giving the same seed across versions.
    assert (run_seed(0, 0), run_seed(7, 24)) == (2318824108, 2831226096)


def test_run_seed_differs_per_trial_count_and_study_seed() -> None:
    by_count = [run_seed(0, n) for n in range(200)]
    assert len(set(by_count)) == len(by_count)
    by_study = [run_seed(s, 10) for s in range(200)]
    assert len(set(by_study)) == len(by_study)
    assert run_seed(1, 2) != run_seed(2, 1)
    assert run_seed(12, 3) != run_seed(1, 23)
    assert all(0 <= s < 2**32 for s in by_count + by_study)


def test_run_seed_is_accepted_by_every_sampler() -> None:
    seed = max(run_seed(s, n) for s in range(20) for n in range(20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name in known_samplers():
            assert len(_run(create_sampler(name, {}, seed=seed), n=2, space=_space_for(name))) == 2


def test_tpe_defaults_are_the_benchmarked_ones() -> None:
    """benchmarks/README.md measured these defaults on the digits grid; change them only with new evidence
    (rerun benchmarks/search_efficiency.py and update the README's figures)."""
    sampler = create_sampler("tpe", {}, seed=0)
    assert type(sampler).__name__ == "StratifiedStartupTPESampler"  # startup = "stratified"
    # Optuna keeps these as private attributes; reading them is the only way to see what it got.
    assert sampler._n_startup_trials == 6
    assert sampler._n_ei_candidates == 24
    assert sampler._parzen_estimator_parameters.prior_weight == 0.5
    assert sampler._multivariate is False
    assert sampler._group is False
    assert sampler._constant_liar is True


def test_bruteforce_proposes_every_configuration_once_then_says_it_is_exhausted() -> None:
    """Under ask-and-tell (the driver's loop), Optuna's BruteForceSampler would raise RuntimeError from
    ``study.tell`` once the space is exhausted; the registry's sets ``exhausted`` instead."""
    sampler = create_sampler("bruteforce", {}, seed=3)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    hashes = []
    for n in range(18):
        assert not sampler.exhausted, f"exhausted after {n} of 18 configurations"
        trial = study.ask()
        config = DISCRETE_SPACE.suggest(trial)
        hashes.append(config.config_hash)
        study.tell(trial, [1.0, 1.0])
    assert len(set(hashes)) == 18
    assert sampler.exhausted


def test_continuous_params_are_found_on_every_branch() -> None:
    # temperature and alpha are asked only for soft distillation, the last of three choices.
    found = continuous_params(SearchSpace().suggest)
    assert set(found) == {"distill_temperature", "distill_alpha"}
    assert found["distill_temperature"] == "a float from 1 to 20 (log scale)"
    assert continuous_params(DISCRETE_SPACE.suggest) == {}
    only_hard = SearchSpace.model_validate({"distillation": {"method": ["none", "hard"]}})
    assert "distill_temperature" not in continuous_params(only_hard.suggest)
    pinned = SearchSpace.model_validate(
        {"distillation": {"method": ["soft"], "temperature": [4, 4], "alpha": [0.5, 0.5]}}
    )
    assert not {"distill_temperature", "distill_alpha"} & set(continuous_params(pinned.suggest))


def test_bruteforce_on_a_continuous_space_is_a_config_error_that_names_the_parameters() -> None:
    with pytest.raises(ConfigError) as info:
        check_sampler_space("bruteforce", SearchSpace().suggest)
    message = str(info.value)
    assert "Sampler 'bruteforce' tries every configuration once" in message
    assert "'distill_temperature' (a float from 1 to 20 (log scale))" in message
    assert "'distill_alpha' (a float from 0 to 1)" in message
    assert "or choose another sampler" in message
    check_sampler_space("bruteforce", DISCRETE_SPACE.suggest)  # discrete: fine
    check_sampler_space("tpe", SearchSpace().suggest)  # other samplers search continuous spaces
    # The sampler itself refuses too, should a continuous parameter reach it.
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=create_sampler("bruteforce", {}, seed=0))
    trial = study.ask()
    with pytest.raises(ConfigError, match="'x' \\(a float from 0 to 1\\)"):
        trial.suggest_float("x", 0.0, 1.0)


def test_a_resumed_run_does_not_replay_the_first_runs_proposals() -> None:
    """The issue's resume check at the sampler level: the driver seeds each run with
    ``run_seed(study seed, trials so far)``, so a resumed study proposes new configurations; a fixed
    seed (optuna issue 3255) would propose the first run's again."""

    def run(study: optuna.Study, seed: int, n: int) -> list[str]:
        study.sampler = create_sampler("random", {}, seed=seed)
        hashes = []
        for _ in range(n):
            trial = study.ask()
            config = SearchSpace().suggest(trial)
            hashes.append(config.config_hash)
            study.tell(trial, [1.0, 1.0])
        return hashes

    study = optuna.create_study(directions=["maximize", "minimize"])
    first = run(study, run_seed(0, 0), 5)
    resumed = run(study, run_seed(0, len(study.trials)), 5)
    assert not set(first) & set(resumed)
    replayed = run(optuna.create_study(directions=["maximize", "minimize"]), run_seed(0, 0), 5)
    assert replayed == first  # what a fixed seed does: the check above can fail


# --------------------------------------------------------------------------------------------
# The stratified start-up of "tpe" (benchmarks/README.md, "Stratified start-up")

QUICKSTART = Path(__file__).parents[2] / "studies" / "quickstart.toml"
BRANCHES = {
    "precision": {"fp32", "int8"},
    "prune_method": {"none", "unstructured", "channel"},
    "distill_method": {"none", "soft", "hard"},
}


def _quickstart() -> tuple[SearchSpace, dict]:
    spec = load_study_file(QUICKSTART)
    assert spec.sampler.name == "tpe"
    # The options as the registry fills them in (the quickstart keeps the defaults).
    return spec.space, validate_sampler_options(spec.sampler.name, spec.sampler.options).model_dump()


def _ask_and_tell(study: optuna.Study, space: SearchSpace, n: int) -> list[str]:
    """Asks ``n`` trials of ``space`` and tells each made-up values; returns their config hashes."""
    hashes = []
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        hashes.append(config.config_hash)
        study.tell(trial, [1.0 - config.pruning.ratio, 1.0 + config.distillation.epochs])
    return hashes


def _counts(trials: list, name: str) -> dict:
    return Counter(t.params[name] for t in trials)


def _balanced(trials: list) -> bool:
    """Every branch value appears, and no value of a branch parameter twice more often than another."""
    for name, values in BRANCHES.items():
        counts = _counts(trials, name)
        if set(counts) != values or max(counts.values()) - min(counts.values()) > 1:
            return False
    return True


def test_tpe_starts_with_a_stratified_design_by_default() -> None:
    stratified = create_sampler("tpe", {}, seed=0)
    assert type(stratified).__name__ == "StratifiedStartupTPESampler"
    assert isinstance(stratified, optuna.samplers.TPESampler)
    assert type(create_sampler("tpe", {"startup": "random"}, seed=0)) is optuna.samplers.TPESampler


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_first_proposals_cover_every_branch_without_repeats(seed: int) -> None:
    """On the quickstart's space, the first three proposals take every precision, pruning method and
    distillation method; the whole start-up is balanced over them and repeats no configuration."""
    space, options = _quickstart()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=create_sampler("tpe", options, seed))
    n_startup = options["n_startup_trials"]
    hashes = _ask_and_tell(study, space, n_startup)
    first = study.trials[:3]
    for name, values in BRANCHES.items():
        assert {t.params[name] for t in first} == values, (name, [t.params for t in first])
    assert _balanced(study.trials)
    assert len(set(hashes)) == n_startup


def test_random_startup_does_not_cover_the_branches_so_the_check_can_fail() -> None:
    """Optuna's random start-up (``startup = "random"``) misses a branch in its first three proposals on
    most seeds: the coverage asserted above is the stratified design's doing."""
    space, options = _quickstart()
    covered = 0
    for seed in range(5):
        sampler = create_sampler("tpe", {**options, "startup": "random"}, seed)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        _ask_and_tell(study, space, 3)
        covered += all({t.params[n] for t in study.trials} == v for n, v in BRANCHES.items())
    assert covered < 5


def test_a_resumed_study_continues_the_stratification() -> None:
    """A second sampler instance (a resumed run, with its own seed) reads the design from the study's
    trials and completes it instead of starting over."""
    space, options = _quickstart()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=create_sampler("tpe", options, seed=3))
    half = options["n_startup_trials"] // 2  # both halves inside the start-up
    first = _ask_and_tell(study, space, half)
    study.sampler = create_sampler("tpe", options, seed=run_seed(0, len(study.trials)))
    resumed = _ask_and_tell(study, space, half)
    assert _balanced(study.trials)
    assert len(set(first + resumed)) == 2 * half


def test_running_trials_count_as_used() -> None:
    """Parallel workers: proposals in flight (not yet told) count, so three workers asking at once get
    three different branches of each kind."""
    space, options = _quickstart()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=create_sampler("tpe", options, seed=1))
    trials = [study.ask() for _ in range(3)]
    configs = [space.suggest(t) for t in trials]
    assert {c.pruning.method for c in configs} == BRANCHES["prune_method"]
    assert {c.distillation.method for c in configs} == BRANCHES["distill_method"]
    for trial in trials:
        study.tell(trial, [1.0, 1.0])


def test_after_the_startup_it_is_optunas_tpe_unchanged() -> None:
    """Once ``n_startup_trials`` are complete, the next proposal is the one Optuna's own TPE (same seed
    and options) makes from the same history."""
    space, options = _quickstart()
    sampler = create_sampler("tpe", options, seed=5)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    _ask_and_tell(study, space, options["n_startup_trials"])
    assert not sampler.in_startup(study)
    plain = optuna.create_study(
        directions=["maximize", "minimize"], sampler=create_sampler("tpe", {**options, "startup": "random"}, seed=5)
    )
    plain.add_trials(study.trials)
    ours, theirs = study.ask(), plain.ask()
    space.suggest(ours)
    space.suggest(theirs)
    assert ours.params == theirs.params


def test_stratified_numeric_ranges_fill_their_strata() -> None:
    """A numeric parameter fills its range: with m values used so far, the next falls in one of m + 1
    equal strata that none of them is in (log scale for a log range). Random draws break this within
    a few trials."""

    def strata_respected(xs: list[float]) -> bool:
        for m, x in enumerate(xs):
            taken = {min(int(u * (m + 1)), m) for u in xs[:m]}
            if min(int(x * (m + 1)), m) in taken:
                return False
        return True

    for startup, expected in (("stratified", True), ("random", False)):
        sampler = create_sampler("tpe", {"n_startup_trials": 12, "startup": startup}, seed=2)
        study = optuna.create_study(sampler=sampler)
        for _ in range(12):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            y = trial.suggest_float("y", 1.0, 100.0, log=True)
            study.tell(trial, x + y)
        xs = [t.params["x"] for t in study.trials]
        ys = [math.log(t.params["y"], 100.0) for t in study.trials]
        assert strata_respected(xs) is expected and strata_respected(ys) is expected, startup


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"startup": "latin"}, "Sampler 'tpe': startup = 'latin': Input should be 'stratified' or 'random'"),
        ({"startup": True}, "startup = True: Input should be 'stratified' or 'random'"),
    ],
)
def test_bad_startup_is_a_config_error(options: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_sampler("tpe", options, seed=0)
    assert expected in str(info.value)


def test_startup_reads_trials_from_another_range_or_sampler() -> None:
    """Trials told with other ranges (a study resumed after its space changed) or with float noise on a
    stepped range count where they fall, and break nothing."""
    dist = optuna.distributions.FloatDistribution(0.1, 0.8, step=0.1)
    study = optuna.create_study(sampler=create_sampler("tpe", {"n_startup_trials": 10}, seed=0))
    wide = optuna.distributions.FloatDistribution(0.0, 5.0)
    study.add_trial(optuna.trial.create_trial(params={"r": 4.0}, distributions={"r": wide}, value=1.0))
    study.add_trial(optuna.trial.create_trial(params={"r": 0.30000000000000004}, distributions={"r": dist}, value=1.0))
    proposed = []
    for _ in range(6):
        trial = study.ask()
        proposed.append(round(trial.suggest_float("r", 0.1, 0.8, step=0.1), 6))
        study.tell(trial, 0.0)
    # 4.0 counts as 0.8 (the top of the range) and the noisy 0.3 as 0.3: neither is proposed again.
    assert len(set(proposed)) == 6 and not {0.3, 0.8} & set(proposed), proposed
