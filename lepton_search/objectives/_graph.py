"""Graph-level steps of an ONNX model: how it is exported, which fusions ONNX Runtime's transformer
optimizer applies, whether residual additions may fuse into ``SkipLayerNormalization``, and the
session's graph optimisation level.

A default :class:`~lepton_search.spaces.GraphConfig` is the plain ``torch.onnx.export`` graph (the
dynamo exporter, torch's default), which is also what every baseline runs. Any fusion knob exports
the task's fusion-friendly module (:meth:`~lepton_search.objectives.tasks.Task.export_module`)
with the TorchScript exporter instead: ONNX Runtime's transformer optimizer matches the operator
patterns of that export, and not those of the dynamo export, whose attention it leaves unfused.

Fusion can fail silently: the optimizer leaves a subgraph it does not recognise as it was. So the
fused operators are counted and compared with what the task expects
(:meth:`~lepton_search.objectives.tasks.Task.expected_fusions`, one ``Attention`` per kept layer for
a BERT encoder); a shortfall is a :class:`CompressionError` that says which fusion is missing.

Why ``skip_layer_norm = "unfused"`` exists: on the AVX-512 development CPU, ONNX Runtime 1.32's CPU
kernel for ``SkipLayerNormalization`` took about 380 us on a 128 x 384 input, where the ``Add`` and
``LayerNormalization`` it replaces took about 65 us together, and MiniLM has twelve of them. The
rewrite turns each residual ``Add`` that feeds a ``LayerNormalization`` into the equivalent
``Sum``, which ONNX Runtime's fusion does not match, so the model file itself runs unfused under
any session settings. It is a searched knob because which is faster depends on the CPU.
"""

from __future__ import annotations

import collections
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.errors import CompressionError
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._inputs import to_torch
from lepton_search.spaces import GraphConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task
    from lepton_search.objectives.tasks._base import Inputs

#: Model metadata key holding the session graph optimisation level the model was tuned for.
OPTIMIZATION_LEVEL_KEY = "lepton.onnxruntime.graph_optimization_level"
#: Operators a fusion or quantization produces, counted in every trial's graph (``graph_ops``).
FUSED_OPERATORS: tuple[str, ...] = (
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "FusedMatMul",
    "FusedGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMulInteger",
    "QLinearMatMul",
    "MatMulNBits",
    "QGemm",
)
_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def export_graph(model: torch.nn.Module, task: Task, example: Inputs, path: Path, graph: GraphConfig) -> Path:
    """Exports ``model`` for ``graph``: the plain dynamo export, or (for any fusion knob) the task's
    fusion-friendly module through the TorchScript exporter, with the batch axis and every other
    input axis dynamic."""
    if not graph.rewrites_graph:
        return export_onnx(model, example, path)
    import torch

    module = task.export_module(model)
    if module is None:
        raise CompressionError(
            f"graph.fusion / graph.skip_layer_norm need a fusion-friendly export of the model, but task {task.name!r} "
            "offers none (Task.export_module returns None). Remove the graph knobs from the study's space, or "
            "implement export_module() in the task."
        )
    module.eval()
    inputs = to_torch(example)
    if isinstance(inputs, Mapping):
        names = list(inputs)
        args: tuple[Any, ...] = tuple(inputs.values())
    else:
        names = ["input"]
        args = (inputs,)
    # Same-rank inputs share axis names, so the exporter knows that (say) input_ids and
    # attention_mask have one sequence length.
    axes = {
        name: {i: "batch" if i == 0 else f"axis{i}" for i in range(tensor.dim())} for name, tensor in zip(names, args)
    }
    axes["output"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=["output"],
                dynamic_axes=axes,
                opset_version=17,
            )
    except Exception as e:
        raise CompressionError(
            f"The TorchScript export of task {task.name!r}'s fusion-friendly module failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else 'no message'}); remove graph.fusion and "
            "graph.skip_layer_norm from the space to use the plain export."
        ) from e
    return path


def fuse(path: Path, graph: GraphConfig, task: Task, model: torch.nn.Module, notes: list[str]) -> Path:
    """Runs ONNX Runtime's transformer optimizer on ``path`` as ``graph`` asks (in place) and checks
    that every requested fusion happened; then keeps residual additions apart from their
    LayerNormalization when ``graph.skip_layer_norm == "unfused"``.

    Raises:
        CompressionError: the task has no ONNX Runtime model type, or a requested fusion did not
            happen (the message gives the fused and the expected counts).
    """
    want_attention = graph.fusion == "transformer"
    # The transformer optimizer fuses SkipLayerNormalization too unless told otherwise.
    want_skip = graph.skip_layer_norm == "fused" or (want_attention and graph.skip_layer_norm is None)
    if want_attention or want_skip:
        _optimize(path, task, want_attention=want_attention, want_skip=want_skip)
        counts = operator_counts(path)
        expected = dict(task.expected_fusions(model))
        required = {}
        if want_attention:
            required.update({op: n for op, n in expected.items() if op != "SkipLayerNormalization"})
        if graph.skip_layer_norm == "fused" and "SkipLayerNormalization" in expected:
            required["SkipLayerNormalization"] = expected["SkipLayerNormalization"]
        missing = {op: (counts.get(op, 0), n) for op, n in required.items() if counts.get(op, 0) < n}
        if missing:
            detail = ", ".join(f"{op}: {have} of {n}" for op, (have, n) in missing.items())
            raise CompressionError(
                f"The requested graph fusion did not happen ({detail}); ONNX Runtime's transformer optimizer "
                f"(model type {task.onnx_model_type!r}) did not recognise those subgraphs of the export. The trial is "
                "not reported as fused; remove 'transformer' from space.graph.fusion for this model."
            )
        notes.append(
            "graph fused by ONNX Runtime's transformer optimizer: "
            + ", ".join(f"{counts[op]} {op}" for op in sorted(required) if counts.get(op))
        )
    if graph.skip_layer_norm == "unfused":
        separated = separate_residual_layer_norms(path)
        notes.append(
            f"{separated} residual additions kept apart from their LayerNormalization (no SkipLayerNormalization)"
        )
    return path


