"""The driver on a real Ray instance, real SQLite storage and real ONNX Runtime measurements."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import onnxruntime as ort
import optuna
import pytest
from optuna.trial import TrialState

from lepton_search.errors import ConfigError, TaskError
from lepton_search.search import Locations, frontier, parse_study, run_study, write_report
from lepton_search.search._attrs import DUPLICATE_OF
from lepton_search.search._executor import RayExecutor
from lepton_search.search._export import export_trial
from lepton_search.search._frontier import hypervolume
from lepton_search.search._record import TrialRecord
from lepton_search.search._study import counted_trials, open_study
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, SearchSpace
from lepton_search.storage import get_storage
from lepton_search.testing import study_dict

pytestmark = pytest.mark.usefixtures("ray_session")


def _spec_and_locations(tmp_path: Path, artifacts: Path, **sections):
    spec = parse_study(study_dict(tmp_path, artifacts, **sections))
    return spec, Locations.resolve(spec)


def _enqueue(spec, locations, *configs: CompressionConfig) -> None:
    study = open_study(spec, locations)
    for config in configs:
        study.enqueue_trial(SearchSpace.params_of(config))


class CountingExecutor(RayExecutor):
    """The real Ray executor, counting the configurations it is asked to evaluate."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.evaluated: list[str] = []

    def submit(self, request, owner: str):
        self.evaluated.append(CompressionConfig.from_json(request.config_json).config_hash)
        return super().submit(request, owner)


# Two configurations only: fp32 as is, and fp32 with one epoch of hard distillation.
TWO_CONFIGS = {
    "quantization": {"precision": ["fp32"]},
    "pruning": {"method": ["none"]},
    "distillation": {"method": ["none", "hard"], "epochs": [1, 1]},
}


def test_run_records_every_trial_and_the_frontier(tmp_path: Path, artifacts: Path) -> None:
    spec, locations = _spec_and_locations(tmp_path, artifacts)
    _enqueue(spec, locations, CompressionConfig(pruning=PruneConfig("channel", 0.5)))
    summary = run_study(spec, locations=locations)

    assert (summary.completed, summary.failed) == (4, 0)
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    assert study.metric_names == ["accuracy", "latency_ms", "cost_usd_per_million"]  # the default objectives
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    for trial in trials:
        attrs = trial.user_attrs
        config = CompressionConfig.from_dict(attrs["config"])
        assert attrs["config_hash"] == config.config_hash
        assert attrs["record_schema"] == TrialRecord.SCHEMA_VERSION
        assert attrs["latency"]["median_ms"] == pytest.approx(trial.values[1])
        assert attrs["latency"]["sessions"] == 2
        lo, hi = attrs["ratio_ci"]
        assert lo <= attrs["ratio_to_baseline"] <= hi
        assert attrs["verdict"] in ("faster", "slower", "tie")
        assert attrs["device"]["backend"] == "onnxruntime-cpu"
        assert set(attrs["timings_s"]) >= {"prune_s", "distill_s", "export_s", "quantize_s", "measure_s"}
        assert "artifact_id" in attrs
    pruned = trials[0]
    assert pruned.user_attrs["label"].startswith("fp32 + channel 50%")
    assert pruned.user_attrs["ratio_to_baseline"] < 0.8  # half the channels: about 4x fewer MACs

    data = frontier(study)
    assert data["study"] == "test-study"
    assert data["objectives"] == [
        {"name": "accuracy", "direction": "maximize"},
        {"name": "latency_ms", "direction": "minimize"},
        {"name": "cost_usd_per_million", "direction": "minimize"},
    ]
    assert data["baseline"]["values"]["accuracy"] > 0.8
    assert data["baseline"]["latency"]["median_ms"] > 0
    assert data["trials"], "a finished study has a non-empty frontier"
    assert summary.remeasured == len(data["trials"])
    history = study.user_attrs["lepton:hypervolume"]
    assert sorted(number for number, _ in history["history"]) == sorted(t.number for t in trials)
    assert history["history"][-1][1] == pytest.approx(hypervolume(study, history["reference_point"]))
    assert history["reference_point"][0] == pytest.approx(data["baseline"]["values"]["accuracy"] - 0.05)
    for entry in data["trials"]:
        assert set(entry["values"]) == {"accuracy", "latency_ms", "cost_usd_per_million"}
        assert entry["latency"]["ratio_to_baseline"] > 0
        assert len(entry["latency"]["ci_ms"]) == 2
        again = entry["latency"]["remeasured"]
        assert again["sessions"] == 3  # [measurement].remeasure_sessions in the test study
        assert again["ratio_ci"][0] <= again["ratio_to_baseline"] <= again["ratio_ci"][1]
    json.dumps(data)  # the frontier is plain JSON

    report = write_report(study, tmp_path / "report.html")
    page = report.read_text()
    assert "Pareto frontier" in page and "Hypervolume history" in page and "parcoords" in page
    assert "frontier, re-measured" in page
    # Rounded for reading: no raw dicts, no 16-digit floats; the date and a log latency axis.
    head = page.split("<script")[0]  # the header and tables, before the first plot
    assert "{'" not in head and not re.search(r"\d\.\d{9,}", head)
    assert "Report written 20" in head and "tie groups, simplest configuration first" in head
    from lepton_search.search._frontier import objective_names
    from lepton_search.search._report import _pareto_figure

    assert _pareto_figure(study, objective_names(study)).layout.xaxis.type == "log"

    best = data["trials"][0]["number"]
    written = export_trial(spec, locations, best, tmp_path / "export")
    session = ort.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input"
    assert CompressionConfig.from_json(written[1].read_text()).to_dict() == data["trials"][0]["config"]


