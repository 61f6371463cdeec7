"""lepton-search: multi-objective search over model-compression configurations.

The Python API (see ``_api`` and the README): :func:`load` a study file, then run it and read its
frontier as :class:`TrialRecord` objects; :func:`run`, :func:`frontier`, :func:`report`,
:func:`export` and :func:`bench` are the one-call forms of the command line's commands.
"""

from __future__ import annotations

from typing import Any

from lepton_search._api import Study, bench, export, frontier, load, report, run

__version__ = "0.1.0"

# Types the API returns, imported on first use: ``import lepton_search`` loads no Optuna.
_LAZY = {
    "TrialRecord": "lepton_search.search._record",
    "LatencyRecord": "lepton_search.search._record",
    "RunSummary": "lepton_search.search._study",
    "StudySpec": "lepton_search.search._spec",
}

__all__ = [
    "LatencyRecord",
    "RunSummary",
    "Study",
    "StudySpec",
    "TrialRecord",
    "__version__",
    "bench",
    "export",
    "frontier",
    "load",
    "report",
    "run",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lepton_search' has no attribute {name!r}")
