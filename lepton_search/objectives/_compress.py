"""The compression pipeline: prune -> distill -> export -> quantize.

Each step is a small function of (model, its config section); :func:`compress` runs them in order
and records what each produced. Torch steps run on the CPU with the thread count the caller set.

Models take one array or several named arrays (see ``tasks/_base.py``): a text encoder's
``input_ids`` and ``attention_mask``, say. Such a model is exported with a dynamic batch axis and
every other axis left to ``torch.export`` (so a sequence length stays dynamic).

Transformers. Channel pruning of a model whose task names its attention projections
(:meth:`~lepton_search.objectives.tasks.Task.attention_heads`) removes whole attention heads and
feed-forward neurons, ranked by their mean absolute activation on calibration batches, at the
configured ratio each; the layers the task keeps whole (its residual-stream outputs) keep the
hidden size. Dynamic int8 quantizes each MatMul weight per output channel: per-tensor scales cost a
MiniLM encoder about 4% cosine fidelity (``shared/notes/latency.md``, section 5).

Embedding models (``task.output_kind == "embedding"``) are distilled with a softmax over in-batch
cosine similarities; see :func:`embedding_distillation_loss`.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import logging
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_search.errors import CompressionError
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task
    from lepton_search.objectives.tasks._base import Inputs

# In-batch similarity logits are cosine * SIMILARITY_SCALE / temperature: cosines lie in [-1, 1],
# and a softmax over them at temperature 1 would be nearly uniform. 20 is the scale of
# sentence-transformers' MultipleNegativesRankingLoss, which trained all-MiniLM-L6-v2; it makes the
# space's temperature range [1, 20] span sharp (nearest neighbours only) to flat (the whole
# similarity structure of the batch).
SIMILARITY_SCALE = 20.0

DISTILL_SKIPPED_NOTE = (
    "distillation skipped: nothing was pruned, so the student still equals the teacher and has "
    "nothing to learn (quantization comes after distillation)"
)

UNSTRUCTURED_NOTE = (
    "unstructured sparsity: dense kernels run zeroed weights at full cost, so this shrinks only "
    "the compressed model size, not latency"
)


@dataclass
class CompressedModel:
    """The result of :func:`compress`: an ONNX file plus what was done to get it."""

    onnx_path: Path
    parameters: int
    sparsity: float
    size_bytes: int
    gzip_size_bytes: int
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


def _activation_importance(model: torch.nn.Module, batches: list[Inputs]) -> Any:
    """torch-pruning's activation importance, accumulated over ``batches`` (its own hook keeps only
    the last forward pass): a channel's score is the summed absolute value of its activation where
    it enters the next layer, so a head is scored by its attention output and a feed-forward
    neuron by its activation after the nonlinearity."""
    import torch
    import torch_pruning as tp

    importance = tp.importance.ActivationImportance()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def hook(module: torch.nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).sum(0)
        previous = getattr(module, "_importance", None)
        module._importance = x if previous is None else previous + x

    handles = [m.register_forward_hook(hook) for m in linears]
    try:
        with torch.no_grad():
            for batch in batches:
                run_model(model, to_torch(batch))
    finally:
        for handle in handles:
            handle.remove()
    return importance


def _clear_activation_importance(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "_importance"):
            del module._importance


def prune(model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs) -> list[Any]:
    """Prunes ``model`` in place.

    ``channel`` on a model whose task names attention projections (``task.attention_heads``) removes
    ``ratio`` of the attention heads and ``ratio`` of the other prunable channels (a transformer's
    feed-forward neurons), ranked by activation on calibration batches; otherwise it removes
    ``ratio`` of the channels of every prunable layer, ranked by weight magnitude.

    Returns:
        The (module, name) pairs still carrying torch's pruning masks (unstructured pruning keeps
        them through distillation, so fine-tuning cannot revive pruned weights); pass them to
        :func:`finalize_pruning`.
    """
    import torch

    if config.method == "none":
        return []
    if config.method == "channel":
        import torch_pruning as tp

        ignored = list(task.prunable_ignored_layers(model))
        heads = dict(task.attention_heads(model))
        try:
            if heads:
                importance = _activation_importance(model, task.calibration_inputs(4, task.train_batch_size))
                pruner = tp.pruner.MetaPruner(
                    model,
                    to_torch(first_rows(example, 1)),
                    importance=importance,
                    pruning_ratio=config.ratio,
                    ignored_layers=ignored,
                    num_heads=heads,
                    prune_num_heads=True,
                    prune_head_dims=False,
                    head_pruning_ratio=config.ratio,
                )
            else:
                pruner = tp.pruner.MetaPruner(
                    model,
                    to_torch(first_rows(example, 1)),
                    importance=tp.importance.MagnitudeImportance(p=1),
                    pruning_ratio=config.ratio,
                    ignored_layers=ignored,
                )
            pruner.step()
            if heads:
                _clear_activation_importance(model)
            task.after_pruning(model)
        except Exception as e:  # torch-pruning raises bare exceptions on untraceable graphs
            raise CompressionError(
                f"Channel pruning at ratio {config.ratio} failed for this model: "
                f"{type(e).__name__}: {e}. Exclude 'channel' from space.pruning.method, or list "
                "layers to keep in the task's prunable_ignored_layers()."
            ) from e
        return []
    from torch.nn.utils import prune as torch_prune

    targets = [
        (m, "weight")
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))
    ]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=config.ratio)
    return targets


def finalize_pruning(masked: list[Any]) -> None:
    """Makes unstructured pruning permanent (removes the masks, keeps the zeros)."""
    from torch.nn.utils import prune as torch_prune

    for module, name in masked:
        torch_prune.remove(module, name)


def sparsity(model: torch.nn.Module) -> float:
    """Fraction of exactly-zero weights over all weight tensors of rank >= 2."""
    total = zeros = 0
    for name, p in model.named_parameters():
        if p.dim() >= 2 and name.endswith("weight"):
            total += p.numel()
            zeros += int((p == 0).sum())
    return zeros / total if total else 0.0


def distill(
    student: torch.nn.Module, teacher: torch.nn.Module, config: DistillConfig, task: Task, *, seed: int
) -> bool:
    """Fine-tunes ``student`` in place from ``teacher`` on the task's training batches.

    Returns:
        Whether the student was trained (not with ``method = "none"``, nor for an embedding
        student that still equals its teacher).

    Classifiers (``task.output_kind == "logits"``):
    ``soft``: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``, the
    T^2 factor keeping gradient magnitudes comparable across temperatures (Hinton et al. 2015).
    ``hard``: cross-entropy against the teacher's argmax.

    Embedding models (``"embedding"``): see :func:`embedding_distillation_loss`. Their student is
    trained in eval mode (no dropout; batch norm keeps its running statistics): it is fitted to
    reproduce the teacher's deterministic outputs. A student that still equals its teacher (nothing
    was pruned) is left alone: its loss is zero up to rounding, and Adam, which divides by the
    gradients' own scale, would turn rounding noise into full-size steps. With dropout on, an
    unpruned MiniLM drifted from 1.0 to 0.81-0.95 mean cosine in one or two epochs.
    """
    import torch
    from torch.nn import functional as F

    if config.method == "none":
        return False
    embedding = task.output_kind == "embedding"
    if embedding and same_parameters(student, teacher):
        return False
    teacher.eval()
    student.train(not embedding)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    for epoch in range(config.epochs):
        for inputs_np, labels_np in task.train_batches(task.train_batch_size, seed=seed * 1000 + epoch):
            inputs, labels = to_torch(inputs_np), torch.from_numpy(np.asarray(labels_np))
            with torch.no_grad():
                teacher_logits = run_model(teacher, inputs)
            logits = run_model(student, inputs)
            if embedding:
                loss = embedding_distillation_loss(logits, teacher_logits, config)
            elif config.method == "hard":
                loss = F.cross_entropy(logits, teacher_logits.argmax(dim=1))
            else:
                t = float(config.temperature or 1.0)
                alpha = float(config.alpha if config.alpha is not None else 1.0)
                kd = F.kl_div(
                    F.log_softmax(logits / t, dim=1),
                    F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean",
                ) * (t * t)
                loss = alpha * kd + (1 - alpha) * F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise CompressionError(
                    f"Distillation loss became {loss.item()} in epoch {epoch + 1}; lower "
                    "distillation.learning_rate or narrow the temperature range."
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    student.eval()
    return True


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether ``a`` and ``b`` hold the same parameter names, shapes and values."""
    import torch

    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(pa[k].shape == pb[k].shape and torch.equal(pa[k], pb[k]) for k in pa)


