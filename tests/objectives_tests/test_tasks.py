"""The task registry (built-ins, ``module:factory`` references, errors), the Task base class, and
the digits task's data split and teacher cache."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lepton_search.errors import ConfigError, TaskError, UnknownNameError
from lepton_search.objectives.tasks import Task, check_task_reference, known_task_names, resolve_task
from lepton_search.objectives.tasks.digits import DigitsCNNTask

# Small enough that training one takes well under a second.
TINY = {"width": 4, "epochs": 1}

HELPER_SOURCE = """
    import numpy as np

    from lepton_search.objectives.tasks import Task


    class ConstantTask(Task):
        \"\"\"A complete task with a one-layer teacher that predicts class ``label`` for everything.\"\"\"

        name = "constant"

        def __init__(self, label=0, classes=3):
            self.label = label
            self.classes = classes

        def teacher(self, cache_dir):
            import torch

            model = torch.nn.Linear(4, self.classes)
            with torch.no_grad():
                model.weight.zero_()
                model.bias.zero_()
                model.bias[self.label] = 1.0
            return model.eval()

        def example_inputs(self, batch_size):
            return np.zeros((batch_size, 4), dtype=np.float32)

        def train_batches(self, batch_size, *, seed):
            yield self.example_inputs(batch_size), np.full(batch_size, self.label)

        def evaluate(self, predict, split="validation"):
            x, y = next(self.train_batches(8, seed=0))
            return float((np.asarray(predict(x)).argmax(axis=1) == y).mean())


    def make_constant(**options):
        return ConstantTask(**options)


    def not_a_task(**options):
        return {"name": "a dict is not a task"}


    def refuses(**options):
        raise ValueError("the factory refuses these options")


    def exits(**options):
        import sys

        sys.exit(0)
