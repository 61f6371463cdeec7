"""DeploymentConfig and DeploymentSpace: old configs keep their hash, the space offers only
(backend, precision) combinations a backend runs, and params_of re-creates a suggested config."""

from __future__ import annotations

import optuna
import pytest

from lepton_search.errors import ConfigError
from lepton_search.spaces import (
    CompressionConfig,
    DeploymentConfig,
    DeploymentSpace,
    DistillConfig,
    PruneConfig,
    QuantizeConfig,
    SearchSpace,
)
from lepton_search.testing import simulated_cpu

# Hashes of configs written before the deployment section existed (computed on the previous commit).
OLD_HASHES = {
    "778748a2da1b806d": CompressionConfig(),
    "d44c58c729ee99ea": CompressionConfig(pruning=PruneConfig("channel", 0.5)),
    "4dddbf87560f0533": CompressionConfig(
        quantization=QuantizeConfig("int8", "static", "minmax", 2), distillation=DistillConfig("soft", 4.0, 0.5, 2)
    ),
}


@pytest.mark.parametrize(("expected", "config"), list(OLD_HASHES.items()))
def test_configs_without_deployment_keep_their_json_and_hash(expected: str, config: CompressionConfig) -> None:
    assert config.config_hash == expected
    assert "deployment" not in config.to_dict()
    # A stored config from before the section existed loads, and equals the default deployment.
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert CompressionConfig.from_json(config.to_json()).deployment == DeploymentConfig()


def test_deployment_round_trips_and_changes_the_hash() -> None:
    config = CompressionConfig(deployment=DeploymentConfig(backend="torch-cpu", batch_size=8))
    assert config.to_dict()["deployment"] == {"backend": "torch-cpu", "batch_size": 8}
    assert CompressionConfig.from_json(config.to_json()) == config
    assert config.config_hash != CompressionConfig().config_hash
    assert config.describe() == "fp32 @ torch-cpu, batch 8"
    assert CompressionConfig(deployment=DeploymentConfig(threads=2)).describe() == "fp32 @ 2 threads"
    assert not config.is_baseline


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"backend": "torch-cpx"}, "deployment.backend = 'torch-cpx' is not a registered latency backend"),
        ({"batch_size": 0}, r"deployment.batch_size = 0 must be an integer in \[1, 65536\]"),
        ({"threads": True}, r"deployment.threads = True must be an integer in \[1, 512\]"),
        ({"threads": 1.5}, r"deployment.threads = 1.5 must be an integer"),
    ],
)
def test_invalid_deployment_values_say_what_is_allowed(kwargs: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        DeploymentConfig(**kwargs)


def test_from_dict_rejects_unknown_deployment_keys() -> None:
    with pytest.raises(ConfigError, match=r"Unknown keys \['batch'\] in deployment"):
        CompressionConfig.from_dict({"deployment": {"batch": 8}})


@pytest.mark.parametrize(
    ("backend", "precision"),
    [("torch-cpu", "int8"), ("torch-cpu", "fp16"), ("torch-cuda", "int8")],
)
def test_a_torch_backend_refuses_precisions_it_does_not_run(backend: str, precision: str) -> None:
    quantization = QuantizeConfig(precision, "dynamic") if precision == "int8" else QuantizeConfig(precision)
    with pytest.raises(ConfigError, match=rf"'{precision}' cannot run on backend '{backend}'"):
        CompressionConfig(quantization=quantization, deployment=DeploymentConfig(backend=backend))
    # The same precision is fine on an ONNX backend.
    CompressionConfig(quantization=quantization, deployment=DeploymentConfig(backend="onnxruntime-cpu"))


def test_the_default_space_searches_no_deployment() -> None:
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    config = SearchSpace().suggest(trial)
    assert config.deployment == DeploymentConfig()
    assert not any(name.startswith("deploy_") for name in trial.params)


@pytest.mark.parametrize("cpu", ["epyc-avx2", "epyc-zen5"])
def test_suggested_configs_stay_in_the_space_and_are_recreated_from_their_params(cpu: str) -> None:
    # On a simulated CPU: bf16 on torch-cpu, and reduce_range, are hardware decisions.
    with simulated_cpu(cpu):
        _suggest_and_recreate(cpu)


def _suggest_and_recreate(cpu: str) -> None:
    space = SearchSpace(
        deployment=DeploymentSpace(
            backend=["onnxruntime-cpu", "torch-cpu", "torch-cuda"], batch_size=[1, 64], threads=[1, 2]
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen: set[tuple[str | None, str]] = set()
    for _ in range(60):
        trial = study.ask()
        config = space.suggest(trial)
        backend, precision = config.deployment.backend, config.quantization.precision
        seen.add((backend, precision))
        assert space.contains(config)
        params = SearchSpace.params_of(config)
        assert set(params) == set(trial.params)
        # Each backend family has its own precision parameter, with its own fixed choices.
        expected_param = {"onnxruntime-cpu": "precision", "torch-cpu": "torch_cpu_precision"}.get(
            backend, "torch_gpu_precision"
        )
        assert expected_param in trial.params
        # Re-queued with params_of, the trial gets exactly the same config.
        replay = optuna.create_study()
        replay.enqueue_trial(params)
        assert space.suggest(replay.ask()) == config
        study.tell(trial, 0.0)
    assert ("torch-cuda", "fp16") in seen and ("torch-cuda", "bf16") in seen
    # bf16 is offered on torch-cpu only where the CPU has AVX-512 BF16 (or AMX-BF16).
    assert (("torch-cpu", "bf16") in seen) == (cpu == "epyc-zen5")
    assert ("onnxruntime-cpu", "int8") in seen
    assert not {("torch-cpu", "fp16"), ("torch-cpu", "int8"), ("torch-cuda", "int8")} & seen


def test_contains_checks_each_knob() -> None:
    space = SearchSpace(deployment=DeploymentSpace(batch_size=[8, 64]))
    assert space.contains(CompressionConfig(deployment=DeploymentConfig(batch_size=8)))
    assert not space.contains(CompressionConfig(deployment=DeploymentConfig(batch_size=16)))
    assert not space.contains(CompressionConfig())  # this space always sets the batch size
    assert not space.contains(CompressionConfig(deployment=DeploymentConfig(batch_size=8, threads=2)))
    torch_space = SearchSpace(deployment=DeploymentSpace(backend=["torch-cpu"], torch_precision=["fp32"]))
    bf16 = CompressionConfig(quantization=QuantizeConfig("bf16"), deployment=DeploymentConfig(backend="torch-cpu"))
    assert not torch_space.contains(bf16)
    assert torch_space.contains(CompressionConfig(deployment=DeploymentConfig(backend="torch-cpu")))
