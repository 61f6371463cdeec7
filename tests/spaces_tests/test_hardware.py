"""The hardware-aware space: decisions made from the (simulated) CPU's ISA, each with its reason."""

from __future__ import annotations

import optuna
import pytest

from lepton_search.errors import ConfigError
from lepton_search.spaces import CompressionConfig, DeploymentConfig, QuantizeConfig, SearchSpace
from lepton_search.spaces._hardware import SpaceHardware, decide
from lepton_search.testing import simulated_cpu

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A study file that lists every hardware-decided knob explicitly.
EVERYTHING = {
    "quantization": {
        "precision": ["fp32", "fp16", "int8"],
        "int8_mode": ["static", "dynamic"],
        "calibration_method": ["minmax"],
        "calibration_batches": [1, 2],
        "int8_format": ["u8s8", "s8s8"],
    },
    "deployment": {"backend": ["onnxruntime-cpu", "torch-cpu"], "torch_precision": ["fp32", "bf16"]},
}


def _hardware(cpu: str) -> SpaceHardware:
    with simulated_cpu(cpu):
        return SpaceHardware.detect()


def _suggested(space: SearchSpace, n: int = 60) -> tuple[list[CompressionConfig], set[str]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    configs, params = [], set()
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        assert space.contains(config)
        params_of = SearchSpace.params_of(config)
        assert set(params_of) == set(trial.params)
        replay = optuna.create_study()  # re-queued with params_of, it is the same config
        replay.enqueue_trial(params_of)
        assert space.suggest(replay.ask()) == config
        configs.append(config)
        params |= set(trial.params)
        study.tell(trial, 0.0)
    return configs, params


def test_an_avx2_only_cpu_excludes_what_it_runs_slowly_and_says_why() -> None:
    hardware = _hardware("epyc-avx2")
    assert hardware.description == "Zen 2, AVX2, no VNNI"
    space = SearchSpace.model_validate(EVERYTHING).for_hardware(hardware)
    report = "\n".join(space.hardware_report())
    # bf16 on torch-cpu: not offered, because torch emulates it without AVX-512 BF16 / AMX-BF16.
    assert "bf16 is not offered on torch-cpu" in report and "neither AVX-512 BF16 nor AMX-BF16" in report
    # reduce_range: searched, because without VNNI the 16-bit sums can saturate.
    assert "reduce_range (7-bit int8 weights) is searched" in report and "VPMADDUBSW" in report
    # S8S8: dropped, because x86 runs int8 as U8S8.
    assert "int8 runs as U8S8" in report and "quantization.int8_format lists 's8s8'" in report
    # fp16 on onnxruntime-cpu runs at fp32 speed; dynamic int8 never quantizes convolutions.
    assert "fp16 graph runs at fp32 speed" in report and "never convolutions" in report
    configs, params = _suggested(space)
    torch_cpu = [c for c in configs if c.deployment.backend == "torch-cpu"]
    assert torch_cpu and {c.quantization.precision for c in torch_cpu} == {"fp32"}
    int8 = [c.quantization for c in configs if c.quantization.precision == "int8"]
    assert {q.reduce_range for q in int8} == {False, True} and "int8_reduce_range" in params
    assert {q.int8_format for q in int8 if q.int8_mode == "static"} == {"u8s8"}
    assert not space.contains(
        CompressionConfig(quantization=QuantizeConfig("bf16"), deployment=DeploymentConfig(backend="torch-cpu"))
    )


@pytest.mark.parametrize("cpu", ["epyc-zen5", "xeon-emerald-rapids"])
def test_a_bf16_cpu_offers_bf16_on_torch_cpu_and_drops_reduce_range(cpu: str) -> None:
    hardware = _hardware(cpu)
    space = SearchSpace.model_validate(EVERYTHING).for_hardware(hardware)
    report = "\n".join(space.hardware_report())
    assert "bf16 is offered on torch-cpu" in report and "AVX-512 BF16" in report
    assert "reduce_range is not searched" in report and "AVX-512 VNNI" in report
    configs, params = _suggested(space)
    torch_cpu = {c.quantization.precision for c in configs if c.deployment.backend == "torch-cpu"}
    assert torch_cpu == {"fp32", "bf16"}
    assert "int8_reduce_range" not in params
    assert all(c.quantization.reduce_range is None for c in configs)
    assert space.contains(
        CompressionConfig(quantization=QuantizeConfig("bf16"), deployment=DeploymentConfig(backend="torch-cpu"))
    )


def test_reduce_range_listed_on_a_vnni_cpu_is_dropped_with_the_reason() -> None:
    space = SearchSpace.model_validate({"quantization": {"precision": ["int8"], "reduce_range": [True]}})
    vnni = space.for_hardware(_hardware("epyc-zen5"))
    assert "quantization.reduce_range lists True" in "\n".join(vnni.hardware_report())
    configs, params = _suggested(vnni, 10)
    assert "int8_reduce_range" not in params and all(c.quantization.reduce_range is None for c in configs)
    avx2 = space.for_hardware(_hardware("epyc-avx2"))
    configs, params = _suggested(avx2, 10)
    assert all(c.quantization.reduce_range is True for c in configs)


def test_a_torch_cpu_backend_left_with_no_precision_is_refused_with_the_reason() -> None:
    space = SearchSpace.model_validate({"deployment": {"backend": ["torch-cpu"], "torch_precision": ["bf16"]}})
    with pytest.raises(ConfigError) as error:
        space.for_hardware(_hardware("epyc-avx2"))
    message = str(error.value)
    assert "'torch-cpu'" in message and "['bf16']" in message  # what was received
    assert "neither AVX-512 BF16 nor AMX-BF16" in message  # why
    assert "Add fp32 to torch_precision" in message  # how to fix it
    space.for_hardware(_hardware("epyc-zen5"))  # fine where bf16 runs


def test_the_decisions_of_each_cpu() -> None:
    avx2, zen5, emerald = (decide(_hardware(c)) for c in ("epyc-avx2", "epyc-zen5", "xeon-emerald-rapids"))
    assert (avx2.torch_cpu_bf16, zen5.torch_cpu_bf16, emerald.torch_cpu_bf16) == (False, True, True)
    assert avx2.reduce_range_default == (False, True) and zen5.reduce_range_default is None
    assert avx2.int8_format_allowed == zen5.int8_format_allowed == ("u8s8",)
    assert "AMX TDPBUSD" in emerald.reasons["quantization.int8_format"]
    assert zen5.key == emerald.key and avx2.key != zen5.key
    arm = decide(SpaceHardware("aarch64", frozenset({"asimd", "asimddp"}), "Neoverse N1", None))
    assert arm.int8_format_allowed == ("s8s8",) and arm.reduce_range_allowed == ()


def test_the_legacy_decisions_are_those_of_the_previous_version() -> None:
    # Studies created before the hardware was recorded keep their parameters: bf16 on torch-cpu,
    # no reduce_range and no int8_format parameter.
    legacy = decide(SpaceHardware.legacy())
    assert legacy.torch_cpu_bf16 and legacy.reduce_range_default is None and legacy.int8_format_default is None
    hardware = SpaceHardware.legacy()
    assert SpaceHardware.from_dict(hardware.to_dict()) == hardware


def test_the_hardware_knobs_keep_old_hashes_and_refuse_bad_values() -> None:
    # Left unset, the new knobs leave a config's JSON (and hash) as it was.
    old = QuantizeConfig("int8", "static", "minmax", 2)
    assert "reduce_range" not in CompressionConfig(quantization=old).to_json()
    rr = CompressionConfig(quantization=QuantizeConfig("int8", "dynamic", reduce_range=True))
    assert CompressionConfig.from_json(rr.to_json()) == rr and "7-bit weights" in rr.describe()
    s8 = QuantizeConfig("int8", "static", "minmax", 2, int8_format="s8s8")
    assert "s8s8" in CompressionConfig(quantization=s8).describe()
    with pytest.raises(ConfigError, match="int8_format = 's8s8' is not allowed with int8_mode = 'dynamic'"):
        QuantizeConfig("int8", "dynamic", int8_format="s8s8")
    with pytest.raises(ConfigError, match="int8_format = 'u16s16' is not allowed"):
        QuantizeConfig("int8", "static", "minmax", 2, int8_format="u16s16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reduce_range = 'yes' must be true"):
        QuantizeConfig("int8", "dynamic", reduce_range="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="takes no int8 or int4 settings, got reduce_range = True"):
        QuantizeConfig("fp32", reduce_range=True)
