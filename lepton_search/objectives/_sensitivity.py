"""Per-layer quantization sensitivity, measured once per task and quantization mode, and cached.

Per-layer mixed precision (``QuantizeConfig.fp32_fraction``) keeps the most sensitive quantizable
layers in fp32 and quantizes the rest. A layer's sensitivity is measured by quantizing **only that
layer** with the real ONNX Runtime tool of the mode (dynamic or static int8, MatMulNBits int4) in
the uncompressed teacher's fp32 graph, and comparing the model's outputs with the fp32 outputs on
:data:`SENSITIVITY_ROWS` rows of the task's training split:

    error = sum ||y_quantized - y_fp32||^2 / sum ||y_fp32||^2   (normalised squared error)

The output error rather than the task metric, because it is continuous where the metric is coarse
(quantizing one layer of the digits CNN changes the accuracy on a few hundred images by zero or
one image, which ties most layers), it needs no labels, it costs a few batches instead of a whole
evaluation split per layer, and it does not look at the validation split that scores trials. On
embeddings of unit length it is twice the mean cosine loss; on logits it tracks the accuracy drop.

The ranking depends on the task, its teacher (``Task.fingerprint``) and the quantization mode
(:func:`sensitivity_mode`: int8 dynamic or static and its granularity, or int4 and its block size
and symmetry; static calibration is always min-max on :data:`SENSITIVITY_CALIBRATION_BATCHES`
batches here, whatever the trial's calibration, because it ranks layers and is not the trial's
model). It is written as JSON to ``<cache_dir>/sensitivity/`` under a file lock and atomically,
so concurrent Ray workers of a study, and reruns, measure it once and reuse it. Students share the
teacher's ranking: channel pruning and distillation keep the exported graph's node names and
module paths; a layer of a student that matches no ranked teacher layer by both (after depth
pruning, say) is quantized, and the trial notes how many did not match.

Cost: one quantization, one session and 32 rows of inference per layer; on the 2-core development
machine, under load, MiniLM's 36 linear layers took 259 s (dynamic int8) once per study, the digits
CNN's 4 layers about 2 s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_search._atomic import write_json_atomically
from lepton_search.errors import CompressionError
from lepton_search.objectives._targets import file_lock

if TYPE_CHECKING:
    from lepton_search.objectives.tasks import Task
    from lepton_search.spaces import QuantizeConfig

logger = logging.getLogger(__name__)

#: Training rows the outputs are compared on (two batches of 16).
SENSITIVITY_ROWS = 32
_SENSITIVITY_BATCH = 16
#: Min-max calibration batches (of 64 rows) for static int8 sensitivity.
SENSITIVITY_CALIBRATION_BATCHES = 2
#: Bumped when the measurement changes, so stale cache files are not reused.
SENSITIVITY_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    """One quantizable layer: its ONNX node, the torch module it came from, and its output error."""

    node: str
    op_type: str
    module: str
    error: float

    @property
    def label(self) -> str:
        return f"{self.module} ({self.node})" if self.module else self.node


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """The quantizable layers of one task and mode, the most sensitive first."""

    mode: str
    layers: tuple[LayerSensitivity, ...]
    path: Path | None = None
    seconds: float = 0.0


def sensitivity_mode(config: QuantizeConfig) -> str:
    """The part of ``config`` that decides a layer ranking (not calibration, not ``fp32_fraction``)."""
    if config.precision == "int4":
        return f"int4-block{config.int4_block_size}-{'sym' if config.int4_symmetric else 'asym'}"
    if config.precision == "int8":
        mode = f"int8-{config.int8_mode}-{'per_channel' if config.per_channel else 'per_tensor'}"
        # The hardware knobs change the ranking too; left unset they keep the names cached before.
        if config.int8_format == "s8s8":
            mode += "-s8s8"
        if config.reduce_range:
            mode += "-reduce_range"
        return mode
    raise CompressionError(
        f"Per-layer sensitivity applies to int8 and int4, got quantization.precision = {config.precision!r}."
    )


def cache_path(cache_dir: Path, task: Task, config: QuantizeConfig) -> Path:
    """Where the sensitivity of ``task`` under ``config``'s mode is cached."""
    mode = sensitivity_mode(config)
    key = json.dumps([task.name, task.fingerprint(), mode, SENSITIVITY_VERSION])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in task.name)
    return cache_dir / "sensitivity" / f"{safe_name}-{mode}-{digest}.json"


