"""Re-measuring an exported model against the baseline, outside the trial that produced it.

The frontier's latencies are re-measured at the end of a study in fresh worker processes, with more
sessions: a trial's own window can be lucky or unlucky, and a frontier point is what users deploy.
The request's ``config_json`` is the trial's config: the model is re-measured at the trial's own
deployment (backend, batch size, threads), against the baseline in the same file format.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from lepton_search.objectives._evaluate import (
    MODEL_SUFFIX,
    DeviceGate,
    NoGate,
    TrialRequest,
    baseline_model,
    deployment_settings,
    load_task,
    load_teacher,
    measure_against_baseline,
    price_measurement,
    trial_backend,
)
from lepton_search.objectives.tasks._base import contiguous_inputs
from lepton_search.spaces import CompressionConfig


def remeasure(
    request: TrialRequest, onnx_bytes: bytes, *, sessions: int, gate: DeviceGate | None = None
) -> dict[str, Any]:
    """Measures ``onnx_bytes`` (the trial's model file, ONNX or ``.pt2``) against the baseline with
    ``sessions`` sessions each, at the deployment of the request's config.

    Returns:
        :meth:`~lepton_search.objectives.PairMeasurement.to_dict` of the new measurement, with the
        costs and the deployment added as in a trial.
    """
    gate = gate or NoGate()
    config = CompressionConfig.from_json(request.config_json)
    settings = dataclasses.replace(deployment_settings(request.settings, config.deployment), sessions=sessions)
    backend = trial_backend(config, settings)
    cache_dir = Path(request.cache_dir)
    with gate.compute():
        task = load_task(request)
        baseline = baseline_model(backend, task, load_teacher(task, cache_dir), cache_dir)
        inputs = contiguous_inputs(task.example_inputs(settings.batch_size))
    with tempfile.TemporaryDirectory(prefix="lepton-remeasure-") as tmp:
        candidate = Path(tmp) / f"candidate{MODEL_SUFFIX[backend.model_format]}"
        candidate.write_bytes(onnx_bytes)
        with gate.measure():
            pair, latency = measure_against_baseline(request, candidate, baseline, inputs, settings, backend)
    price_measurement(request.cost, pair, settings, latency)
    return latency