@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_rerun_continues_the_same_study(tmp_path: Path, artifacts: Path) -> None:
    spec, locations = _spec_and_locations(tmp_path, artifacts, budget={"n_trials": 2})
    run_study(spec, locations=locations)
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    before = {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}

    summary = run_study(spec, locations=locations, n_trials=3)
    assert summary.completed + summary.failed == 1
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    assert counted_trials(study) == 3
    assert len(study.trials) == 3 + summary.duplicates
    for number, values in before.items():
        assert study.trials[number].values == values

    # At budget: nothing more to do.
    assert run_study(spec, locations=locations, n_trials=3).completed == 0


@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_orphaned_running_trials_are_failed_and_requeued(tmp_path: Path, artifacts: Path) -> None:
    spec, locations = _spec_and_locations(tmp_path, artifacts, budget={"n_trials": 2})
    study = open_study(spec, locations)
    orphan = study.ask()  # left RUNNING, as after a driver killed with SIGKILL
    config = SearchSpace.model_validate(spec.space.model_dump()).suggest(orphan)

    summary = run_study(spec, locations=locations)
    assert summary.orphans_requeued == 1
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("orphaned")
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1
    assert retried[0].state == TrialState.COMPLETE, retried[0].user_attrs.get("fail_reason")
    assert CompressionConfig.from_dict(retried[0].user_attrs["config"]) == config
    counted = [t for t in study.trials if not t.user_attrs.get("requeued")]
    assert len(counted) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("raise", "injected failure"),
        ("crash", "worker process died"),
        ("nan", "metric is nan"),
        ("oom", "MemoryError"),
        ("hang", "timeout"),
        ("export", "ONNX export failed"),
    ],
)
def test_faults_become_failed_trials_and_the_study_goes_on(
    tmp_path: Path, artifacts: Path, fault: str, reason: str
) -> None:
    task_options = {"fault": fault, "when": "channel", "hang_s": 600}
    spec, locations = _spec_and_locations(
        tmp_path,
        artifacts,
        study={"task": "lepton_search.testing.tasks:FaultyDigitsTask", "task_options": task_options},
        budget={"n_trials": 3, "trial_timeout_s": 40 if fault == "hang" else 120},
    )
    good = CompressionConfig()
    bad = CompressionConfig(pruning=PruneConfig("channel", 0.5))
    _enqueue(spec, locations, bad, good, CompressionConfig(distillation=DistillConfig(method="hard", epochs=1)))

    summary = run_study(spec, locations=locations)
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert reason.lower() in study.trials[0].user_attrs["fail_reason"].lower()
    assert summary.failed == 1 and summary.completed == 2
    assert all(math.isfinite(v) for t in study.trials[1:] for v in t.values)


def test_changing_objectives_of_an_existing_study_is_an_error(tmp_path: Path, artifacts: Path) -> None:
    spec, locations = _spec_and_locations(tmp_path, artifacts)
    open_study(spec, locations)
    other, _ = _spec_and_locations(tmp_path, artifacts, objectives=[{"name": "accuracy"}])
    with pytest.raises(ConfigError, match="already exists with directions"):
        open_study(other, locations)