def embedding_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, config: DistillConfig) -> torch.Tensor:
    """The distillation loss of a batch of ``student`` embeddings against the ``teacher``'s.

    Logits are in-batch cosine similarities times ``SIMILARITY_SCALE / T``: row ``i`` of the
    student's holds ``cos(s_i, t_j)`` over the batch's teacher embeddings ``t_j``, row ``i`` of the
    teacher's ``cos(t_i, t_j)``.

    ``soft``: ``alpha * T^2 * KL(softmax(teacher row) || softmax(student row))`` (the teacher's
    neighbourhood structure, sharp at low T and broad at high T) ``+ (1 - alpha) * mean(1 - cos(s_i,
    t_i))`` (the embeddings themselves; half the mean squared error of unit vectors).
    ``hard``: cross-entropy of the student's rows with each row's own teacher embedding as the
    class (in-batch contrastive alignment, at T = 1).
    """
    from torch.nn import functional as F

    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    if config.method == "hard":
        import torch

        logits = s @ t.T * SIMILARITY_SCALE
        return F.cross_entropy(logits, torch.arange(len(s), device=s.device))
    temperature = float(config.temperature or 1.0)
    alpha = float(config.alpha if config.alpha is not None else 1.0)
    scale = SIMILARITY_SCALE / temperature
    kd = F.kl_div(
        F.log_softmax(s @ t.T * scale, dim=1),
        F.softmax(t @ t.T * scale, dim=1),
        reduction="batchmean",
    ) * (temperature * temperature)
    cosine = (1.0 - (s * t).sum(dim=-1)).mean()
    return alpha * kd + (1.0 - alpha) * cosine


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


