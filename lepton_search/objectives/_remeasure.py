"""Re-measuring an exported model against the baseline, outside the trial that produced it.

The frontier's latencies are re-measured at the end of a study in fresh worker processes, with more
sessions: a trial's own window can be lucky or unlucky, and a frontier point is what users deploy.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from lepton_search.objectives._evaluate import (
    DeviceGate,
    NoGate,
    TrialRequest,
    baseline_onnx,
    load_task,
    load_teacher,
)
from lepton_search.objectives._latency import measure_pair
from lepton_search.objectives.tasks._base import contiguous_inputs


def remeasure(
    request: TrialRequest, onnx_bytes: bytes, *, sessions: int, gate: DeviceGate | None = None
) -> dict[str, Any]:
    """Measures ``onnx_bytes`` against the request's baseline with ``sessions`` sessions each.

    Returns:
        :meth:`~lepton_search.objectives.PairMeasurement.to_dict` of the new measurement.
    """
    gate = gate or NoGate()
    settings = dataclasses.replace(request.settings, sessions=sessions)
    cache_dir = Path(request.cache_dir)
    with gate.compute():
        task = load_task(request)
        baseline = baseline_onnx(task, load_teacher(task, cache_dir), cache_dir)
        inputs = contiguous_inputs(task.example_inputs(settings.batch_size))
    with tempfile.TemporaryDirectory(prefix="lepton-remeasure-") as tmp:
        candidate = Path(tmp) / "candidate.onnx"
        candidate.write_bytes(onnx_bytes)
        with gate.measure():
            return measure_pair(candidate, baseline, inputs, settings).to_dict()
