"""The one exception tree of lepton-search.

Every error a user can cause derives from :class:`LeptonSearchError`. The CLI catches that class in
one place and prints its message; anything else is a bug and shows a traceback.

Messages follow one rule: say what was received, what is allowed, and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable


class LeptonSearchError(Exception):
    """Root of every error lepton-search raises on purpose."""


class ConfigError(LeptonSearchError):
    """A study file, a search space or a configuration is invalid."""


class SamplerSpaceError(ConfigError):
    """The sampler cannot search this space (``bruteforce`` met a continuous parameter)."""


class UnknownNameError(ConfigError):
    """A name (task, sampler, objective, backend) is not registered.

    Args:
        kind: What sort of name it is, e.g. ``"task"``.
        name: The name that was received.
        known: The names that are allowed.
        hint: An optional sentence on how to add or fix the name.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        message = f"Unknown {kind} {name!r}. Known {kind}s: {', '.join(self.known) or '(none)'}."
        if hint:
            message += f" {hint}"
        super().__init__(message)


class TaskError(LeptonSearchError):
    """A task could not be imported, built or scored."""


class CompressionError(LeptonSearchError):
    """A compression step (prune, distill, export, quantize) failed for a configuration."""


class MeasurementError(LeptonSearchError):
    """Latency could not be measured (no session, no backend, or a broken model)."""


class UnsafeModelError(MeasurementError):
    """A model file would run code from itself when loaded (pickled payloads, compiled libraries,
    executable expressions), so it is refused before anything in it is read by torch."""


class StorageError(LeptonSearchError):
    """A storage URL, database or artifact store cannot be used."""


class StudyNotFoundError(StorageError):
    """The study named in a study file does not exist in the storage."""


class TrialFailed(LeptonSearchError):
    """A trial's evaluation failed; the message becomes the trial's recorded reason."""


class RunInterrupted(LeptonSearchError):
    """The run was stopped by Ctrl-C or SIGTERM; completed trials are saved."""