@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_duplicate_configurations_are_served_from_the_cache(tmp_path: Path, artifacts: Path) -> None:
    """Evaluations are counted at the executor: a repeated configuration is never evaluated again, is
    served from the cache (at once, or when its evaluation in flight finishes), and is not counted."""
    spec, locations = _spec_and_locations(tmp_path, artifacts, budget={"n_trials": 3, "workers": 2})
    pruned = CompressionConfig(pruning=PruneConfig("channel", 0.5))
    # Trial 1 repeats trial 0 while it is still being evaluated (2 workers); trial 3 repeats it again.
    _enqueue(spec, locations, pruned, pruned, CompressionConfig(), pruned)
    executor = CountingExecutor(workers=2)
    summary = run_study(spec, locations=locations, executor=executor)

    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    repeats = [t for t in study.trials if DUPLICATE_OF in t.user_attrs]
    assert len(executor.evaluated) == len(set(executor.evaluated)) == 3  # the budget: 3 evaluations
    assert counted_trials(study) == 3 and summary.completed == 3
    assert summary.duplicates == len(repeats) >= 2 and len(study.trials) == 3 + len(repeats)
    first = study.trials[0]
    for repeat in (study.trials[1], study.trials[3]):
        assert repeat.user_attrs[DUPLICATE_OF] == 0
        assert repeat.state == TrialState.COMPLETE
        assert repeat.user_attrs["cached_from"] == {"study": "test-study", "trial": 0}
        assert repeat.values == first.values
        assert repeat.user_attrs["latency"] == first.user_attrs["latency"]
        assert repeat.user_attrs["artifact_id"] == first.user_attrs["artifact_id"]  # no copy of the model
    assert {t.user_attrs["config_hash"] for t in repeats} <= set(executor.evaluated)
    # The frontier lists each configuration once, by the trial that evaluated it.
    listed = [entry["number"] for entry in frontier(study)["trials"]]
    assert not {t.number for t in repeats} & set(listed)

    # Another study in the same storage is served too: nothing is compressed or measured again.
    other = parse_study(study_dict(tmp_path, artifacts, study={"name": "other-study"}, budget={"n_trials": 2}))
    _enqueue(other, locations, pruned, CompressionConfig())
    executor = CountingExecutor(workers=2)
    summary = run_study(other, locations=locations, executor=executor)
    assert (summary.completed, summary.cached, summary.duplicates) == (2, 2, 0)
    assert executor.evaluated == []
    reread = optuna.load_study(study_name="other-study", storage=locations.storage_url)
    assert [t.user_attrs["cached_from"]["study"] for t in reread.trials] == ["test-study", "test-study"]
    assert export_trial(other, locations, 0, tmp_path / "out")[0].stat().st_size > 0


def test_a_sampler_with_nothing_new_to_propose_stops_the_run(tmp_path: Path, artifacts: Path) -> None:
    """bruteforce says when it has tried every configuration; any other sampler is stopped after
    [budget].max_repeats repeated proposals in a row. Either way the budget is not filled with repeats."""
    spec, locations = _spec_and_locations(
        tmp_path,
        artifacts,
        space=TWO_CONFIGS,
        sampler={"name": "bruteforce"},
        budget={"n_trials": 5},
        measurement={"remeasure_sessions": 0},
    )
    summary = run_study(spec, locations=locations)
    assert summary.stopped == "the sampler has proposed every configuration of the space"
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    assert counted_trials(study) == summary.completed == 2
    assert len({t.user_attrs["config_hash"] for t in study.trials}) == 2

    other = parse_study(
        study_dict(
            tmp_path,
            artifacts,
            study={"name": "random-study"},
            space=TWO_CONFIGS,
            budget={"n_trials": 5, "max_repeats": 3},
            measurement={"remeasure_sessions": 0},
        )
    )
    executor = CountingExecutor(workers=2)
    summary = run_study(other, locations=locations, executor=executor)
    assert "3 times in a row ([budget].max_repeats = 3)" in summary.stopped
    assert executor.evaluated == []  # both configurations came from the first study's cache
    study = optuna.load_study(study_name="random-study", storage=locations.storage_url)
    assert counted_trials(study) == 2 and summary.duplicates >= 3
    assert all(DUPLICATE_OF in t.user_attrs for t in study.trials[-3:])