def _pre_process(source: Path, target: Path, out_dir: Path) -> None:
    """ONNX Runtime's quantization pre-processing (shape inference, graph optimisation).

    Its symbolic shape inference gives up on dynamo exports of transformers ("Incomplete symbolic
    shape inference", at the position-embedding slice) and then dumps its partial model into the
    working directory. Models with several inputs skip it; the rest of the pre-processing does not
    need it, and dynamic int8 needs no shapes. A single-input model that fails it is retried without
    it, and its dump goes to ``out_dir``.
    """
    import contextlib

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


def quantize(source: Path, config: QuantizeConfig, task: Task, out_dir: Path) -> Path:
    """Applies the precision of ``config`` to the exported fp32 model at ``source``."""
    if config.precision == "fp32":
        return source
    target = out_dir / f"model-{config.precision}.onnx"
    # ONNX Runtime's quantization tools write temporary files (sym_shape_infer_temp.onnx, external
    # weight files) into the working directory; keep them inside the trial's own directory.
    # Each Ray worker process runs one trial at a time, so changing its directory is safe.
    source, out_dir, target = source.resolve(), out_dir.resolve(), target.resolve()
    try:
        with contextlib.chdir(out_dir):
            return _quantize_here(source, config, task, out_dir, target)
    except CompressionError:
        raise
    except Exception as e:
        raise CompressionError(
            f"{config.precision} quantization ({config.int8_mode or 'conversion'}) failed: "
            f"{type(e).__name__}: {str(e)[:400]}"
        ) from e


def _quantize_here(source: Path, config: QuantizeConfig, task: Task, out_dir: Path, target: Path) -> Path:
    import onnx

    if config.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(model, str(target))
        return target
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    prepared = out_dir / "model-preprocessed.onnx"
    _pre_process(source, prepared, out_dir)
    if config.int8_mode == "dynamic":
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
        )
        return target
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    reader = _CalibrationReader(task.calibration_inputs(int(config.calibration_batches or 1), 64), input_name)
    quantize_static(
        str(prepared),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[str(config.calibration_method)],
    )
    return target


def compress(
    teacher: torch.nn.Module, config: CompressionConfig, task: Task, out_dir: Path, *, seed: int = 0
) -> CompressedModel:
    """Runs prune -> distill -> export -> quantize for ``config`` and returns the ONNX result.

    The teacher is not modified. Raises :class:`CompressionError` when a step fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    notes: list[str] = []
    example = task.example_inputs(2)

    start = time.perf_counter()
    student = copy.deepcopy(teacher)
    masked = prune(student, config.pruning, task, example)
    timings["prune_s"] = time.perf_counter() - start
    if config.pruning.method == "unstructured":
        notes.append(UNSTRUCTURED_NOTE)

    start = time.perf_counter()
    if not distill(student, teacher, config.distillation, task, seed=seed) and config.distillation.method != "none":
        notes.append(DISTILL_SKIPPED_NOTE)
    finalize_pruning(masked)
    timings["distill_s"] = time.perf_counter() - start

    start = time.perf_counter()
    fp32_path = export_onnx(student, example, out_dir / "model-fp32.onnx")
    timings["export_s"] = time.perf_counter() - start

    start = time.perf_counter()
    final = quantize(fp32_path, config.quantization, task, out_dir)
    timings["quantize_s"] = time.perf_counter() - start

    data = final.read_bytes()
    return CompressedModel(
        onnx_path=final,
        parameters=count_parameters(student),
        sparsity=sparsity(student),
        size_bytes=len(data),
        gzip_size_bytes=len(gzip.compress(data, compresslevel=6)),
        timings_s=timings,
        notes=notes,
    )
