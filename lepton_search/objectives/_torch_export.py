"""The compression pipeline for torch backends: prune -> distill -> cast -> ``torch.export``.

A trial deployed on a torch backend (``torch-cpu``, ``torch-cuda``, ...) is measured and scored as a
``torch.export`` program (``.pt2``), the file those backends open. Pruning and distillation are the
same steps as for ONNX backends; instead of ONNX Runtime's quantizers the module is cast to the
config's precision (fp32, bf16, or fp16 on GPUs). A cast wrapper converts floating inputs to that
dtype and the output back to fp32, so callers keep feeding and reading fp32 numpy arrays (numpy has
no bf16) and the casts are part of the measured latency, as they would be in a deployment.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.errors import CompressionError
from lepton_search.objectives._compress import CompressedModel, packaged, shrink
from lepton_search.objectives._export import _export_failure
from lepton_search.objectives._inputs import to_torch

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task
    from lepton_search.objectives.tasks._base import Inputs
    from lepton_search.spaces import CompressionConfig

#: The dtype each torch precision casts the module to.
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _cast_wrapper(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    from torch import nn

    def cast_in(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    def cast_out(out: Any) -> Any:
        if isinstance(out, (tuple, list)):
            return type(out)(cast_out(o) for o in out)
        return out.float() if out.is_floating_point() else out

    class Cast(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
            return cast_out(self.inner(*(cast_in(a) for a in args), **{k: cast_in(v) for k, v in kwargs.items()}))

    return Cast(model.to(dtype)).eval()


def export_program(model: torch.nn.Module, example: Inputs, path: Path, precision: str = "fp32") -> Path:
    """Saves ``model`` cast to ``precision`` as a ``torch.export`` program with a dynamic batch axis.

    The program takes and returns fp32 (floating inputs are cast inside). ``model`` is modified
    (cast in place); pass a copy to keep the original.

    Raises:
        CompressionError: ``precision`` is not a torch precision, or ``torch.export`` fails.
    """
    import torch

    if precision not in TORCH_DTYPES:
        raise CompressionError(
            f"precision {precision!r} cannot be exported for a torch backend; torch backends run {list(TORCH_DTYPES)} "
            "(int8/int4 are ONNX Runtime quantizations: use an onnxruntime-* backend)."
        )
    dtype = getattr(torch, TORCH_DTYPES[precision])
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    if isinstance(example, Mapping):
        kwargs = to_torch(example)
        args: tuple[Any, ...] = ()
        # The wrapper's signature is (*args, **kwargs): its dynamic shapes are keyed the same way.
        dynamic_shapes: Any = {
            "args": (),
            "kwargs": {
                name: {axis: batch if axis == 0 else torch.export.Dim.AUTO for axis in range(tensor.dim())}
                for name, tensor in kwargs.items()
            },
        }
    else:
        kwargs = {}
        args = (to_torch(example),)
        dynamic_shapes = {"args": ({0: batch},)}
    wrapped = _cast_wrapper(model, dtype)
    try:
        with torch.no_grad():
            program = torch.export.export(wrapped, args, kwargs or None, dynamic_shapes=dynamic_shapes)
        torch.export.save(program, str(path))
    except Exception as e:
        raise CompressionError(
            f"torch.export failed ({precision}): {_export_failure(e)}. The model must be traceable by torch.export "
            "(no data-dependent Python control flow)."
        ) from e
    return path


def compress_to_program(
    teacher: torch.nn.Module,
    config: CompressionConfig,
    task: Task,
    out_dir: Path,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> CompressedModel:
    """Runs prune -> distill -> cast -> ``torch.export`` for ``config``; the result's ``onnx_path``
    is the ``.pt2`` program (the field holds whichever model file the backend opens).

    Raises:
        CompressionError: a step failed, or the precision is not one torch runs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shrunk = shrink(teacher, config, task, seed=seed, cache_dir=cache_dir)
    student, timings, notes = shrunk.model, dict(shrunk.timings_s), list(shrunk.notes)
    start = time.perf_counter()
    path = export_program(student, task.example_inputs(2), out_dir / "model.pt2", config.quantization.precision)
    timings["export_s"] = time.perf_counter() - start
    timings["quantize_s"] = 0.0  # the cast happens inside the export
    compressed = packaged(path, student, timings, notes)
    compressed.student = shrunk.info.to_dict()
    return compressed
