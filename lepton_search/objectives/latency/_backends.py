"""Latency backends: what opens a fresh inference session of a model file on one device.

A backend is a small class (:class:`LatencyBackend`) registered by name with
:func:`register_backend`; its runners (:class:`Runner`) time one run, and its memory probe
(:class:`MemoryProbe`) reads a session's peak memory. The ONNX Runtime backends live in
``_onnxruntime`` and the PyTorch ones in ``_torch``; both register on import.

Peak memory. Every session records its peak inference memory: on the CPU the rise of the process's
resident memory from just before the session opens to its high-water mark (VmHWM, reset before
opening) after the runs; on CUDA ``torch.cuda.max_memory_allocated`` after a reset, minus what was
allocated before. A model's ``peak_memory_mb`` is the largest over its sessions.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_search.devices._backends import BackendTraits, DeviceKind, ModelFormat, register_backend_traits
from lepton_search.devices._machine import (
    device_manifest,
    high_water_mb,
    release_freed_memory,
    reset_high_water,
    resident_mb,
)
from lepton_search.errors import MeasurementError, UnknownNameError
from lepton_search.objectives.latency._settings import Inputs


class Runner(abc.ABC):
    """One open inference session of one model."""

    @abc.abstractmethod
    def run(self, inputs: Inputs) -> np.ndarray:
        """Runs the model once on ``inputs`` and returns the first output.

        ``inputs`` is one array (fed to the model's first input) or a mapping from input names to
        arrays.
        """

    def timed_run(self, inputs: Inputs) -> float:
        """Runs the model once and returns how long that took, in milliseconds.

        Wall-clock time around :meth:`run`; runners on asynchronous devices override this to time
        the device's work (CUDA events) instead of the launch.
        """
        start = time.perf_counter_ns()
        self.run(inputs)
        return (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:  # noqa: B027 (most sessions are released by garbage collection)
        """Releases the session's memory now rather than when garbage collection gets to it."""


class MemoryProbe(abc.ABC):
    """Measures the peak memory one session adds, from just before it opens."""

    @abc.abstractmethod
    def start(self) -> None:
        """Called just before the session opens."""

    @abc.abstractmethod
    def peak_mb(self) -> float | None:
        """The peak increase since :meth:`start` in MiB, or None where it cannot be read."""


class ResidentMemoryProbe(MemoryProbe):
    """The rise of the process's resident memory (VmRSS up to VmHWM, from ``/proc/self/status``).

    The high-water mark is reset before the session opens. Where the kernel refuses the reset the
    old mark may predate the session (training, an earlier model), so the current resident memory
    is used instead: a lower bound, since the peak may have passed.
    """

    def __init__(self) -> None:
        self._before: float | None = None
        self._reset = False

    def start(self) -> None:
        release_freed_memory()
        self._reset = reset_high_water()
        self._before = resident_mb()

    def peak_mb(self) -> float | None:
        peak = high_water_mb() if self._reset else resident_mb()
        if self._before is None or peak is None:
            return None
        return max(0.0, peak - self._before)


@dataclass(frozen=True)
class Availability:
    """Whether a backend can measure on this machine, and if not, why and how to change that."""

    usable: bool
    reason: str = ""
    hint: str = ""


class LatencyBackend(abc.ABC):
    """Opens fresh inference sessions of a model file on one device."""

    name: str = "backend"
    #: The kind of model file the backend opens.
    model_format: ModelFormat = "onnx"
    #: "cpu" or "gpu": the kind of device the backend measures on (its class is in the manifest).
    device_kind: DeviceKind = "cpu"

    @classmethod
    def availability(cls) -> Availability:
        """Whether this machine can run the backend (its library, provider and device)."""
        return Availability(True)

    @abc.abstractmethod
    def open(self, model_path: Path, threads: int) -> Runner:
        """A new session of ``model_path`` using ``threads`` intra-op threads."""

    @abc.abstractmethod
    def manifest(self, threads: int) -> dict[str, Any]:
        """What a measurement ran on: backend, provider, versions, device, threads
        (:func:`backend_manifest` builds it)."""

    def memory_probe(self) -> MemoryProbe:
        """How this backend's peak inference memory is read (resident memory by default)."""
        return ResidentMemoryProbe()


_BACKENDS: dict[str, type[LatencyBackend]] = {}


def register_backend(cls: type[LatencyBackend]) -> type[LatencyBackend]:
    """Class decorator: makes ``cls`` available to :func:`get_backend` under ``cls.name``, and its
    traits to configurations (``devices._backends``)."""
    register_backend_traits(cls.name, BackendTraits(cls.model_format, cls.device_kind))
    _BACKENDS[cls.name] = cls
    return cls


def backend_manifest(
    backend: LatencyBackend, provider: str, library: str, version: str, threads: int, device_id: int = 0
) -> dict[str, Any]:
    """The manifest every backend reports: its name, the execution provider, the library that runs
    it (``{library: version}``), the thread count, and the device it measures on
    (:func:`~lepton_search.devices._machine.device_manifest`, with the device class)."""
    return {
        "backend": backend.name,
        "execution_provider": provider,
        library: version,
        "threads": threads,
        **device_manifest(backend.device_kind, device_id),
    }


def _registry() -> dict[str, type[LatencyBackend]]:
    # The backends register themselves on import; importing the modules imports neither torch nor
    # onnxruntime.
    from lepton_search.objectives.latency import _onnxruntime, _torch  # noqa: F401

    return _BACKENDS


def get_backend(name: str, *, require_usable: bool = True) -> LatencyBackend:
    """The backend registered under ``name``.

    Args:
        name: A registered backend name (see :func:`known_backends`).
        require_usable: Refuse a backend this machine cannot run. Pass False to describe a backend
            that will run elsewhere (a GPU worker of a CPU-only driver).

    Raises:
        UnknownNameError: ``name`` is not registered.
        MeasurementError: the backend is registered but this machine cannot run it.
    """
    registry = _registry()
    if name not in registry:
        raise UnknownNameError("latency backend", name, registry)
    cls = registry[name]
    if require_usable:
        status = cls.availability()
        if not status.usable:
            usable = [n for n, a in available_backends().items() if a.usable]
            raise MeasurementError(
                f"Latency backend {name!r} is not usable on this machine: {status.reason}. "
                f"Usable here: {', '.join(usable) or '(none)'}. {status.hint}."
            )
    return cls()


def known_backends() -> list[str]:
    """Every registered backend name, usable on this machine or not."""
    return sorted(_registry())


def available_backends() -> dict[str, Availability]:
    """Each registered backend's :class:`Availability` on this machine, by name."""
    return {name: cls.availability() for name, cls in sorted(_registry().items())}