"""


@pytest.fixture
def helper(helper_module: Callable[[str], str]) -> str:
    return helper_module(HELPER_SOURCE)


# ---------------------------------------------------------------------------------------------
# Registry


def test_builtin_task_resolves() -> None:
    task = resolve_task("digits-cnn")
    assert isinstance(task, DigitsCNNTask)
    assert task.name == "digits-cnn"
    assert (task.width, task.epochs, task.seed) == (64, 12, 0)
    assert "digits-cnn" in known_task_names()


def test_builtin_task_takes_options() -> None:
    task = resolve_task("digits-cnn", {"width": 8, "epochs": 2, "seed": 3})
    assert (task.width, task.epochs, task.seed) == (8, 2, 3)


def test_module_factory_reference_resolves_a_task_from_a_helper_module(helper: str) -> None:
    task = resolve_task(f"{helper}:make_constant", {"label": 2})
    assert isinstance(task, Task)
    assert type(task).__name__ == "ConstantTask"
    assert task.label == 2
    # It is a working task: its teacher predicts class 2 everywhere.
    model = task.teacher(Path("unused"))
    assert task.evaluate(lambda x: model(torch.from_numpy(x)).detach().numpy()) == 1.0
    # The class itself is a factory too.
    assert resolve_task(f"{helper}:ConstantTask").label == 0


def test_unknown_task_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as caught:
        resolve_task("no-such-task")
    error = caught.value
    assert error.kind == "task"
    assert error.name == "no-such-task"
    assert "digits-cnn" in error.known
    assert "digits-cnn" in str(error)
    assert "package.module:factory" in str(error)
    with pytest.raises(UnknownNameError):
        check_task_reference("no-such-task")


@pytest.mark.parametrize("reference", ["digits-cnn", "pkg.module:factory", "a:b.c"])
def test_check_task_reference_accepts_without_importing(reference: str) -> None:
    check_task_reference(reference)  # pkg.module does not exist; checking must not import it


def test_bad_options_raise_task_error() -> None:
    with pytest.raises(TaskError, match=r"rejected its options \['colour'\]"):
        resolve_task("digits-cnn", {"colour": "red"})


def test_bad_option_values_raise_the_tasks_own_config_error() -> None:
    with pytest.raises(ConfigError, match="width = 2 is too small"):
        resolve_task("digits-cnn", {"width": 2})
    with pytest.raises(ConfigError, match="epochs = 0"):
        resolve_task("digits-cnn", {"epochs": 0})


def test_factory_failing_with_another_exception_raises_task_error(helper: str) -> None:
    with pytest.raises(TaskError, match="ValueError: the factory refuses these options") as caught:
        resolve_task(f"{helper}:refuses", {"x": 1})
    assert isinstance(caught.value.__cause__, ValueError)


def test_factory_calling_sys_exit_raises_task_error(helper: str) -> None:
    # sys.exit(0) in a factory used to end `run` with exit code 0 and no message.
    with pytest.raises(TaskError, match=r"factory called sys\.exit\(0\).*remove the exit"):
        resolve_task(f"{helper}:exits")


def test_factory_returning_a_non_task_raises_task_error(helper: str) -> None:
    with pytest.raises(TaskError, match="returned dict, not a lepton_search Task"):
        resolve_task(f"{helper}:not_a_task")


def test_missing_module_or_attribute_raises_task_error(helper: str) -> None:
    with pytest.raises(TaskError, match="Cannot import module 'no_such_module_for_lepton'"):
        resolve_task("no_such_module_for_lepton:factory")
    with pytest.raises(TaskError, match="has no attribute 'missing'"):
        resolve_task(f"{helper}:missing")


def test_module_failing_at_import_raises_task_error(helper_module: Callable[[str], str]) -> None:
    broken = helper_module("raise RuntimeError('this module is broken')\n")
    with pytest.raises(TaskError, match="RuntimeError: this module is broken"):
        resolve_task(f"{broken}:factory")


# ---------------------------------------------------------------------------------------------
# Task base class


def test_task_defaults(helper: str) -> None:
    task = resolve_task(f"{helper}:make_constant")
    assert task.fingerprint() == "constant"
    assert task.metric_direction == "maximize"
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert list(task.prunable_ignored_layers(model)) == [model[2]]
    task.before_trial(None)  # type: ignore[arg-type]  # the default hook does nothing


def test_depth_and_hidden_layer_hooks_default_to_none(helper: str) -> None:
    task = resolve_task(f"{helper}:make_constant")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    assert list(task.depth_blocks(model)) == []  # depth pruning is refused
    assert list(task.hidden_layers(model)) == []  # hidden-state distillation is refused


def test_digits_names_its_relu_outputs_as_hidden_layers_and_no_depth_blocks() -> None:
    from lepton_search.objectives.tasks.digits import build_digits_cnn

    task = DigitsCNNTask(**TINY)
    model = build_digits_cnn(4)

    assert [(name, type(m).__name__) for name, m in task.hidden_layers(model)] == [
        ("2", "ReLU"),
        ("5", "ReLU"),
        ("9", "ReLU"),
    ]
    assert list(task.depth_blocks(model)) == []


def test_calibration_inputs_come_from_the_training_split() -> None:
    task = DigitsCNNTask(**TINY)
    batches = task.calibration_inputs(3, 16)
    assert [b.shape for b in batches] == [(16, 1, 8, 8)] * 3
    first = next(task.train_batches(16, seed=0))[0]
    np.testing.assert_array_equal(batches[0], first)
    # Asking for more batches than exist returns all of them.
    assert len(task.calibration_inputs(10_000, 512)) == 3  # 1,078 training images


# ---------------------------------------------------------------------------------------------
# Digits task


def test_digits_split_is_fixed_and_stratified() -> None:
    splits = DigitsCNNTask(**TINY)._splits
    sizes = {k: len(v[0]) for k, v in splits.items()}
    assert sizes == {"train": 1078, "validation": 359, "test": 360}  # 60/20/20 of 1,797
    assert all(
        x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and 0 <= x.min() <= x.max() <= 1 for x, _ in splits.values()
    )
    assert all(set(np.unique(y)) == set(range(10)) for _, y in splits.values())
    # Fixed: another instance (another worker) sees exactly the same split.
    again = DigitsCNNTask(width=16)._splits
    for name, (x, y) in splits.items():
        np.testing.assert_array_equal(x, again[name][0])
        np.testing.assert_array_equal(y, again[name][1])


def test_digits_train_batches_cover_the_training_split_once() -> None:
    task = DigitsCNNTask(**TINY)
    labels = np.concatenate([y for _, y in task.train_batches(64, seed=5)])
    np.testing.assert_array_equal(np.sort(labels), np.sort(task._splits["train"][1]))
    again = np.concatenate([y for _, y in task.train_batches(64, seed=5)])
    np.testing.assert_array_equal(labels, again)
    other = np.concatenate([y for _, y in task.train_batches(64, seed=6)])
    assert not np.array_equal(labels, other)


@pytest.mark.parametrize("batch_size", [1, 64, 1000])
def test_digits_example_inputs_have_the_requested_rows(batch_size: int) -> None:
    x = DigitsCNNTask(**TINY).example_inputs(batch_size)
    assert x.shape == (batch_size, 1, 8, 8)
    assert x.flags["C_CONTIGUOUS"]


def test_digits_fingerprint_names_the_recipe() -> None:
    base = DigitsCNNTask(**TINY).fingerprint()
    assert DigitsCNNTask(**TINY).fingerprint() == base
    for change in ({"width": 5}, {"epochs": 2}, {"seed": 1}):
        assert DigitsCNNTask(**{**TINY, **change}).fingerprint() != base


def test_teacher_is_cached_with_its_weights_digest(tmp_path: Path) -> None:
    task = DigitsCNNTask(**TINY)
    first = task.teacher(tmp_path)

    weights = tmp_path / "teachers" / f"digits-cnn-{task.fingerprint()}.pt"
    record = weights.with_suffix(".json")
    assert weights.is_file() and record.is_file()
    assert not first.training
    recorded = json.loads(record.read_text())
    assert recorded == {
        "recipe": task.fingerprint(),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert sorted(p.name for p in weights.parent.iterdir()) == sorted([weights.name, record.name])  # no temporaries
    mtime = weights.stat().st_mtime_ns

    start = time.perf_counter()
    second = DigitsCNNTask(**TINY).teacher(tmp_path)  # a fresh instance, as in another worker
    elapsed = time.perf_counter() - start

    assert weights.stat().st_mtime_ns == mtime  # loaded, not retrained and rewritten
    assert elapsed < 5.0  # loose: loading takes milliseconds
    assert not second.training
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_teacher_training_is_reproducible_from_its_recipe(tmp_path: Path) -> None:
    # Two processes that miss the cache at once must build the same teacher: the fingerprint
    # (the cache key) names the seed, so the seed must fix the initialisation too.
    torch.manual_seed(12345)  # whatever the global generator was doing before must not matter
    a = DigitsCNNTask(**TINY).teacher(tmp_path / "a")
    b = DigitsCNNTask(**TINY).teacher(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-6), name
    c = DigitsCNNTask(**{**TINY, "seed": 1}).teacher(tmp_path / "c")
    assert not torch.allclose(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


def test_a_small_teacher_learns(tmp_path: Path) -> None:
    task = DigitsCNNTask(width=8, epochs=3)
    model = task.teacher(tmp_path)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    # Far above chance (0.1) after three epochs at width 8; the session teacher (width 64, six
    # epochs) is held to 0.95 in conftest.py.
    assert task.evaluate(predict, "validation") > 0.5
    assert task.evaluate(lambda x: np.zeros((len(x), 10), dtype=np.float32), "test") == pytest.approx(0.1, abs=0.01)
