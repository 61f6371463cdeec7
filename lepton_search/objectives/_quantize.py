"""Quantization of an exported fp32 ONNX model with ONNX Runtime's tools.

- ``fp16``: ``convert_float_to_float16`` (inputs and outputs stay fp32).
- ``int8`` ``dynamic``: ``quantize_dynamic`` of MatMul/Gemm layers only (dynamic int8 convolutions
  run 0.2-0.27x the speed of fp32 on these CPUs), S8 weights.
- ``int8`` ``static``: ``quantize_static`` in QDQ format, U8 activations (S8 with
  ``int8_format = 's8s8'``) and S8 weights, calibrated with the config's method on
  ``calibration_batches`` batches of 64 training rows.
- Both int8 modes quantize weights to 7 bits with ``reduce_range`` (for x86 CPUs without VNNI,
  whose 16-bit sums can saturate; the space decides it from the ISA, ``spaces/_hardware.py``).
- Both int8 modes scale weights per output channel unless ``granularity = 'per_tensor'``: per-tensor
  scales cost a MiniLM encoder about 4% cosine fidelity (measured on its test passages).
- ``int4``: weight-only ``MatMulNBits`` (``MatMulNBitsQuantizer``): 4-bit weights in blocks of
  ``int4_block_size`` along the input dimension, with or without zero points; Gemm layers with
  constant weights are first rewritten as MatMul + Add so that they qualify. ``accuracy_level`` 4:
  the CPU kernel quantizes activations to int8 per block at run time and uses integer dot
  products, ONNX Runtime's fast CPU path (level 0 unpacks weights to fp32); weights are stored in
  4 bits either way, and on MiniLM both levels gave the same fidelity. Neither measured faster than
  fp32 at one thread on the AVX2 development CPU (batch 1 x 128 tokens is compute-bound; int4 pays
  off where weight bandwidth dominates), which is why no default space offers int4 (README,
  "Why some combinations are not offered"). Convolutions stay fp32.
- ``bf16``: not here; it runs on the torch backends (:data:`BF16_MESSAGE`).
- ``fp32_fraction``: per-layer mixed precision; the most sensitive layers (``_sensitivity.py``) are
  excluded from quantization and stay fp32, and the trial's notes name them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lepton_search.errors import CompressionError
from lepton_search.objectives._handlers import HandlerRegistry
from lepton_search.spaces import QuantizeConfig
from lepton_search.spaces._config import CALIBRATION_BATCH_SIZE

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task
    from lepton_search.objectives.tasks._base import Inputs

BF16_MESSAGE = (
    "quantization.precision = 'bf16' runs on the torch-* backends (the module cast to bfloat16), not through "
    "ONNX Runtime's quantization tools, which have no bf16 conversion that runs faster on its CPU or CUDA kernels. "
    "Use deployment backend torch-cpu or torch-cuda for bf16, or choose fp16/int8/int4 for the onnxruntime-* "
    "backends."
)
#: MatMulNBits compute: int8 activations per block (4, ORT's fast CPU path) rather than fp32 (0).
INT4_ACCURACY_LEVEL = 4


class _CalibrationReader:
    """Feeds calibration batches to ONNX Runtime's static quantizer."""

    def __init__(self, batches: list[Inputs], input_name: str) -> None:
        self._batches: Iterator[Inputs] = iter(batches)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        return dict(batch) if isinstance(batch, Mapping) else {self._input_name: batch}

    def rewind(self) -> None:  # part of ORT's reader interface; we never re-read
        pass


def _rows(batch: Inputs) -> int:
    array = next(iter(batch.values())) if isinstance(batch, Mapping) else batch
    return int(np.shape(array)[0])


def _pre_process(source: Path, target: Path, out_dir: Path) -> None:
    """ONNX Runtime's quantization pre-processing (shape inference, graph optimisation).

    Its symbolic shape inference gives up on dynamo exports of transformers ("Incomplete symbolic
    shape inference", at the position-embedding slice) and then dumps its partial model into the
    working directory. Models with several inputs skip it; the rest of the pre-processing does not
    need it, and dynamic int8 needs no shapes. A single-input model that fails it is retried without
    it, and its dump goes to ``out_dir``.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(onnx.load(str(source), load_external_data=False).graph.input) > 1:
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return
    # Failures are handled below; the per-node warnings of a failing run would only flood the log.
    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.ERROR)
    source_path, target_path = str(source.resolve()), str(target.resolve())
    try:
        with contextlib.chdir(out_dir):
            quant_pre_process(source_path, target_path)
    except Exception:
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


def _gemm_to_matmul(source: Path, target: Path) -> int:
    """Rewrites each plain Gemm with a constant weight (``alpha = beta = 1``, ``transA = 0``) as
    MatMul (keeping the node's name) + Add, so MatMulNBits can quantize it. Returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or len(node.input) < 2 or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], weight_name], [product], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        nodes.append(matmul)
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}__bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(target))
    return rewritten


