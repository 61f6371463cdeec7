"""Task inputs (one numpy array or a dict of named arrays) as torch tensors, and back into models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks._base import Inputs


def to_torch(inputs: Inputs) -> Any:
    """A batch of numpy inputs as torch tensors (a tensor, or a dict of them)."""
    import torch

    if isinstance(inputs, Mapping):
        return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in inputs.items()}
    return torch.from_numpy(np.ascontiguousarray(inputs))


def run_model(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """``model`` applied to a tensor, or to a dict of tensors as keyword arguments."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def first_rows(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` rows of a batch of inputs."""
    if isinstance(inputs, Mapping):
        return {name: array[:n] for name, array in inputs.items()}
    return inputs[:n]