def test_bruteforce_on_a_continuous_space_is_refused_before_anything_is_written(
    tmp_path: Path, artifacts: Path
) -> None:
    soft = {"distillation": {"method": ["none", "soft"], "epochs": [1, 1]}}  # temperature: 1-20, log scale
    spec, locations = _spec_and_locations(tmp_path, artifacts, space=soft, sampler={"name": "bruteforce"})
    with pytest.raises(ConfigError, match="'distill_temperature' \\(a float from 1 to 20 \\(log scale\\)\\)"):
        run_study(spec, locations=locations)
    assert not (tmp_path / "study.db").exists()


def test_a_gpu_backend_on_a_cluster_without_gpus_is_refused_not_left_pending(ray_session: None) -> None:
    from lepton_search.errors import LeptonSearchError
    from lepton_search.search._executor import RayExecutor, gpus_per_trial

    assert gpus_per_trial("onnxruntime-cpu") == 0 and gpus_per_trial("torch-cpu") == 0
    assert gpus_per_trial("onnxruntime-cuda") == 1 and gpus_per_trial("torch-cuda-graphs") == 1
    executor = RayExecutor(workers=1, gpus_per_trial=1)
    with pytest.raises(LeptonSearchError, match=r"needs 1 GPU per trial, but the Ray cluster has 0 GPUs"):
        executor.start()


@pytest.mark.postgres
def test_a_study_runs_on_postgresql(tmp_path: Path, artifacts: Path, postgres_url: str) -> None:
    spec = parse_study(study_dict(tmp_path, artifacts, study={"storage": postgres_url}, budget={"n_trials": 2}))
    locations = Locations.resolve(spec)
    summary = run_study(spec, locations=locations)
    assert summary.completed == 2
    study = optuna.load_study(study_name="test-study", storage=get_storage(postgres_url))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert frontier(study)["trials"]


@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_a_new_study_is_warm_started_from_another_studys_frontier(tmp_path: Path, artifacts: Path) -> None:
    spec, locations = _spec_and_locations(tmp_path, artifacts, budget={"n_trials": 2})
    _enqueue(spec, locations, CompressionConfig(pruning=PruneConfig("channel", 0.5)), CompressionConfig())
    run_study(spec, locations=locations)
    source = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    frontier_configs = {t.user_attrs["config_hash"] for t in source.best_trials}

    follower = parse_study(
        study_dict(tmp_path, artifacts, study={"name": "v2", "warm_start_from": ["test-study"]}, budget={"n_trials": 2})
    )
    summary = run_study(follower, locations=locations)
    assert summary.warm_started == len(frontier_configs)
    study = optuna.load_study(study_name="v2", storage=locations.storage_url)
    seeded = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    assert {t.user_attrs["config_hash"] for t in seeded} == frontier_configs

    missing = parse_study(study_dict(tmp_path, artifacts, study={"name": "v3", "warm_start_from": ["nope"]}))
    with pytest.raises(ConfigError, match="warm_start_from names study 'nope'"):
        run_study(missing, locations=locations)


def test_successive_halving_promotes_only_the_screens_best_to_full_fidelity(tmp_path: Path, artifacts: Path) -> None:
    from lepton_search.search._fidelity import pareto_ranks

    space = {
        "quantization": {"precision": ["fp32"]},
        "pruning": {"method": ["none", "channel"], "ratio": [0.25, 0.75], "ratio_step": 0.25},
        "distillation": {"method": ["hard"], "epochs": [2, 3]},
    }
    spec, locations = _spec_and_locations(
        tmp_path,
        artifacts,
        space=space,
        budget={"n_trials": 2},
        fidelity={"screen_trials": 4, "promote_fraction": 0.5, "screen_epochs": 1, "screen_sessions": 2},
    )
    summary = run_study(spec, locations=locations)
    assert summary.screened >= 4 and summary.completed == 2

    main = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    screen = optuna.load_study(study_name="test-study:screen", storage=locations.storage_url)
    screened = screen.get_trials(states=(TrialState.COMPLETE,))
    assert all(t.user_attrs["fidelity"] == "screen" for t in screened)
    assert all(t.user_attrs["latency"]["sessions"] == 2 for t in screened)

    # Promoted = the top half of each screening round by Pareto rank; nothing else reaches the study.
    first_round = [t for t in screened if t.number < 4]
    ranks = pareto_ranks([list(t.values) for t in first_round], spec.directions)
    best_first = sorted(range(len(first_round)), key=lambda i: (ranks[i], first_round[i].number))[:2]
    allowed = {first_round[i].user_attrs["config_hash"] for i in best_first}
    allowed |= {t.user_attrs["config_hash"] for t in screened if t.number >= 4}  # later rounds, if any
    for trial in main.trials:
        assert trial.user_attrs.get("fidelity") == "full", (trial.number, trial.state)
        assert trial.user_attrs["promoted_from"].startswith("screen#")
        assert trial.user_attrs["config_hash"] in allowed
    assert {e["number"] for e in frontier(main)["trials"]} <= {t.number for t in main.trials}


