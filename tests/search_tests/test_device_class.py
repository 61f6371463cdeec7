"""The device class keys the result cache, and a study keeps the hardware decisions it was created
with. Other CPUs are simulated by overriding the probe on the driver; the workers measure for real."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest

from lepton_search.devices._machine import cpu_identity
from lepton_search.search import Locations, parse_study, run_study
from lepton_search.search._attrs import STUDY_HARDWARE_ATTR
from lepton_search.search._executor import RayExecutor
from lepton_search.search._recording import result_key
from lepton_search.search._study import base_request, open_study, with_study_hardware
from lepton_search.spaces import CompressionConfig, SearchSpace
from lepton_search.testing import simulated_cpu, study_dict

ONE_CONFIG = {
    "quantization": {"precision": ["fp32"]},
    "pruning": {"method": ["none"]},
    "distillation": {"method": ["none"]},
}


class CountingExecutor(RayExecutor):
    """The real Ray executor, counting the configurations it is asked to evaluate."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.evaluated: list[str] = []

    def submit(self, request, owner: str):
        self.evaluated.append(CompressionConfig.from_json(request.config_json).config_hash)
        return super().submit(request, owner)


def _spec(tmp_path: Path, artifacts: Path, name: str):
    # A fixed noise band and no frontier re-measurement: the cache is under test, not the statistics.
    data = study_dict(
        tmp_path,
        artifacts,
        study={"name": name},
        space=ONE_CONFIG,
        budget={"n_trials": 1, "workers": 1},
        measurement={"noise_band": 0.05, "remeasure_sessions": 0},
    )
    spec = parse_study(data)
    return spec, Locations.resolve(spec)


def test_the_cache_key_holds_the_device_class(tmp_path: Path, artifacts: Path) -> None:
    spec, locations = _spec(tmp_path, artifacts, "keys")
    request = base_request(spec, locations)
    config = CompressionConfig()
    here = result_key(request, "fingerprint", config)
    with simulated_cpu("epyc-avx2"):
        avx2 = result_key(request, "fingerprint", config)
    with simulated_cpu("epyc-zen5"):
        zen5 = result_key(request, "fingerprint", config)
    assert len({here, avx2, zen5}) == 3
    # A result is stored under the class it was measured on, whichever machine's driver stores it.
    assert result_key(request, "fingerprint", config, cpu_identity().device_class) == here


@pytest.mark.usefixtures("ray_session")
def test_a_result_cached_under_one_isa_is_not_served_under_another(tmp_path: Path, artifacts: Path) -> None:
    config = CompressionConfig()
    first, locations = _spec(tmp_path, artifacts, "measured-here")
    open_study(first, locations).enqueue_trial(SearchSpace.params_of(config))
    executor = CountingExecutor(workers=1)
    assert run_study(first, locations=locations, executor=executor).completed == 1
    assert executor.evaluated == [config.config_hash]

    # The same configuration, task and setup, proposed by a driver on an AVX2-only CPU that shares
    # the model name "AMD EPYC" with another: not served from the cache, evaluated again.
    with simulated_cpu("epyc-avx2"):
        other, _ = _spec(tmp_path, artifacts, "on-avx2")
        open_study(other, locations).enqueue_trial(SearchSpace.params_of(config))
        executor = CountingExecutor(workers=1)
        summary = run_study(other, locations=locations, executor=executor)
    assert (summary.completed, summary.cached) == (1, 0)
    assert executor.evaluated == [config.config_hash]
    [trial] = optuna.load_study(study_name="on-avx2", storage=locations.storage_url).trials
    assert "cached_from" not in trial.user_attrs

    # Back on this machine's CPU, the result measured here is served again.
    again, _ = _spec(tmp_path, artifacts, "here-again")
    open_study(again, locations).enqueue_trial(SearchSpace.params_of(config))
    executor = CountingExecutor(workers=1)
    summary = run_study(again, locations=locations, executor=executor)
    assert (summary.completed, summary.cached) == (1, 1) and executor.evaluated == []
    [trial] = optuna.load_study(study_name="here-again", storage=locations.storage_url).trials
    assert trial.user_attrs["cached_from"]["study"] == "measured-here"
    assert trial.user_attrs["device"]["device_class"] == cpu_identity().device_class


def test_a_study_keeps_the_hardware_decisions_it_was_created_with(
    tmp_path: Path, artifacts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = study_dict(
        tmp_path,
        artifacts,
        space={"deployment": {"backend": ["torch-cpu"], "torch_precision": ["fp32", "bf16"]}},
    )
    spec = parse_study(data)
    locations = Locations.resolve(spec)
    with simulated_cpu("epyc-zen5"):
        study = open_study(spec, locations)
    assert study.user_attrs[STUDY_HARDWARE_ATTR]["description"] == "Zen 5, AVX-512 VNNI/BF16"
    # Resumed on an AVX2-only CPU, the study's space still offers bf16 (Optuna's choices for
    # torch_cpu_precision cannot change within a study), and the driver says so.
    with simulated_cpu("epyc-avx2"), caplog.at_level(logging.WARNING):
        resumed = with_study_hardware(spec, study)
        assert resumed.space.deployment.precisions_for("torch-cpu", resumed.space.hardware) == ["fp32", "bf16"]
        assert spec.space.deployment.precisions_for("torch-cpu") == ["fp32"]  # a new study here would not
    assert "was created on Zen 5, AVX-512 VNNI/BF16" in caplog.text and "Zen 2, AVX2, no VNNI" in caplog.text
    # A study created before the hardware was recorded resumes with that version's decisions.
    study.set_user_attr(STUDY_HARDWARE_ATTR, None)
    with simulated_cpu("epyc-avx2"):
        legacy = with_study_hardware(spec, study)
    assert legacy.space.deployment.precisions_for("torch-cpu", legacy.space.hardware) == ["fp32", "bf16"]
