"""The progress reporter takes every event the driver sends, whatever its payload."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from lepton_search import search
from lepton_search.search._progress import ProgressReporter


def _reporter() -> tuple[ProgressReporter, io.StringIO]:
    out = io.StringIO()
    return ProgressReporter(Console(file=out, width=120), total=3, plain=True), out


def test_factor_breakdown_is_printed_without_touching_trial_counts() -> None:
    reporter, out = _reporter()
    reporter("factors", {"number": 7, "factors": {"pruning": 1.01, "int8": 2.02}})
    reporter("factors", {"number": 8, "error": "timeout"})
    text = out.getvalue()
    assert "trial 7: each factor alone: pruning 1.01x, int8 2.02x" in text
    assert "trial 8: factor breakdown failed: timeout" in text
    assert (reporter.completed, reporter.failed) == (0, 0)


def test_trial_events_are_counted() -> None:
    reporter, out = _reporter()
    common = {"label": "int8", "accuracy": 0.9, "latency_ms": 1.0, "ratio": 0.5, "verdict": "faster"}
    reporter("trial", {"number": 0, "state": "COMPLETE", **common})
    reporter("trial", {"number": 1, "state": "FAIL", "reason": "NaN output", "label": "bf16"})
    assert (reporter.completed, reporter.failed, reporter.best_ratio) == (1, 1, 0.5)
    assert "FAIL: NaN output" in out.getvalue()


# The driver's events are sent from several modules of the package (the loop, the recording, the
# fidelity schedule), so every module is read.
_DRIVER_SOURCES = "".join(p.read_text() for p in sorted(Path(search.__file__).parent.glob("*.py")))


@pytest.mark.parametrize("kind", sorted(set(re.findall(r'notify\(\s*"([a-z-]+)"', _DRIVER_SOURCES))))
def test_every_event_kind_the_driver_sends_is_handled_by_name(kind: str) -> None:
    # An event the reporter does not name fell through to the trial branch, which reads keys
    # only trial events carry: that KeyError once ended a whole run after its last trial.
    from lepton_search.search import _progress

    assert re.search(rf'kind [!=]= "{kind}"', Path(_progress.__file__).read_text())
