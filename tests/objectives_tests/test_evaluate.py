"""``evaluate`` and ``prepare`` end to end on the digits task: compress, score, measure, price."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch

from lepton_search.errors import TrialFailed
from lepton_search.objectives import MeasurementSettings, NoGate, TrialRequest, evaluate, prepare
from lepton_search.objectives._evaluate import baseline_onnx, load_task
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig

# A real task whose teacher outputs NaN: the trained digits CNN times NaN. Its metric, argmax
# accuracy, does not notice (argmax of an all-NaN row is 0), so only the outputs can tell.
NAN_TASK_SOURCE = """
    import torch

    from lepton_search.objectives.tasks.digits import DigitsCNNTask


    class NaNOutputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * float("nan")


    class NaNDigitsTask(DigitsCNNTask):
        name = "digits-cnn-nan"

        def teacher(self, cache_dir):
            trained = DigitsCNNTask(width=self.width, epochs=self.epochs, seed=self.seed).teacher(cache_dir)
            return NaNOutputs(trained).eval()
"""


class RecordingGate:
    """A real device gate for one process that records which stage held it, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        self.events.append("compute")
        yield

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        self.events.append("measure")
        yield


def request_for(
    cache: Path, config: CompressionConfig, settings: MeasurementSettings, task: str, options: dict[str, Any]
) -> TrialRequest:
    return TrialRequest(
        task=task, config_json=config.to_json(), cache_dir=str(cache), settings=settings, task_options=options
    )


@pytest.mark.slow
def test_evaluate_one_configuration_end_to_end(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings
) -> None:
    config = CompressionConfig(
        pruning=PruneConfig(method="channel", ratio=0.5), distillation=DistillConfig(method="hard", epochs=1)
    )
    teacher_file = next((teacher_cache / "teachers").glob("*.pt"))
    mtime = teacher_file.stat().st_mtime_ns

    result = evaluate(request_for(teacher_cache, config, fast_settings, "digits-cnn", teacher.options), NoGate())

    assert math.isfinite(result.accuracy) and 0.8 < result.accuracy <= 1.0
    assert math.isfinite(result.test_accuracy) and 0.8 < result.test_accuracy <= 1.0
    assert teacher_file.stat().st_mtime_ns == mtime  # the cached teacher was loaded, not retrained

    latency = result.latency
    assert {"candidate", "baseline", "ratio", "ratio_ci", "verdict", "device"} <= set(latency)
    assert latency["verdict"] in ("faster", "slower", "tie")
    low, high = latency["ratio_ci"]
    assert 0 < low <= high
    assert latency["ratio"] > 0
    assert latency["device"]["backend"] == "onnxruntime-cpu"
    assert latency["candidate"]["sessions"] == latency["baseline"]["sessions"] == fast_settings.sessions
    assert result.latency_ms == latency["candidate"]["median_ms"] > 0

    assert result.cost_usd_per_million > 0
    assert result.parameters < 0.3 * sum(p.numel() for p in teacher.model.parameters())
    assert result.size_bytes == len(result.onnx_bytes)
    assert 0 < result.gzip_size_bytes <= result.size_bytes
    assert {"prune_s", "distill_s", "export_s", "quantize_s", "score_s", "measure_s"} <= set(result.timings_s)
    assert result.peak_rss_mb > 0

    # The bytes are a complete model: ONNX Runtime opens them and classifies ten digits.
    session = ort.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: teacher.task.example_inputs(5)})[0]
    assert out.shape == (5, 10)

    # The baseline it was measured against is the teacher's export, cached beside the teacher.
    assert len(list((teacher_cache / "baselines").glob("*.onnx"))) == 1


@pytest.mark.slow
def test_evaluate_fails_the_trial_when_the_model_outputs_nan(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings, helper_module: Callable[[str], str]
) -> None:
    module = helper_module(NAN_TASK_SOURCE)
    gate = RecordingGate()
    request = request_for(teacher_cache, CompressionConfig(), fast_settings, f"{module}:NaNDigitsTask", teacher.options)

    with pytest.raises(TrialFailed, match="NaN"):
        evaluate(request, gate)

    # It failed while scoring: the exclusive measurement window was never taken.
    assert gate.events == ["compute", "compute"]


