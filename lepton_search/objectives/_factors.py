"""Where the speed comes from: a configuration's techniques measured one at a time.

A configuration that prunes, rewrites the graph and quantizes is faster than the baseline by the
product of what each step gives and how they interact. :func:`factor_configs` splits it into each
technique alone (the pruned and distilled student in fp32 on the plain export; the graph settings
on the unpruned fp32 model; the quantization alone on the plain export) plus the whole
configuration, and :func:`measure_factors` builds and scores them all and measures them in the
same rounds against the same baseline (:func:`~lepton_search.objectives.latency.measure_against`),
so their ratios can be compared with each other.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lepton_search.objectives._evaluate import (
    DeviceGate,
    NoGate,
    TrialRequest,
    baseline_model,
    compress_and_score,
    deployment_settings,
    load_task,
    load_teacher,
    trial_backend,
)
from lepton_search.objectives.latency import measure_against
from lepton_search.objectives.tasks._base import contiguous_inputs
from lepton_search.spaces import CompressionConfig

#: The whole configuration, in :func:`factor_configs`' result.
COMBINED = "combined"


def factor_configs(config: CompressionConfig) -> dict[str, CompressionConfig]:
    """Each technique ``config`` uses, alone (``pruning`` with its distillation, ``graph``,
    ``quantization``), at ``config``'s deployment, and ``config`` itself as :data:`COMBINED`."""
    deployment = config.deployment
    factors: dict[str, CompressionConfig] = {}
    if config.pruning.method != "none":
        factors["pruning"] = CompressionConfig(
            pruning=config.pruning, distillation=config.distillation, deployment=deployment
        )
    if not config.graph.is_default:
        factors["graph"] = CompressionConfig(graph=config.graph, deployment=deployment)
    if config.quantization.precision != "fp32":
        factors["quantization"] = CompressionConfig(quantization=config.quantization, deployment=deployment)
    factors[COMBINED] = config
    return factors


def measure_factors(
    request: TrialRequest,
    configs: Mapping[str, CompressionConfig],
    *,
    sessions: int,
    gate: DeviceGate | None = None,
) -> dict[str, dict[str, Any]]:
    """Builds, scores and measures ``configs`` (all at one deployment) in the same rounds against
    the baseline, with ``sessions`` rounds. Students come from the student cache when the study
    built them already.

    Returns:
        ``{name: {"config", "label", "accuracy", "test_accuracy", "latency_ms", "ratio",
        "ratio_ci", "speedup", "speedup_ci", "verdict"}}``; ``speedup`` is ``1 / ratio``.

    Raises:
        ConfigError: the configurations are not all at one deployment.
    """
    from lepton_search.errors import ConfigError

    gate = gate or NoGate()
    deployments = {c.deployment for c in configs.values()}
    if len(deployments) != 1:
        raise ConfigError(f"Factors are measured at one deployment; got {sorted(map(str, deployments))}.")
    first = next(iter(configs.values()))
    settings = dataclasses.replace(deployment_settings(request.settings, first.deployment), sessions=sessions)
    backends = {name: trial_backend(config, settings) for name, config in configs.items()}
    backend = next(iter(backends.values()))
    cache_dir = Path(request.cache_dir)
    with gate.compute():
        task = load_task(request)
        teacher = load_teacher(task, cache_dir)
        baseline = baseline_model(backend, task, teacher, cache_dir)
        inputs = contiguous_inputs(task.example_inputs(settings.batch_size))
    scored: dict[str, tuple[Path, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="lepton-factors-") as tmp:
        for name, config in configs.items():
            out_dir = Path(tmp) / name.replace("/", "_")
            with gate.compute():
                compressed, accuracy, test_accuracy = compress_and_score(
                    task,
                    teacher,
                    config,
                    backends[name],
                    out_dir,
                    seed=request.seed,
                    cache_dir=cache_dir,
                    threads=request.compute_threads,
                )
            scored[name] = (compressed.onnx_path, accuracy, test_accuracy)
        with gate.measure():
            pairs = measure_against({n: p for n, (p, _, _) in scored.items()}, baseline, inputs, settings, backend)
    out: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():
        pair = pairs[name]
        low, high = pair.ratio_ci
        out[name] = {
            "config": config.to_dict(),
            "label": config.describe(),
            "accuracy": scored[name][1],
            "test_accuracy": scored[name][2],
            "latency_ms": pair.candidate.median_ms,
            "baseline_ms": pair.baseline.median_ms,
            "ratio": pair.ratio,
            "ratio_ci": [low, high],
            "speedup": 1.0 / pair.ratio,
            "speedup_ci": [1.0 / high, 1.0 / low],
            "verdict": pair.verdict,
        }
    return out