def test_pareto_ranks_peel_fronts() -> None:
    from lepton_search.search._fidelity import pareto_ranks

    values = [[0.9, 1.0], [0.95, 2.0], [0.8, 3.0], [0.9, 1.0], [0.7, 0.5]]
    assert pareto_ranks(values, ["maximize", "minimize"]) == [0, 0, 1, 0, 0]


def test_a_resumed_study_does_not_replay_its_first_proposals(tmp_path: Path, artifacts: Path) -> None:
    # A continuous space: a duplicate configuration can only come from a replayed random stream.
    space = {
        "quantization": {"precision": ["fp32"]},
        "pruning": {"method": ["none"]},
        "distillation": {"method": ["soft"], "epochs": [1, 1], "temperature": [1.0, 20.0], "alpha": [0.0, 1.0]},
    }
    spec, locations = _spec_and_locations(
        tmp_path,
        artifacts,
        space=space,
        sampler={"name": "random"},
        budget={"n_trials": 3},
        measurement={"remeasure_sessions": 0},
    )
    run_study(spec, locations=locations)
    run_study(spec, locations=locations, n_trials=6)  # same study file, same [study].seed
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    hashes = [t.user_attrs["config_hash"] for t in study.trials]
    assert len(hashes) == 6 and len(set(hashes)) == 6


def test_a_tie_groups_simpler_core_is_evaluated_before_the_run_ends(tmp_path: Path, artifacts: Path) -> None:
    from lepton_search.search._attrs import TIE_CORE_OF
    from lepton_search.spaces import QuantizeConfig

    spec, locations = _spec_and_locations(tmp_path, artifacts, budget={"n_trials": 3, "workers": 1})
    study = open_study(spec, locations)
    int8 = QuantizeConfig("int8", int8_mode="static", calibration_method="minmax", calibration_batches=2)
    # Two constructed frontier points, far better than anything real and indistinguishable from
    # each other: the same int8 with different channel ratios, overlapping speed intervals, the
    # less pruned one a little more accurate and a little slower (so neither dominates).
    for number, ratio in ((0, 0.25), (1, 0.5)):
        accuracy, latency = 0.991 - number * 0.001, 0.00101 - number * 1e-5
        config = CompressionConfig(quantization=int8, pruning=PruneConfig("channel", ratio))
        trial = study.ask()
        for key, value in {
            "config": config.to_dict(),
            "config_hash": config.config_hash,
            "label": config.describe(),
            "accuracy": accuracy,
            "latency": {"median_ms": latency, "ci_ms": [0.0009, 0.0011]},
            "ratio_to_baseline": latency * 10,
            "ratio_ci": [0.009, 0.011],
            "verdict": "faster",
        }.items():
            trial.set_user_attr(key, value)
        study.tell(trial, [accuracy, latency, 1e-9])
    _enqueue(spec, locations, CompressionConfig(pruning=PruneConfig("channel", 0.5)))

    summary = run_study(spec, locations=locations)

    assert summary.tie_cores == 1
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    (core,) = [t for t in study.trials if TIE_CORE_OF in t.user_attrs]
    assert core.state == TrialState.COMPLETE
    assert core.user_attrs[TIE_CORE_OF] == 0  # the simpler of the pair led the group
    assert CompressionConfig.from_dict(core.user_attrs["config"]) == CompressionConfig(quantization=int8)
    assert study.user_attrs["lepton:accuracy_resolution"] == pytest.approx(1 / 360, rel=0.5)
    again = run_study(spec, locations=locations, n_trials=4)
    assert again.tie_cores == 0  # evaluated once, never queued again


def test_a_start_that_fails_leaves_no_study_behind(tmp_path: Path, artifacts: Path) -> None:
    # The task rejects its options when the driver builds it: after the study was created.
    broken, locations = _spec_and_locations(tmp_path, artifacts, study={"task_options": {"nope": 1}})
    with pytest.raises(TaskError, match="rejected its options"):
        run_study(broken, locations=locations)
    assert optuna.get_all_study_names(locations.storage_url) == []