@pytest.mark.slow
def test_evaluate_fails_the_trial_when_the_metric_is_nan(tmp_path: Path, fast_settings: MeasurementSettings) -> None:
    # lepton_search.testing's fault-injecting digits task returns a NaN metric (its own small
    # teacher, trained here, predicts normally).
    request = request_for(
        tmp_path / "cache",
        CompressionConfig(),
        fast_settings,
        "lepton_search.testing.tasks:FaultyDigitsTask",
        {"fault": "nan"},
    )
    gate = RecordingGate()

    with pytest.raises(TrialFailed, match=r"metric is nan \(validation\)"):
        evaluate(request, gate)
    assert "measure" not in gate.events


def test_prepare_scores_the_baseline(teacher: Any, teacher_cache: Path) -> None:
    request = request_for(teacher_cache, CompressionConfig(), MeasurementSettings(), "digits-cnn", teacher.options)

    threads = torch.get_num_threads()
    try:
        scores = prepare(request)
    finally:
        torch.set_num_threads(threads)  # prepare() takes every core; later tests expect one

    assert scores["accuracy"] == pytest.approx(teacher.accuracy)
    assert 0.95 < scores["test_accuracy"] <= 1.0


def test_baseline_export_is_cached(teacher: Any, teacher_cache: Path) -> None:
    path = baseline_onnx(teacher.task, teacher.model, teacher_cache)
    mtime = path.stat().st_mtime_ns

    assert baseline_onnx(teacher.task, teacher.model, teacher_cache) == path
    assert path.stat().st_mtime_ns == mtime
    assert path.name == f"digits-cnn-{teacher.task.fingerprint()}.onnx"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_load_task_builds_each_task_once_per_process(teacher: Any, teacher_cache: Path) -> None:
    request = request_for(teacher_cache, CompressionConfig(), MeasurementSettings(), "digits-cnn", teacher.options)
    assert load_task(request) is load_task(request)
    other = request_for(teacher_cache, CompressionConfig(), MeasurementSettings(), "digits-cnn", {"width": 8})
    assert load_task(other) is not load_task(request)
    assert load_task(other).width == 8


def test_no_gate_is_reentrant() -> None:
    gate = NoGate()
    with gate.compute(), gate.compute(), gate.measure():
        pass


# ---------------------------------------------------------------------------------------------
# Deployment knobs: the trial is measured (and priced) at its own backend, batch size and threads


def test_deployment_settings_override_the_study_settings_field_by_field(fast_settings: MeasurementSettings) -> None:
    from lepton_search.objectives._evaluate import deployment_settings
    from lepton_search.spaces import DeploymentConfig

    assert deployment_settings(fast_settings, DeploymentConfig()) is fast_settings
    moved = deployment_settings(fast_settings, DeploymentConfig(batch_size=8, threads=2))
    assert (moved.backend, moved.batch_size, moved.threads) == ("onnxruntime-cpu", 8, 2)
    assert moved.sessions == fast_settings.sessions and moved.warmup_runs == fast_settings.warmup_runs
    assert deployment_settings(fast_settings, DeploymentConfig(backend="torch-cpu")).backend == "torch-cpu"


