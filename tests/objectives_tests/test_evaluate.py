"""``evaluate`` and ``prepare`` end to end on the digits task: compress, score, measure, price."""

from __future__ import annotations

import contextlib
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
