"""Export of a torch model to one self-contained ONNX file."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.errors import CompressionError
from lepton_search.objectives._inputs import to_torch

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks._base import Inputs


def export_onnx(model: torch.nn.Module, example: Inputs, path: Path) -> Path:
    """Exports ``model`` to one self-contained ONNX file with a dynamic batch dimension.

    A model with named inputs gets them as ONNX input names, axis 0 of each as the dynamic batch,
    and its other axes dynamic wherever the model allows (``torch.export.Dim.AUTO``), which keeps a
    text model's sequence length dynamic.
    """
    import torch

    # The exporter warns once per export that torchvision's ops are not registered; they are not
    # used by the models we export, and the warning would flood every worker's log.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    if isinstance(example, Mapping):
        kwargs = to_torch(example)
        args: tuple[Any, ...] = ()
        input_names = list(kwargs)
        dynamic_shapes: Any = {
            name: {axis: batch if axis == 0 else torch.export.Dim.AUTO for axis in range(tensor.dim())}
            for name, tensor in kwargs.items()
        }
    else:
        kwargs = {}
        args = (to_torch(example),)
        input_names = ["input"]
        dynamic_shapes = ({0: batch},)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                str(path),
                kwargs=kwargs or None,
                dynamo=True,
                external_data=False,
                input_names=input_names,
                output_names=["output"],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as e:
        raise CompressionError(
            f"ONNX export failed: {_export_failure(e)}. The model must be traceable by torch.export "
            "(no data-dependent Python control flow)."
        ) from e
    return path


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_FAILING_CALL = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\s*\n\s*(\S[^\n]*)')


def _export_failure(error: BaseException) -> str:
    """The root cause of an export failure and, when torch names it, the line of model code.

    torch's exporter wraps the cause in several paragraphs of generic advice (with terminal colour
    codes); the first few hundred characters of it never say what went wrong.
    """
    root = error
    for _ in range(32):  # bounded: a cause chain can, in principle, loop
        if root.__cause__ is None:
            break
        root = root.__cause__
    text = _ANSI_ESCAPE.sub("", str(root)).strip()
    summary = text.splitlines()[0].strip()[:300] if text else "(no message)"
    where = ""
    call = _FAILING_CALL.search(_ANSI_ESCAPE.sub("", str(error)))
    if call:
        file, line, function, code = call.groups()
        where = f" (at {Path(file).name}:{line} in {function}: `{code.strip()[:120]}`)"
    return f"{type(root).__name__}: {summary}{where}"
