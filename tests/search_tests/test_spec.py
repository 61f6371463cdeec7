"""Study files: every shipped study validates, and every mistake names the key, the value and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lepton_search.errors import ConfigError
from lepton_search.search import StudySpec, load_study_file, parse_study
from lepton_search.spaces import SearchSpace

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "studies"
QUICKSTART = STUDIES / "quickstart.toml"
STUDY_FILES = sorted(STUDIES.glob("**/*.toml"))

MINIMAL = """\
[study]
name = "minimal"
task = "digits-cnn"
"""


def _variant(tmp_path: Path, old: str, new: str, name: str = "bad.toml") -> Path:
    """A copy of the quickstart study with ``old`` replaced by ``new`` (which must be there)."""
    text = QUICKSTART.read_text()
    assert old in text, f"{old!r} is no longer in the quickstart study; update this test"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_study_file(path)
    return str(info.value)


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Shipped studies
# ---------------------------------------------------------------------------------------------


def test_study_glob_finds_the_quickstart() -> None:
    assert QUICKSTART in STUDY_FILES


@pytest.mark.parametrize("path", STUDY_FILES, ids=[str(p.relative_to(STUDIES)) for p in STUDY_FILES])
def test_every_shipped_study_validates(path: Path) -> None:
    spec = load_study_file(path)
    assert isinstance(spec, StudySpec)
    assert spec.study.name.strip()
    # The file states its study name explicitly rather than relying on a default.
    assert tomllib.loads(path.read_text())["study"]["name"] == spec.study.name


def test_quickstart_contents() -> None:
    spec = load_study_file(QUICKSTART)
    assert spec.study.name == "digits-quickstart"
    assert spec.study.task == "digits-cnn"
    assert spec.objective_names == ["accuracy", "latency_ms"]
    assert spec.directions == ["maximize", "minimize"]
    assert spec.constraints.max_accuracy_drop == 0.05
    assert spec.sampler.name == "tpe"
    assert spec.sampler.options == {}  # the benchmarked defaults
    assert (spec.budget.n_trials, spec.budget.workers, spec.budget.trial_timeout_s) == (20, 2, 300)
    assert len(spec.recipe_configs) == 3
    assert spec.space.quantization.int8_mode == ["static"]
    assert spec.space.pruning.ratio == (0.1, 0.75)
    assert spec.space.distillation.epochs == (1, 5)
    assert spec.measurement.sessions == 3


def test_minimal_study_gets_defaults(tmp_path: Path) -> None:
    spec = load_study_file(_write(tmp_path, MINIMAL))
    assert spec.objective_names == ["accuracy", "latency_ms", "cost_usd_per_million"]
    assert spec.directions == ["maximize", "minimize", "minimize"]
    assert not spec.space.deployment.searched  # deployment knobs are searched only when listed
    assert spec.sampler.name == "tpe"
    assert spec.budget.n_trials == 20
    assert spec.space == SearchSpace()
    assert spec.study.storage is None


def test_parse_study_takes_a_mapping() -> None:
    spec = parse_study({"study": {"name": "m", "task": "digits-cnn"}, "objectives": [{"name": "size_mb"}]})
    assert spec.objective_names == ["size_mb"]
    assert spec.directions == ["minimize"]


def test_task_reference_is_checked_without_importing_it(tmp_path: Path) -> None:
    import sys

    text = MINIMAL.replace('"digits-cnn"', '"not_an_installed_package.tasks:make_task"')
    spec = load_study_file(_write(tmp_path, text))
    assert spec.study.task == "not_an_installed_package.tasks:make_task"
    assert "not_an_installed_package" not in sys.modules


# ---------------------------------------------------------------------------------------------
# Mistakes
# ---------------------------------------------------------------------------------------------


def test_mistyped_section_suggests_the_right_one(tmp_path: Path) -> None:
    path = _variant(tmp_path, "[budget]", "[budgt]")
    message = _error(path)
    assert str(path) in message
    assert "budgt: unknown key" in message
    assert "Did you mean 'budget'?" in message
    assert "study, objectives, constraints, sampler, budget, space" in message


def test_mistyped_key_suggests_the_right_one(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, "n_trials = 20", "n_trails = 20"))
    assert "budget.n_trails: unknown key" in message
    assert "Did you mean 'n_trials'?" in message
    assert "n_trials, timeout_s, workers, trial_timeout_s" in message


def test_mistyped_nested_key_suggests_the_right_one(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, "ratio = [0.1, 0.75]", "rato = [0.1, 0.75]"))
    assert "space.pruning.rato: unknown key" in message
    assert "Did you mean 'ratio'?" in message


def test_mistyped_key_in_an_objective(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'direction = "minimize"', 'directon = "minimize"'))
    assert "objectives.1.directon: unknown key" in message
    assert "Allowed keys here: name, direction." in message
    assert "Did you mean 'direction'?" in message


def test_unknown_key_without_a_close_match_has_no_guess(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, MINIMAL + "\n[xyzzy]\nq = 1\n"))
    assert "xyzzy: unknown key" in message
    assert "Did you mean" not in message


def test_pruning_ratio_out_of_range_names_key_value_and_range(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, "ratio = [0.1, 0.75]", "ratio = [0.1, 1.5]"))
    assert "space.pruning.ratio = [0.1, 1.5]" in message
    assert "0 < low <= high <= 0.9" in message


@pytest.mark.parametrize("value", ['"loud"', "1.5", "-0.1", "true"])
def test_noise_band_is_auto_or_a_fraction(tmp_path: Path, value: str) -> None:
    message = _error(_write(tmp_path, MINIMAL + f"[measurement]\nnoise_band = {value}\n"))
    assert "measurement.noise_band = " in message
    assert "must be 'auto'" in message and "a fraction in [0, 1)" in message


def test_noise_band_defaults_to_calibration(tmp_path: Path) -> None:
    spec = load_study_file(_write(tmp_path, MINIMAL))
    assert (spec.measurement.noise_band, spec.measurement.calibration_runs) == ("auto", 5)
    fixed = load_study_file(_write(tmp_path, MINIMAL + "[measurement]\nnoise_band = 0\n", name="fixed.toml"))
    assert fixed.measurement.noise_band == 0.0


def test_semi_structured_pruning_needs_a_backend_with_sparse_kernels(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'method = ["none", "unstructured", "channel"]', 'method = ["none", "2:4"]'))
    assert "pruning.method = '2:4' needs a backend with 2:4 semi-structured sparse kernels" in message
    assert "'onnxruntime-cpu'" in message


def test_unknown_task_lists_known_tasks(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'task = "digits-cnn"', 'task = "digits-rnn"'))
    assert "study.task = 'digits-rnn'" in message
    assert "Unknown task 'digits-rnn'" in message
    assert "Known tasks: digits-cnn" in message
    assert "'package.module:factory'" in message


def test_values_with_dots_are_quoted_exactly(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'task = "digits-cnn"', 'task = "..digits"'))
    assert "study.task = '..digits'" in message
    assert "Unknown task '..digits'" in message


def test_missing_study_name_is_required(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'name = "digits-quickstart"\n', ""))
    assert "study.name: required key is missing." in message


def test_missing_study_section_is_required(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "[budget]\nn_trials = 3\n"))
    assert "  - study: required key is missing." in message


def test_empty_study_name_is_rejected(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'name = "digits-quickstart"', 'name = ""'))
    assert "study.name = ''" in message
    assert "at least 1 character" in message


def test_wrong_objective_direction(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'direction = "maximize"', 'direction = "minimize"'))
    assert "objectives.0" in message
    assert "objective 'accuracy' can only be maximized, got direction 'minimize'" in message


def test_unknown_objective_direction_value(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'direction = "maximize"', 'direction = "up"'))
    assert "objectives.0.direction = 'up'" in message
    assert "'maximize' or 'minimize'" in message


def test_unknown_objective_name(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'name = "latency_ms"', 'name = "latency"'))
    assert "objectives.1.name = 'latency'" in message
    assert "'accuracy', 'latency_ms', 'cost_usd_per_million' or 'size_mb'" in message


def test_duplicate_objectives(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'name = "latency_ms"\ndirection = "minimize"', 'name = "accuracy"'))
    assert "objectives = " in message
    assert "objectives list a name twice: ['accuracy', 'accuracy']" in message


def test_empty_objectives(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "objectives = []\n" + MINIMAL))
    assert "objectives = []: list 1 to 4 objectives, got 0." in message


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = _variant(tmp_path, "n_trials = 20", "n_trials = = 20")
    message = _error(path)
    assert f"{path} is not valid TOML" in message
    assert "line" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "study.toml"
    message = _error(path)
    assert f"Study file {str(path)!r} does not exist" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = _error(tmp_path)
    assert f"Cannot read study file {str(tmp_path)!r}" in message


def test_budget_needs_positive_trials_and_workers(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, MINIMAL + "[budget]\nn_trials = 0\nworkers = 0\n"))
    assert "budget.n_trials = 0: Input should be greater than or equal to 1." in message
    assert "budget.workers = 0: Input should be greater than or equal to 1." in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = QUICKSTART.read_text().replace("[budget]", "[budgt]").replace("ratio = [0.1, 0.75]", "ratio = [0.1, 1.5]")
    message = _error(_write(tmp_path, text))
    assert "budgt: unknown key" in message
    assert "space.pruning.ratio = [0.1, 1.5]" in message


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        ("measurement", "warmup_s = inf", "measurement.warmup_s = inf: Input should be a finite number."),
        ("measurement", "min_session_s = nan", "measurement.min_session_s = nan: Input should be a finite number."),
        ("space.distillation", "learning_rate = inf", "space.distillation.learning_rate = inf"),
        ("budget", "trial_timeout_s = inf", "budget.trial_timeout_s = inf"),
    ],
)
def test_infinite_and_nan_numbers_are_rejected(tmp_path: Path, table: str, line: str, expected: str) -> None:
    message = _error(_write(tmp_path, f"{MINIMAL}[{table}]\n{line}\n"))
    assert expected in message


def test_gpu_prices_must_be_positive(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, MINIMAL + "[cost.gpu_usd_per_hour]\nT4 = -1.0\n"))
    assert "cost.gpu_usd_per_hour.T4 = -1.0: Input should be greater than 0." in message


def test_unknown_sampler_lists_known_samplers(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'name = "tpe"', 'name = "cmaes"'))
    assert "Unknown sampler 'cmaes'" in message
    assert "Known samplers: bruteforce, gp, nsga2, nsga3, qmc, random, tpe." in message


def test_unknown_sampler_option_lists_allowed_options(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'name = "tpe"', 'name = "tpe"\n[sampler.options]\nn_startup = 8'))
    assert "unknown option 'n_startup'" in message
    assert "n_startup_trials" in message


def test_sampler_seed_option_points_to_study_seed(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, 'name = "tpe"', 'name = "tpe"\n[sampler.options]\nseed = 3'))
    assert "sampler.options.seed is not an option" in message
    assert "[study].seed" in message


# ---------------------------------------------------------------------------------------------
# [space.deployment]

DEPLOY = STUDIES / "digits-deploy.toml"


def test_the_deploy_study_searches_backend_batch_size_and_threads() -> None:
    spec = load_study_file(DEPLOY)
    deployment = spec.space.deployment
    assert deployment.backend == ["onnxruntime-cpu", "torch-cpu"]
    assert deployment.batch_size == [8, 64, 256] and deployment.threads == [1, 2]
    assert spec.objective_names == ["accuracy", "latency_ms", "cost_usd_per_million"]
    assert spec.backends == ["onnxruntime-cpu", "torch-cpu"]
    # The study's default deployment is among the choices, so the reference point's baseline is measured.
    assert spec.measurement.batch_size in deployment.batch_size and spec.measurement.threads in deployment.threads


def _deploy(tmp_path: Path, table: str) -> str:
    return _error(_write(tmp_path, MINIMAL + "\n[space.deployment]\n" + table))


def test_unknown_deployment_backend_lists_the_registered_ones(tmp_path: Path) -> None:
    message = _deploy(tmp_path, 'backend = ["onnxruntime-cpu", "torch-cpx"]\n')
    assert "space.deployment.backend" in message and "'torch-cpx'" in message
    assert "onnxruntime-cpu" in message and "torch-cuda-graphs" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("batch_size = [0, 8]", "deployment.batch_size choices must be in [1, 65536], got [0]"),
        ("threads = [1, 1]", "deployment.threads lists a choice twice"),
        ("threads = []", "deployment.threads must list at least one choice"),
        ("batch = [8]", "unknown key"),
    ],
)
def test_deployment_choices_are_checked(tmp_path: Path, line: str, expected: str) -> None:
    assert expected in _deploy(tmp_path, line + "\n")


def test_a_torch_backend_needs_a_precision_it_runs(tmp_path: Path) -> None:
    message = _deploy(tmp_path, 'backend = ["torch-cpu"]\ntorch_precision = ["fp16"]\n')
    assert "'torch-cpu'" in message and "['fp16']" in message and "['fp32', 'bf16']" in message


def test_a_torch_measurement_backend_needs_the_deployment_backend(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, MINIMAL + '\n[measurement]\nbackend = "torch-cpu"\n'))
    assert "measurement.backend = 'torch-cpu'" in message
    assert "[space.deployment] backend = ['torch-cpu']" in message
    ok = MINIMAL + '\n[measurement]\nbackend = "torch-cpu"\n[space.deployment]\nbackend = ["torch-cpu"]\n'
    assert load_study_file(_write(tmp_path, ok, "ok.toml")).backends == ["torch-cpu"]


def test_a_gpu_deployment_backend_makes_trials_request_a_gpu(tmp_path: Path) -> None:
    from lepton_search.search._executor import gpus_per_trial

    text = MINIMAL + '\n[space.deployment]\nbackend = ["onnxruntime-cpu", "torch-cuda"]\n'
    spec = load_study_file(_write(tmp_path, text))
    # The driver sizes each trial's Ray request by the most demanding backend the space can pick,
    # so the executor refuses up front on a cluster without GPUs instead of hanging.
    assert max(gpus_per_trial(b) for b in spec.backends) == 1.0
    assert max(gpus_per_trial(b) for b in load_study_file(DEPLOY).backends) == 0.0