def _optimize(path: Path, task: Task, *, want_attention: bool, want_skip: bool) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = task.onnx_model_type
    if model_type is None:
        raise CompressionError(
            f"graph.fusion needs ONNX Runtime's model type of task {task.name!r} (Task.onnx_model_type, e.g. 'bert'), "
            "which it does not name; remove the fusion knobs from the space for this task."
        )
    options = FusionOptions(model_type)
    options.enable_attention = want_attention
    options.enable_bias_gelu = want_attention
    options.enable_gelu = want_attention
    options.enable_skip_layer_norm = want_skip
    options.enable_bias_skip_layer_norm = want_skip
    # EmbedLayerNormalization: its int8 form (QEmbedLayerNormalization) quantizes the embedding tables
    # and measured slower; the embeddings are a lookup, not a matmul.
    options.enable_embed_layer_norm = False
    for name in ("onnxruntime.transformers", "onnx_model", "fusion_base"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            str(path),
            model_type=model_type,
            num_heads=0,  # 0: read each layer's head count from its reshape (pruned layers differ)
            hidden_size=0,
            optimization_options=options,
            opt_level=0,  # only the Python fusions; the session applies ONNX Runtime's own optimisations
        )
        optimized.save_model_to_file(str(path), use_external_data_format=False)
    except Exception as e:
        raise CompressionError(
            f"ONNX Runtime's transformer optimizer failed on the export ({type(e).__name__}: {e}); remove the fusion "
            "knobs from the space for this model."
        ) from e


def separate_residual_layer_norms(path: Path) -> int:
    """Rewrites, in place, each ``Add`` of two computed tensors that feeds a ``LayerNormalization``
    as the equivalent ``Sum``, which ONNX Runtime's SkipLayerNormalization fusion does not match.
    Returns how many were rewritten."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    constants = {i.name for i in graph.initializer} | {
        output for node in graph.node if node.op_type == "Constant" for output in node.output
    }
    separated = 0
    for node in graph.node:
        if node.op_type != "LayerNormalization":
            continue
        add = producers.get(node.input[0])
        if add is not None and add.op_type == "Add" and not any(i in constants for i in add.input):
            add.op_type = "Sum"
            separated += 1
    onnx.save(model, str(path))
    return separated


def operator_counts(path: Path, ops: tuple[str, ...] = FUSED_OPERATORS) -> dict[str, int]:
    """How many nodes of each of ``ops`` the ONNX file at ``path`` holds (ops it lacks are left out)."""
    import onnx

    found = collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: found[op] for op in ops if found[op]}


def session_operator_counts(path: Path, level: str | None = None) -> dict[str, int]:
    """:func:`operator_counts` of the graph ONNX Runtime's CPU session actually runs for ``path``
    (after its own graph optimisations at ``level``, default the model's recorded level or ``all``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = session_level(level or recorded_level(path))
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="lepton-graph-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return operator_counts(optimized)


def session_level(level: str) -> Any:
    """ONNX Runtime's ``GraphOptimizationLevel`` for ``basic``, ``extended`` or ``all``."""
    import onnxruntime as ort

    return getattr(ort.GraphOptimizationLevel, _LEVELS[level])


def record_level(path: Path, graph: GraphConfig) -> None:
    """Writes ``graph.optimization_level`` into the model's metadata (nothing for the default)."""
    if graph.optimization_level is None:
        return
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != OPTIMIZATION_LEVEL_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=OPTIMIZATION_LEVEL_KEY, value=graph.optimization_level)
    onnx.save(model, str(path))


def recorded_level(path: Path) -> str:
    """The session optimisation level recorded in the model file at ``path`` (``all`` if none)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX protobuf: the session will say what is wrong with it
        return "all"
    for prop in model.metadata_props:
        if prop.key == OPTIMIZATION_LEVEL_KEY and prop.value in _LEVELS:
            return prop.value
    return "all"


_RECORDED_LEVELS: dict[tuple[str, int, int], str] = {}


def model_session_level(path: Path) -> Any:
    """The ``GraphOptimizationLevel`` a session of the model at ``path`` should use: the level
    :func:`record_level` wrote into it, else ``all`` (read once per file version)."""
    path = Path(path)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return session_level("all")
    if key not in _RECORDED_LEVELS:
        _RECORDED_LEVELS[key] = recorded_level(path) if path.suffix == ".onnx" else "all"
    return session_level(_RECORDED_LEVELS[key])
