"""The deployment backends a configuration may name, as data: which model file each opens and on
which kind of device it measures.

``spaces`` validates configurations against this table and ``objectives`` registers the classes
that measure on each backend; both read it here, so describing a configuration never loads a
latency backend. The built-in backends are listed below; a class registered in ``objectives``
under a new name adds its traits, and one whose traits disagree with the table is refused when
it registers.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

ModelFormat = Literal["onnx", "torch-export"]
DeviceKind = Literal["cpu", "gpu"]


@dataclasses.dataclass(frozen=True)
class BackendTraits:
    """What a configuration needs to know of a backend."""

    #: The kind of model file the backend opens.
    model_format: ModelFormat
    #: The kind of device it measures on (its class is in the measurement's manifest).
    device_kind: DeviceKind


_TRAITS: dict[str, BackendTraits] = {
    "onnxruntime-cpu": BackendTraits("onnx", "cpu"),
    "onnxruntime-cuda": BackendTraits("onnx", "gpu"),
    "onnxruntime-tensorrt": BackendTraits("onnx", "gpu"),
    "torch-cpu": BackendTraits("torch-export", "cpu"),
    "torch-cuda": BackendTraits("torch-export", "gpu"),
    "torch-cuda-compile": BackendTraits("torch-export", "gpu"),
    "torch-cuda-graphs": BackendTraits("torch-export", "gpu"),
}


def register_backend_traits(name: str, traits: BackendTraits) -> None:
    """Adds backend ``name``; re-registering it with the same traits is a no-op.

    Raises:
        ValueError: ``name`` is known with other traits (a programming error of the backend class).
    """
    known = _TRAITS.get(name)
    if known is not None and known != traits:
        raise ValueError(f"backend {name!r} is registered with {known}; its class declares {traits}")
    _TRAITS[name] = traits


def backend_traits(name: str) -> BackendTraits | None:
    """The traits of backend ``name``, or ``None`` when no backend has that name."""
    return _TRAITS.get(name)


def backend_names() -> list[str]:
    """Every backend a configuration may name, sorted."""
    return sorted(_TRAITS)
