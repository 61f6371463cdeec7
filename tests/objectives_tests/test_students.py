"""Students shared across trials: built once per task, pruning, distillation and seed, stored as
safetensors, loaded by every trial that differs only in what comes after (quantization, graph,
deployment), and built once even when two trials ask for it at the same time."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from lepton_search.objectives import MeasurementSettings, NoGate, TrialRequest, evaluate
from lepton_search.objectives._compress import canonical_config, shrink
from lepton_search.objectives._students import StudentCache, student_key
from lepton_search.objectives.tasks.minilm import MiniLMTask
from lepton_search.spaces import (
    CompressionConfig,
    DeploymentConfig,
    DistillConfig,
    GraphConfig,
    PruneConfig,
    QuantizeConfig,
)

STATIC_INT8 = QuantizeConfig(precision="int8", int8_mode="static", calibration_method="minmax", calibration_batches=2)
PRUNED = dict(pruning=PruneConfig(method="channel", ratio=0.5), distillation=DistillConfig(method="hard", epochs=1))


def _request(cache: Path, config: CompressionConfig, settings: MeasurementSettings, options: dict) -> TrialRequest:
    return TrialRequest(
        task="digits-cnn", config_json=config.to_json(), cache_dir=str(cache), settings=settings, task_options=options
    )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_two_trials_that_differ_only_in_quantization_build_the_student_once(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings
) -> None:
    fp32 = CompressionConfig(**PRUNED)
    int8 = CompressionConfig(quantization=STATIC_INT8, **PRUNED)

    first = evaluate(_request(teacher_cache, fp32, fast_settings, teacher.options), NoGate())
    second = evaluate(_request(teacher_cache, int8, fast_settings, teacher.options), NoGate())

    assert first.student["cache"] == "miss" and second.student["cache"] == "hit"
    assert first.student["key"] == second.student["key"]
    # The second trial reports what building its student cost, and spent nothing on it itself.
    assert second.student["build_s"] == pytest.approx(first.student["build_s"])
    assert second.timings_s["prune_s"] == second.timings_s["distill_s"] == 0.0 < first.timings_s["distill_s"]
    assert len(list((teacher_cache / "students").glob("*.safetensors"))) == 1


def test_a_loaded_student_equals_the_built_one_and_nothing_is_pickled(teacher: Any, tmp_path: Path) -> None:
    config = CompressionConfig(pruning=PruneConfig(method="channel", ratio=0.5))

    built = shrink(teacher.model, config, teacher.task, seed=3, cache_dir=tmp_path)
    loaded = shrink(teacher.model, config, teacher.task, seed=3, cache_dir=tmp_path)

    assert (built.info.cache, loaded.info.cache) == ("miss", "hit")
    assert _same_weights(built.model, loaded.model)
    x = torch.from_numpy(teacher.task.example_inputs(4))
    with torch.no_grad():
        assert torch.equal(built.model(x), loaded.model(x))
    stored = sorted(p.suffix for p in (tmp_path / "students").iterdir() if not p.name.endswith(".lock"))
    assert stored == [".json", ".safetensors"]


def test_concurrent_trials_that_need_one_student_build_it_once(teacher: Any, tmp_path: Path) -> None:
    config = CompressionConfig(pruning=PruneConfig(method="channel", ratio=0.5))
    results: list[Any] = []
    start = threading.Barrier(2)

    def trial() -> None:
        start.wait()
        results.append(shrink(teacher.model, config, teacher.task, seed=0, cache_dir=tmp_path))

    threads = [threading.Thread(target=trial) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(r.info.cache for r in results) == ["hit", "miss"]
    assert _same_weights(results[0].model, results[1].model)


def test_the_key_holds_what_decides_the_weights_and_nothing_else(teacher: Any) -> None:
    task = teacher.task
    base = CompressionConfig(**PRUNED)
    key = student_key(task, base, seed=0)

    after_the_student = [
        CompressionConfig(quantization=STATIC_INT8, **PRUNED),
        CompressionConfig(graph=GraphConfig(optimization_level="basic"), **PRUNED),
        CompressionConfig(deployment=DeploymentConfig(threads=2), **PRUNED),
    ]
    assert all(student_key(task, c, seed=0) == key for c in after_the_student)
    assert student_key(task, base, seed=1) != key
    assert student_key(task, CompressionConfig(pruning=PruneConfig(method="channel", ratio=0.25)), seed=0) != key
    other_distillation = CompressionConfig(pruning=PRUNED["pruning"], distillation=DistillConfig("hard", epochs=2))
    assert student_key(task, other_distillation, seed=0) != key


def test_a_damaged_entry_is_built_again(teacher: Any, tmp_path: Path) -> None:
    config = CompressionConfig(pruning=PruneConfig(method="channel", ratio=0.5))
    built = shrink(teacher.model, config, teacher.task, seed=0, cache_dir=tmp_path)
    (tmp_path / "students" / f"{built.info.key}.json").write_text("{not json")

    again = shrink(teacher.model, config, teacher.task, seed=0, cache_dir=tmp_path)

    assert again.info.cache == "miss" and _same_weights(built.model, again.model)


def test_a_student_that_does_not_fit_the_model_names_the_files_to_delete(teacher: Any, tmp_path: Path) -> None:
    from lepton_search.errors import CompressionError

    config = CompressionConfig(pruning=PruneConfig(method="channel", ratio=0.5))
    built = shrink(teacher.model, config, teacher.task, seed=0, cache_dir=tmp_path)
    cache = StudentCache(tmp_path)
    state = {k: v for k, v in built.model.state_dict().items()}
    state["unexpected.weight"] = torch.zeros(2)
    cache.save(built.info.key, built.model, {"notes": []})
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "students" / f"{built.info.key}.safetensors"))

    with pytest.raises(CompressionError, match="delete"):
        shrink(teacher.model, config, teacher.task, seed=0, cache_dir=tmp_path)


def test_steps_that_change_nothing_are_canonicalised_away() -> None:
    embedding = MiniLMTask.__new__(MiniLMTask)  # only output_kind is read
    distilled_only = CompressionConfig(
        quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"),
        distillation=DistillConfig(method="soft", temperature=1.0, alpha=0.0, steps=100),
    )
    assert canonical_config(distilled_only, embedding) == CompressionConfig(
        quantization=QuantizeConfig(precision="int8", int8_mode="dynamic")
    )
    pruned = CompressionConfig(pruning=PruneConfig("channel", 0.1), distillation=distilled_only.distillation)
    assert canonical_config(pruned, embedding) == pruned
    all_int8 = CompressionConfig(quantization=dataclasses.replace(STATIC_INT8, fp32_fraction=0.0))
    assert canonical_config(all_int8, embedding).quantization.fp32_fraction is None


def test_a_quantization_aware_student_is_kept_and_shared_with_its_pruning_factor(teacher: Any) -> None:
    from lepton_search.objectives._factors import factor_configs

    embedding = MiniLMTask.__new__(MiniLMTask)  # only output_kind is read
    int8 = QuantizeConfig(precision="int8", int8_mode="dynamic")
    aware = DistillConfig(method="soft", temperature=1.0, alpha=0.0, steps=100, quantization_aware=True)
    unpruned = CompressionConfig(quantization=int8, distillation=aware)
    assert canonical_config(unpruned, embedding) == unpruned  # it trains for int8 rounding: not a no-op

    task = teacher.task
    pruned = CompressionConfig(quantization=int8, pruning=PruneConfig("channel", 0.5), distillation=aware)
    key = student_key(task, pruned, seed=0)
    assert student_key(task, factor_configs(pruned)["pruning"], seed=0) == key  # measured alone in fp32
    plain = dataclasses.replace(pruned, distillation=dataclasses.replace(aware, quantization_aware=None))
    assert student_key(task, plain, seed=0) != key
    per_tensor = dataclasses.replace(pruned, quantization=dataclasses.replace(int8, granularity="per_tensor"))
    assert student_key(task, per_tensor, seed=0) != key  # trained through another rounding