@pytest.mark.slow
def test_evaluate_measures_and_prices_at_the_trials_deployment(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings
) -> None:
    from lepton_search.objectives import CostModel
    from lepton_search.spaces import DeploymentConfig

    config = CompressionConfig(deployment=DeploymentConfig(batch_size=8, threads=2))
    request = dataclasses.replace(
        request_for(teacher_cache, config, fast_settings, "digits-cnn", teacher.options),
        cost=CostModel(cpu_core_usd_per_hour=0.5),
    )
    result = evaluate(request, NoGate())

    latency = result.latency
    assert latency["deployment"] == {"backend": "onnxruntime-cpu", "batch_size": 8, "threads": 2}
    assert latency["device"]["threads"] == 2  # both models ran with the trial's threads
    # The candidate and the baseline are priced alike: 2 threads at $0.5/h, per inference of a batch of 8.
    assert latency["price_usd_per_hour"] == pytest.approx(1.0)
    for side in ("candidate", "baseline"):
        expected = 1.0 / 3600 * latency[side]["median_ms"] / 1000 / 8 * 1e6
        assert latency[side]["cost_usd_per_million"] == pytest.approx(expected)
    assert result.cost_usd_per_million == latency["candidate"]["cost_usd_per_million"]
    assert result.model_format == "onnx"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluate_on_torch_cpu_exports_measures_and_scores_a_torch_program(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings, precision: str
) -> None:
    from lepton_search.spaces import DeploymentConfig, QuantizeConfig

    config = CompressionConfig(
        quantization=QuantizeConfig(precision=precision),
        deployment=DeploymentConfig(backend="torch-cpu", batch_size=16),
    )
    result = evaluate(request_for(teacher_cache, config, fast_settings, "digits-cnn", teacher.options), NoGate())

    assert result.model_format == "torch-export"
    assert result.latency["device"]["backend"] == "torch-cpu"
    assert result.latency["deployment"]["backend"] == "torch-cpu"
    assert result.latency["verdict"] in ("faster", "slower", "tie")
    # Scored on the program itself: fp32 matches the teacher's ONNX export, bf16 (8 mantissa bits) stays close.
    assert result.accuracy == pytest.approx(teacher.accuracy, abs=0.005 if precision == "fp32" else 0.03)
    # The bytes are the measured torch.export program, cast to the precision, taking fp32 in and out.
    path = Path(teacher_cache) / f"candidate-{precision}.pt2"
    path.write_bytes(result.onnx_bytes)
    program = torch.export.load(str(path))
    dtypes = {p.dtype for p in program.state_dict.values() if p.is_floating_point()}
    assert dtypes == {torch.float32 if precision == "fp32" else torch.bfloat16}
    out = program.module()(torch.from_numpy(teacher.task.example_inputs(3)))
    assert out.shape == (3, 10) and out.dtype == torch.float32
    # The baseline is the fp32 teacher's program, cached beside the ONNX baselines.
    assert len(list((teacher_cache / "baselines").glob("*.pt2"))) == 1


def test_evaluate_refuses_a_precision_the_backend_does_not_run(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings
) -> None:
    from lepton_search.errors import ConfigError
    from lepton_search.spaces import DeploymentConfig, QuantizeConfig

    with pytest.raises(ConfigError, match=r"'int8' cannot run on backend 'torch-cpu'.*onnxruntime"):
        CompressionConfig(
            quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"),
            deployment=DeploymentConfig(backend="torch-cpu"),
        )
    # A study measured on torch-cpu by default: the config alone cannot tell, evaluate does, up front.
    config = CompressionConfig(quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"))
    settings = dataclasses.replace(fast_settings, backend="torch-cpu")
    with pytest.raises(ConfigError, match=r"'int8' cannot run on backend 'torch-cpu'"):
        evaluate(request_for(teacher_cache, config, settings, "digits-cnn", teacher.options), NoGate())
    assert not (teacher_cache / "baselines").exists()  # nothing was exported before the refusal
    # fp16 runs only on GPUs.
    with pytest.raises(ConfigError, match=r"'fp16' cannot run on backend 'torch-cpu'"):
        CompressionConfig(
            quantization=QuantizeConfig(precision="fp16"), deployment=DeploymentConfig(backend="torch-cpu")
        )


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_evaluate_on_torch_cuda_in_half_precision(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings, precision: str
) -> None:
    from lepton_search.spaces import DeploymentConfig, QuantizeConfig

    config = CompressionConfig(
        quantization=QuantizeConfig(precision=precision), deployment=DeploymentConfig(backend="torch-cuda")
    )
    result = evaluate(request_for(teacher_cache, config, fast_settings, "digits-cnn", teacher.options), NoGate())
    assert result.model_format == "torch-export"
    assert result.latency["device"]["device_kind"] == "gpu"
    assert result.accuracy > teacher.accuracy - 0.02
    assert result.cost_usd_per_million > 0