def prepare(source: Path, config: QuantizeConfig, out_dir: Path) -> Path:
    """The fp32 model that ``config``'s quantizer reads: pre-processed (int8) or Gemm-free (int4)."""
    target = out_dir / f"model-{config.precision}-prepared.onnx"
    if config.precision == "int4":
        _gemm_to_matmul(source, target)
    else:
        _pre_process(source, target, out_dir)
    return target


#: A quantizer quantizes the :func:`prepare` output into ``target`` and returns the calibration
#: rows it used (see :func:`quantize_prepared`).
Quantizer = Callable[..., int]
QUANTIZERS: HandlerRegistry[Quantizer] = HandlerRegistry("quantization mode")


def quantization_mode(config: QuantizeConfig) -> str:
    """The name ``config``'s quantizer is registered under: ``int8-dynamic``, ``int8-static``,
    ``int4`` (the precision, with the int8 mode where there is one)."""
    return f"{config.precision}-{config.int8_mode}" if config.precision == "int8" else config.precision


def quantize_prepared(
    prepared: Path,
    config: QuantizeConfig,
    task: Task,
    target: Path,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> int:
    """Quantizes the :func:`prepare` output with the quantizer of ``config``'s mode
    (:data:`QUANTIZERS`) into ``target``.

    ``include`` limits quantization to those nodes, ``exclude`` keeps those in fp32. Returns the
    number of calibration rows static int8 used (0 for the other modes).
    """
    quantizer = QUANTIZERS.get(quantization_mode(config))
    return quantizer(prepared, config, task, target, include=include, exclude=exclude)


@QUANTIZERS.register("int4")
def _quantize_int4(
    prepared: Path,
    config: QuantizeConfig,
    task: Task,
    target: Path,
    *,
    include: list[str] | None,
    exclude: list[str] | None,
) -> int:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        str(prepared),
        bits=4,
        block_size=int(config.int4_block_size or 32),
        is_symmetric=bool(config.int4_symmetric),
        accuracy_level=INT4_ACCURACY_LEVEL,
        nodes_to_exclude=exclude or [],
        nodes_to_include=include,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return 0


@QUANTIZERS.register("int8-dynamic")
def _quantize_int8_dynamic(
    prepared: Path,
    config: QuantizeConfig,
    task: Task,
    target: Path,
    *,
    include: list[str] | None,
    exclude: list[str] | None,
) -> int:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = ["MatMul", "Gemm"]
    extra: dict[str, object] = {}
    if any(node.op_type == "Attention" for node in onnx.load(str(prepared), load_external_data=False).graph.node):
        # A fused graph (graph.fusion): Attention becomes QAttention. ONNX's shape inference knows
        # no com.microsoft operators, so tensors they produce get the default float type.
        op_types.append("Attention")
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    quantize_dynamic(
        str(prepared),
        str(target),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=op_types,
        per_channel=config.per_channel,
        reduce_range=bool(config.reduce_range),
        nodes_to_quantize=include,
        nodes_to_exclude=exclude,
        extra_options=extra,
    )
    return 0


@QUANTIZERS.register("int8-static")
def _quantize_int8_static(
    prepared: Path,
    config: QuantizeConfig,
    task: Task,
    target: Path,
    *,
    include: list[str] | None,
    exclude: list[str] | None,
) -> int:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    batches = task.calibration_inputs(int(config.calibration_batches or 1), CALIBRATION_BATCH_SIZE)
    if not batches:
        raise CompressionError(f"Static int8 calibration needs training data, but task {task.name!r} gave no batches.")
    quantize_static(
        str(prepared),
        str(target),
        _CalibrationReader(batches, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        reduce_range=bool(config.reduce_range),
        activation_type=QuantType.QInt8 if config.int8_format == "s8s8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[str(config.calibration_method or "minmax")],
        nodes_to_quantize=include,
        nodes_to_exclude=exclude,
    )
    return sum(_rows(batch) for batch in batches)


def quantize(
    source: Path,
    config: QuantizeConfig,
    task: Task,
    out_dir: Path,
    *,
    teacher: torch.nn.Module | None = None,
    cache_dir: Path | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Applies the precision of ``config`` to the exported fp32 model at ``source``.

    For mixed precision (``config.fp32_fraction``) the layer sensitivity is measured on ``teacher``
    (exported; ``source`` itself when no teacher is given) and cached under ``cache_dir``. What a
    trial should know (layers kept in fp32, a smaller calibration set than asked for, convolutions
    that int4 leaves in fp32) is appended to ``notes``.

    Raises:
        CompressionError: ``bf16`` (a torch-backend precision), or the quantizer failed.
    """
    if config.precision == "fp32":
        return source
    if config.precision == "bf16":
        raise CompressionError(BF16_MESSAGE)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"model-{config.precision}.onnx"
    # ONNX Runtime's quantization tools write temporary files (sym_shape_infer_temp.onnx, external
    # weight files) into the working directory; keep them inside the trial's own directory.
    # Each Ray worker process runs one trial at a time, so changing its directory is safe.
    source, out_dir, target = source.resolve(), out_dir.resolve(), target.resolve()
    notes = notes if notes is not None else []
    try:
        with contextlib.chdir(out_dir):
            return _quantize_here(source, config, task, out_dir, target, teacher, cache_dir, notes)
    except CompressionError:
        raise
    except Exception as e:
        mode = {"int8": config.int8_mode, "int4": "MatMulNBits"}.get(config.precision) or "conversion"
        raise CompressionError(
            f"{config.precision} quantization ({mode}) failed: {type(e).__name__}: {str(e)[:400]}"
        ) from e


def _quantize_here(
    source: Path,
    config: QuantizeConfig,
    task: Task,
    out_dir: Path,
    target: Path,
    teacher: torch.nn.Module | None,
    cache_dir: Path | None,
    notes: list[str],
) -> Path:
    import onnx

    if config.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(model, str(target))
        return target
    prepared = prepare(source, config, out_dir)
    exclude = _mixed_precision_exclusions(prepared, config, task, out_dir, teacher, cache_dir, notes)
    rows = quantize_prepared(prepared, config, task, target, exclude=exclude)
    if config.precision == "int8" and config.int8_mode == "static":
        asked = int(config.calibration_batches or 1) * CALIBRATION_BATCH_SIZE
        if rows < asked:
            notes.append(
                f"static int8 calibrated on {rows} samples: calibration_batches = {config.calibration_batches} asks "
                f"for {asked} ({CALIBRATION_BATCH_SIZE} per batch), and the task's training split holds only {rows}"
            )
    if config.precision == "int4":
        _check_int4(target, config, notes)
    return target


def _check_int4(target: Path, config: QuantizeConfig, notes: list[str]) -> None:
    import onnx

    ops = [node.op_type for node in onnx.load(str(target), load_external_data=False).graph.node]
    quantized, convolutions = ops.count("MatMulNBits"), ops.count("Conv")
    if quantized == 0 and not config.fp32_fraction:
        raise CompressionError(
            "int4 weight-only quantization found no MatMul or Gemm layer with constant weights (MatMulNBits "
            "quantizes only linear layers), so the model would be unchanged; use int8 (static for convolutional "
            "models) for this task."
        )
    if convolutions:
        notes.append(
            f"int4 is weight-only for linear layers: {quantized} MatMul layers have 4-bit weights, "
            f"{convolutions} convolutions stay fp32"
        )


def _mixed_precision_exclusions(
    prepared: Path,
    config: QuantizeConfig,
    task: Task,
    out_dir: Path,
    teacher: torch.nn.Module | None,
    cache_dir: Path | None,
    notes: list[str],
) -> list[str]:
    """The nodes that per-layer mixed precision keeps in fp32 (empty when it is off)."""
    if config.fp32_fraction is None:
        return []
    if config.fp32_fraction == 0.0:
        notes.append(f"mixed precision with fp32_fraction 0: every quantizable layer is {config.precision}")
        return []
    from lepton_search.objectives._sensitivity import layer_sensitivity, quantizable_layers

    work_dir = out_dir / "sensitivity"

    def reference() -> Path:
        if teacher is None:
            return prepared
        from lepton_search.objectives._export import export_onnx

        work_dir.mkdir(parents=True, exist_ok=True)
        exported = export_onnx(teacher, task.example_inputs(2), work_dir / "teacher-fp32.onnx")
        return prepare(exported, config, work_dir)

    def quantize_layer(model: Path, nodes: list[str], target: Path) -> None:
        from lepton_search.objectives._sensitivity import SENSITIVITY_CALIBRATION_BATCHES

        layer_config = config
        if config.precision == "int8" and config.int8_mode == "static":
            layer_config = QuantizeConfig(
                "int8",
                "static",
                "minmax",
                SENSITIVITY_CALIBRATION_BATCHES,
                granularity=config.granularity,
                reduce_range=config.reduce_range,
                int8_format=config.int8_format,
            )
        quantize_prepared(model, layer_config, task, target, include=nodes)

    sensitivity = layer_sensitivity(task, config, reference, work_dir, quantize_layer, cache_dir)
    # A layer is the teacher's layer only if both its node name and its module match: a depth-pruned
    # student's graph renumbers both, and its unmatched layers count as the least sensitive.
    present = {(name, module) for name, _, module in quantizable_layers(prepared, config)}
    ranked = [layer for layer in sensitivity.layers if (layer.node, layer.module) in present]
    keep = ranked[: round(config.fp32_fraction * len(present) + 1e-9)]
    where = f"cached in {sensitivity.path.name}" if sensitivity.path else "not cached: no cache_dir"
    unranked = len(present) - len(ranked)
    if unranked:
        notes.append(
            f"mixed precision: {unranked} of this model's {len(present)} quantizable layers are not in the teacher's "
            f"sensitivity ranking (their names differ, as after depth pruning) and were quantized"
        )
    if keep:
        notes.append(
            f"mixed precision: {len(keep)} of {len(present)} quantizable layers kept in fp32, the most sensitive "
            f"(sensitivity {sensitivity.mode}, {where}): " + ", ".join(layer.label for layer in keep)
        )
    else:
        notes.append(
            f"mixed precision: no layer kept in fp32 (fp32_fraction {config.fp32_fraction:g} of "
            f"{len(present)} layers rounds to none); every quantizable layer is {config.precision}"
        )
    return [layer.node for layer in keep]