def _module_of(node: Any) -> str:
    """The torch module path of an ONNX node of a dynamo export (its innermost module scope), or ''."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = json.loads(prop.value.replace("'", '"'))
            except json.JSONDecodeError:
                return ""
            # Module scopes, outermost first, then the traced op's own name: the module is the one before it.
            return str(scopes[-2]) if len(scopes) >= 2 else ""
    return ""


def quantizable_layers(model_path: Path, config: QuantizeConfig) -> list[tuple[str, str, str]]:
    """``(node name, op type, module)`` of each layer with constant weights that ``config``'s mode quantizes.

    int4 and dynamic int8 quantize MatMul/Gemm (linear) layers; static int8 also convolutions.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    if config.precision == "int4":
        op_types = {"MatMul"}
    elif config.int8_mode == "static":
        op_types = {"Conv", "MatMul", "Gemm"}
    else:
        op_types = {"MatMul", "Gemm"}
    return [
        (node.name, node.op_type, _module_of(node))
        for node in graph.node
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in initializers
    ]


def _outputs(model_path: Path, batches: Sequence[Any]) -> list[np.ndarray]:
    from lepton_search.objectives.latency import get_backend

    runner = get_backend("onnxruntime-cpu").open(model_path, 1)
    try:
        return [np.asarray(runner.run(batch), dtype=np.float64) for batch in batches]
    finally:
        runner.close()


def _error(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    num = sum(float(((o - r) ** 2).sum()) for o, r in zip(outputs, reference, strict=True))
    den = sum(float((r**2).sum()) for r in reference)
    return num / max(den, 1e-30)


def _read(path: Path, task: Task, mode: str) -> Sensitivity | None:
    try:
        data = json.loads(path.read_text())
        if (data["task"], data["fingerprint"], data["mode"], data["version"]) != (
            task.name,
            task.fingerprint(),
            mode,
            SENSITIVITY_VERSION,
        ):
            return None
        layers = tuple(
            LayerSensitivity(str(x["node"]), str(x["op_type"]), str(x["module"]), float(x["error"]))
            for x in data["layers"]
        )
        return Sensitivity(mode=mode, layers=layers, path=path, seconds=float(data["seconds"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring unreadable sensitivity cache %s (%s); measuring again", path, e)
        return None


def _write(path: Path, task: Task, sensitivity: Sensitivity) -> None:
    payload = {
        "task": task.name,
        "fingerprint": task.fingerprint(),
        "mode": sensitivity.mode,
        "version": SENSITIVITY_VERSION,
        "metric": "normalised squared output error, one layer quantized, on training rows",
        "rows": SENSITIVITY_ROWS,
        "seconds": round(sensitivity.seconds, 3),
        "layers": [dataclasses.asdict(layer) for layer in sensitivity.layers],
    }
    write_json_atomically(path, payload, indent=1)


def measure_sensitivity(
    task: Task,
    config: QuantizeConfig,
    reference: Path,
    work_dir: Path,
    quantize_layer: Callable[[Path, list[str], Path], None],
) -> Sensitivity:
    """Measures each quantizable layer of the prepared fp32 model ``reference`` (no cache).

    ``quantize_layer(reference, [node], target)`` writes ``reference`` with only ``node`` quantized.
    """
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    batches = task.calibration_inputs(SENSITIVITY_ROWS // _SENSITIVITY_BATCH, _SENSITIVITY_BATCH)
    baseline = _outputs(reference, batches)
    layers = []
    for i, (node, op_type, module) in enumerate(quantizable_layers(reference, config)):
        target = work_dir / f"layer-{i}.onnx"
        quantize_layer(reference, [node], target)
        layers.append(LayerSensitivity(node, op_type, module, _error(_outputs(target, batches), baseline)))
        target.unlink()
    if not layers:
        raise CompressionError(
            f"Mixed precision found no layer that {sensitivity_mode(config)} quantizes in the model (it needs "
            "MatMul/Gemm layers with constant weights, or convolutions for static int8); leave fp32_fraction out "
            "for this task."
        )
    layers.sort(key=lambda layer: layer.error, reverse=True)
    return Sensitivity(mode=sensitivity_mode(config), layers=tuple(layers), seconds=time.perf_counter() - start)


def layer_sensitivity(
    task: Task,
    config: QuantizeConfig,
    reference: Callable[[], Path],
    work_dir: Path,
    quantize_layer: Callable[[Path, list[str], Path], None],
    cache_dir: Path | None = None,
) -> Sensitivity:
    """The cached sensitivity of ``task`` under ``config``'s mode, measured on first use.

    ``reference()`` gives the prepared fp32 model to measure (called only on a cache miss). With a
    ``cache_dir`` the result is read from, or written to, its ``sensitivity/`` folder; concurrent
    callers wait for the one that measures.
    """
    mode = sensitivity_mode(config)
    if cache_dir is None:
        return measure_sensitivity(task, config, reference(), work_dir, quantize_layer)
    path = cache_path(cache_dir, task, config)
    cached = _read(path, task, mode)
    if cached is not None:
        return cached
    with file_lock(path.with_suffix(".lock")):
        cached = _read(path, task, mode)  # another worker may have measured it while we waited
        if cached is not None:
            return cached
        measured = measure_sensitivity(task, config, reference(), work_dir, quantize_layer)
        _write(path, task, measured)
        return dataclasses.replace(measured, path=path)
