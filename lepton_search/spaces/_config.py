"""Compression configurations: frozen, JSON round-trip, stable hash.

A :class:`CompressionConfig` is what one trial evaluates. It is plain data: the ``objectives``
package turns it into a compressed model, the ``search`` package stores it in trial attributes.
Serialisation is versioned and allow-listed (``{"_type", "_version", "_data"}``): a stored config is
resolved only against the classes registered here, never by importing a path read from a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, ClassVar, Literal

from lepton_search.devices._backends import backend_names
from lepton_search.devices._backends import backend_traits as known_backend_traits
from lepton_search.errors import ConfigError

Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]
Int8Mode = Literal["dynamic", "static"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
Granularity = Literal["per_channel", "per_tensor"]
Int8Format = Literal["u8s8", "s8s8"]
PruneMethod = Literal["none", "unstructured", "channel", "depth", "2:4"]
ChannelImportance = Literal["activation", "contribution", "l1", "l2", "taylor"]
Reconstruction = Literal["least_squares"]
PruneScope = Literal["uniform", "global"]
DistillMethod = Literal["none", "soft", "hard"]
GraphFusion = Literal["none", "transformer"]
SkipLayerNorm = Literal["fused", "unfused"]
OptimizationLevel = Literal["basic", "extended", "all"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "int4")
#: Precisions that ONNX Runtime's quantization tools produce; only these take ``fp32_fraction``.
QUANTIZED_PRECISIONS: tuple[str, ...] = ("int8", "int4")
INT8_MODES: tuple[str, ...] = ("dynamic", "static")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
GRANULARITIES: tuple[str, ...] = ("per_channel", "per_tensor")
#: int8 operand formats: activations unsigned or signed, weights signed (see ``spaces/_hardware.py``).
INT8_FORMATS: tuple[str, ...] = ("u8s8", "s8s8")
#: Block sizes of ONNX Runtime's MatMulNBits (a power of two, at least 16).
INT4_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)
#: Rows per calibration batch: static int8 calibrates on ``calibration_batches`` x this many samples.
CALIBRATION_BATCH_SIZE = 64
PRUNE_METHODS: tuple[str, ...] = ("none", "unstructured", "channel", "depth", "2:4")
CHANNEL_IMPORTANCES: tuple[str, ...] = ("activation", "contribution", "l1", "l2", "taylor")
RECONSTRUCTIONS: tuple[str, ...] = ("least_squares",)
MAX_PRUNE_ITERATIONS = 8
PRUNE_SCOPES: tuple[str, ...] = ("uniform", "global")
# 2:4 semi-structured sparsity has kernels only on NVIDIA GPUs of compute capability 8.0 or newer,
# reached through torch (torch.sparse.to_sparse_semi_structured); every other backend runs the
# zeroed weights at dense cost.
SEMI_STRUCTURED_BACKENDS: tuple[str, ...] = ("torch-cuda",)
SEMI_STRUCTURED_RATIO = 0.5
DISTILL_METHODS: tuple[str, ...] = ("none", "soft", "hard")
GRAPH_FUSIONS: tuple[str, ...] = ("none", "transformer")
SKIP_LAYER_NORMS: tuple[str, ...] = ("fused", "unfused")
OPTIMIZATION_LEVELS: tuple[str, ...] = ("basic", "extended", "all")
MAX_PRUNE_RATIO = 0.9
MAX_DISTILL_STEPS = 100_000


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    _require(
        isinstance(value, str) and value in allowed, f"{field} = {value!r} is not allowed; use one of {list(allowed)}."
    )


def _is_integer(value: object) -> bool:
    # bool is an int subclass, but ``epochs = true`` is a mistake, not one epoch.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(field: str, value: object) -> float:
    """``value`` as a float; a finite int or float is required (bool is not a number here)."""
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        f"{field} = {value!r} must be a finite number.",
    )
    return float(value)  # type: ignore[arg-type]


def _set_float(obj: object, name: str, value: float) -> None:
    # Stored as float so that equal configs (``0.5`` built from ``1/2`` or a JSON ``4`` versus
    # ``4.0``) serialise, and therefore hash, identically.
    object.__setattr__(obj, name, value)


def _set_keys(obj: object, names: tuple[str, ...]) -> list[str]:
    """``"name = value"`` for each of ``names`` that is set (not ``None``) on ``obj``."""
    return [f"{name} = {getattr(obj, name)!r}" for name in names if getattr(obj, name) is not None]


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Weight precision of the exported model.

    ``int8`` runs through ONNX Runtime's quantization tools: ``dynamic`` quantizes only MatMul and
    Gemm (linear) layers, because dynamic int8 convolutions run several times *slower* than fp32 on
    CPUs (see the space documentation); ``static`` inserts QDQ pairs calibrated with
    ``calibration_method`` on ``calibration_batches`` batches of :data:`CALIBRATION_BATCH_SIZE` (64)
    training rows, that is ``calibration_batches x 64`` calibration samples (fewer when the training
    split holds fewer; the trial then notes how many it used). ``granularity`` is the int8 weight
    scale: one per output channel (``per_channel``; ``None``, the default, means the same, so configs
    written before the knob existed keep their JSON and hash) or one per tensor (``per_tensor``).

    ``int4`` is weight-only: ONNX Runtime's block-quantized ``MatMulNBits`` replaces each MatMul
    (and each Gemm with constant weights) by 4-bit weights with one scale per ``int4_block_size``
    consecutive weights, symmetric (``int4_symmetric``) or with a zero point per block; activations
    stay float. Convolutions stay fp32.

    ``bf16`` runs only on the torch backends (the module cast to bfloat16); the ONNX quantization
    path refuses it.

    ``fp32_fraction`` (int8 and int4 only; ``None``: off) turns on per-layer mixed precision: that
    fraction of the quantizable layers, the most sensitive first, stays fp32 (sensitivity is
    measured once per task and quantization mode, see ``objectives/_sensitivity.py``).

    ``reduce_range`` (int8 only; ``None``: off) quantizes weights to 7 bits, which keeps the 16-bit
    sums of x86 CPUs without VNNI from saturating. ``int8_format`` (int8 only; ``None``: ``u8s8``)
    makes static int8 activations unsigned (``u8s8``) or signed (``s8s8``); dynamic int8 quantizes
    activations to unsigned bytes at run time and is always ``u8s8``. Which of these a search
    space offers is decided from the measuring CPU's ISA (``spaces/_hardware.py``); ``None`` keeps
    the JSON and hash of configs written before the knobs existed.
    """

    precision: Precision = "fp32"
    int8_mode: Int8Mode | None = None
    calibration_method: CalibrationMethod | None = None
    calibration_batches: int | None = None
    granularity: Granularity | None = None
    int4_block_size: int | None = None
    int4_symmetric: bool | None = None
    fp32_fraction: float | None = None
    reduce_range: bool | None = None
    int8_format: Int8Format | None = None

    _INT8_KEYS: ClassVar[tuple[str, ...]] = (
        "int8_mode",
        "calibration_method",
        "calibration_batches",
        "granularity",
        "reduce_range",
        "int8_format",
    )
    _INT4_KEYS: ClassVar[tuple[str, ...]] = ("int4_block_size", "int4_symmetric")

    def __post_init__(self) -> None:
        _check_choice("quantization.precision", self.precision, PRECISIONS)
        if self.precision not in QUANTIZED_PRECISIONS:
            extra = _set_keys(self, (*self._INT8_KEYS, *self._INT4_KEYS, "fp32_fraction"))
            _require(
                not extra,
                f"quantization.precision = {self.precision!r} takes no int8 or int4 settings, got {', '.join(extra)}; "
                "remove them (int8_mode, calibration, granularity, reduce_range and int8_format apply only with "
                "precision = 'int8', "
                "int4_block_size and int4_symmetric only with precision = 'int4', fp32_fraction with either).",
            )
            return
        if self.fp32_fraction is not None:
            fraction = _check_number("quantization.fp32_fraction", self.fp32_fraction)
            _require(
                0.0 <= fraction < 1.0,
                f"quantization.fp32_fraction = {self.fp32_fraction!r} must be in [0, 1): the fraction of quantizable "
                "layers kept in fp32 (1 would quantize nothing; use precision = 'fp32' for that).",
            )
            _set_float(self, "fp32_fraction", fraction)
        if self.precision == "int4":
            self._check_int4()
            return
        extra = _set_keys(self, self._INT4_KEYS)
        _require(
            not extra,
            f"quantization.precision = 'int8' takes no {', '.join(extra)}; remove them (they apply only with "
            "precision = 'int4').",
        )
        _require(
            self.int8_mode is not None,
            f"quantization.precision = 'int8' needs int8_mode; use one of {list(INT8_MODES)}.",
        )
        _check_choice("quantization.int8_mode", self.int8_mode, INT8_MODES)
        if self.granularity is not None:
            _check_choice("quantization.granularity", self.granularity, GRANULARITIES)
        _require(
            self.reduce_range is None or isinstance(self.reduce_range, bool),
            f"quantization.reduce_range = {self.reduce_range!r} must be true (7-bit weights) or false.",
        )
        if self.int8_format is not None:
            _check_choice("quantization.int8_format", self.int8_format, INT8_FORMATS)
        if self.int8_mode == "dynamic":
            _require(
                self.int8_format in (None, "u8s8"),
                f"quantization.int8_format = {self.int8_format!r} is not allowed with int8_mode = 'dynamic', which "
                "quantizes activations to unsigned bytes at run time (u8s8); remove int8_format or use static int8.",
            )
            extra = _set_keys(self, ("calibration_method", "calibration_batches"))
            _require(
                not extra,
                f"quantization.int8_mode = 'dynamic' takes no calibration, got {', '.join(extra)}; remove them "
                "(calibration applies only with int8_mode = 'static').",
            )
            return
        _require(
            self.calibration_method is not None and self.calibration_batches is not None,
            "quantization.int8_mode = 'static' needs calibration_method (one of "
            f"{list(CALIBRATION_METHODS)}) and calibration_batches (an integer >= 1).",
        )
        _check_choice("quantization.calibration_method", self.calibration_method, CALIBRATION_METHODS)
        _require(
            _is_integer(self.calibration_batches) and self.calibration_batches >= 1,  # type: ignore[operator]
            f"quantization.calibration_batches = {self.calibration_batches!r} must be an integer >= 1.",
        )

    def _check_int4(self) -> None:
        extra = _set_keys(self, self._INT8_KEYS)
        _require(
            not extra,
            f"quantization.precision = 'int4' is weight-only (block-wise scales, no calibration) and takes no "
            f"{', '.join(extra)}; remove them (they apply only with precision = 'int8').",
        )
        _require(
            _is_integer(self.int4_block_size) and self.int4_block_size in INT4_BLOCK_SIZES,
            f"quantization.int4_block_size = {self.int4_block_size!r} is not allowed with precision = 'int4'; use "
            f"one of {list(INT4_BLOCK_SIZES)} (weights per scale).",
        )
        _require(
            isinstance(self.int4_symmetric, bool),
            f"quantization.int4_symmetric = {self.int4_symmetric!r} must be true (scales only) or false (a zero "
            "point per block) with precision = 'int4'.",
        )

    @property
    def per_channel(self) -> bool:
        """Whether int8 weights get one scale per output channel (the default) or one per tensor."""
        return self.granularity != "per_tensor"


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Pruning before export.

    ``channel`` physically removes output channels (torch-pruning), so the exported graph is
    smaller and faster. ``unstructured`` zeroes the smallest-magnitude weights: dense kernels run
    them at the same speed, so it only shrinks the compressed size of the model file. ``depth``
    removes whole blocks (transformer layers, residual blocks; the task names them) from the graph,
    the least important first; ``ratio`` is the fraction of blocks dropped. ``2:4`` zeroes two of
    every four consecutive weights of each fitting linear layer (ratio fixed at 0.5): only the
    ``torch-cuda`` backend on an NVIDIA GPU of compute capability 8.0 or newer runs it faster
    (:meth:`check_backend`).

    Channel pruning only: ``importance`` ranks channels (None: the default, ``contribution`` for
    transformers' heads and feed-forward neurons, L1 weight magnitude otherwise; ``l1``/``l2``
    weight magnitude; ``activation``, the unit's activation on calibration batches;
    ``contribution``, the size of what the unit adds to its layer's output, activation times
    outgoing weights; ``taylor``, first-order Taylor expansion of the task loss, from gradients on
    training batches, for models without attention heads). ``scope`` ``global`` ranks all layers'
    channels together, so layers lose different fractions; None or ``uniform`` removes ``ratio``
    of every layer's channels.

    Transformers (tasks that name pruning units, ``Task.pruning_units``): ``ratio`` is the fraction
    of feed-forward neurons removed and ``head_ratio`` the fraction of attention heads (None: no
    head is removed); counts are rounded to the nearest unit, not up. ``reconstruction =
    "least_squares"`` refits each pruned layer's output projection to reproduce, from the units it
    keeps, what the layer computed before (ridge least squares on calibration activations, layer
    after layer). ``iterations`` (None or 1: one shot) prunes in that many equal steps with an
    equal share of the distillation budget after each, so the student adapts between removals.
    """

    method: PruneMethod = "none"
    ratio: float = 0.0
    importance: ChannelImportance | None = None
    scope: PruneScope | None = None
    head_ratio: float | None = None
    reconstruction: Reconstruction | None = None
    iterations: int | None = None

    def __post_init__(self) -> None:
        _check_choice("pruning.method", self.method, PRUNE_METHODS)
        ratio = _check_number("pruning.ratio", self.ratio)
        _set_float(self, "ratio", ratio)
        if self.method != "channel":
            extra = _set_keys(self, ("importance", "scope", "head_ratio", "reconstruction", "iterations"))
            _require(
                not extra,
                f"pruning.method = {self.method!r} takes no {', '.join(extra)}; remove them "
                "(they apply only with method = 'channel').",
            )
        else:
            if self.importance is not None:
                _check_choice("pruning.importance", self.importance, CHANNEL_IMPORTANCES)
            if self.scope is not None:
                _check_choice("pruning.scope", self.scope, PRUNE_SCOPES)
            if self.reconstruction is not None:
                _check_choice("pruning.reconstruction", self.reconstruction, RECONSTRUCTIONS)
            if self.head_ratio is not None:
                head_ratio = _check_number("pruning.head_ratio", self.head_ratio)
                _require(
                    0.0 <= head_ratio <= MAX_PRUNE_RATIO,
                    f"pruning.head_ratio = {self.head_ratio!r} is out of range; use a value in [0, {MAX_PRUNE_RATIO}] "
                    "(the fraction of attention heads removed), or leave it out to keep every head.",
                )
                # No head removed is no head pruning: one config, one hash.
                object.__setattr__(self, "head_ratio", head_ratio or None)
            if self.iterations is not None:
                _require(
                    _is_integer(self.iterations) and 1 <= self.iterations <= MAX_PRUNE_ITERATIONS,
                    f"pruning.iterations = {self.iterations!r} must be an integer in [1, {MAX_PRUNE_ITERATIONS}] "
                    "(prune-then-distill steps), or left out for one-shot pruning.",
                )
                if self.iterations == 1:
                    object.__setattr__(self, "iterations", None)  # one step is one-shot: one config, one hash
        if self.method == "none":
            _require(
                ratio == 0.0,
                f"pruning.ratio = {self.ratio!r} is not allowed with pruning.method = 'none'; remove the "
                "ratio or set it to 0.",
            )
            return
        if self.method == "2:4":
            _require(
                ratio in (0.0, SEMI_STRUCTURED_RATIO),
                f"pruning.ratio = {self.ratio!r} is not allowed with pruning.method = '2:4', which always zeroes "
                f"2 of every 4 weights; remove the ratio (it is {SEMI_STRUCTURED_RATIO}).",
            )
            _set_float(self, "ratio", SEMI_STRUCTURED_RATIO)
            return
        _require(
            0.0 < self.ratio <= MAX_PRUNE_RATIO,
            f"pruning.ratio = {self.ratio!r} is out of range; use a value in (0, {MAX_PRUNE_RATIO}].",
        )

    def check_backend(self, backend: str) -> None:
        """Raises :class:`ConfigError` when ``backend`` cannot run this pruning faster than dense.

        Only ``2:4`` has such a requirement: its kernels exist only in torch on NVIDIA GPUs of compute
        capability 8.0 or newer (the ``torch-cuda`` backend).
        """
        _require(
            self.method != "2:4" or backend in SEMI_STRUCTURED_BACKENDS,
            f"pruning.method = '2:4' needs a backend with 2:4 semi-structured sparse kernels, got backend "
            f"{backend!r}; allowed: {list(SEMI_STRUCTURED_BACKENDS)} (NVIDIA GPU, compute capability 8.0 or newer). "
            "Measure with one of them, or remove '2:4' from space.pruning.method: other backends run the zeroed "
            "weights at dense cost.",
        )


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Fine-tuning of the compressed student from the uncompressed teacher.

    ``soft`` minimises ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)``;
    ``hard`` trains on the teacher's argmax labels. ``hidden_weight`` (in [0, 1]; None: off) adds
    that times a loss between the student's and the teacher's intermediate representations (the
    layers the task names; a depth-pruned student's kept layers are matched to the teacher layers
    they came from). ``relation_weight`` (in [0, 1]; None: off) adds that times MiniLM v2's
    self-attention relation loss: the KL divergence between the teacher's and the student's
    query-query, key-key and value-value relations in the last attention layer.

    The budget is ``epochs`` passes over the task's training data (constant ``learning_rate``,
    Adam: the original recipe), or ``steps`` optimizer steps (AdamW, linear warm-up over the first
    ``warmup`` fraction of the steps, then linear decay to zero), never both.

    ``quantization_aware = True`` (None: off) trains the student through the rounding of dynamic
    int8 quantization (``objectives/_fake_quant.py``), so that it loses less fidelity when it is
    quantized; it goes with ``quantization.precision = "int8"`` and ``int8_mode = "dynamic"`` (or
    fp32, the student alone), and it distils an embedding encoder even when nothing was pruned.
    """

    method: DistillMethod = "none"
    temperature: float | None = None
    alpha: float | None = None
    epochs: int = 0
    learning_rate: float = 1e-3
    hidden_weight: float | None = None
    steps: int | None = None
    warmup: float | None = None
    relation_weight: float | None = None
    quantization_aware: bool | None = None

    def __post_init__(self) -> None:
        _check_choice("distillation.method", self.method, DISTILL_METHODS)
        _require(
            self.quantization_aware is None or isinstance(self.quantization_aware, bool),
            f"distillation.quantization_aware = {self.quantization_aware!r} must be true or false.",
        )
        # Off is one config, one hash, whether written false or left out.
        object.__setattr__(self, "quantization_aware", self.quantization_aware or None)
        if self.hidden_weight is not None:
            hidden_weight = _check_number("distillation.hidden_weight", self.hidden_weight)
            _require(
                0.0 <= hidden_weight <= 1.0,
                f"distillation.hidden_weight = {self.hidden_weight!r} must be in [0, 1] (or left out: no "
                "hidden-state loss).",
            )
            _set_float(self, "hidden_weight", hidden_weight)
        learning_rate = _check_number("distillation.learning_rate", self.learning_rate)
        _require(learning_rate > 0, f"distillation.learning_rate = {self.learning_rate!r} must be > 0.")
        _set_float(self, "learning_rate", learning_rate)
        if self.relation_weight is not None:
            relation_weight = _check_number("distillation.relation_weight", self.relation_weight)
            _require(
                0.0 <= relation_weight <= 1.0,
                f"distillation.relation_weight = {self.relation_weight!r} must be in [0, 1] (or left out: no "
                "attention-relation loss).",
            )
            # A zero weight is no relation loss (and needs no teacher pass): one config, one hash.
            object.__setattr__(self, "relation_weight", relation_weight or None)
        if self.method == "none":
            keys = ("temperature", "alpha", "hidden_weight", "steps", "warmup", "relation_weight", "quantization_aware")
            extra = _set_keys(self, keys)
            if not (_is_integer(self.epochs) and self.epochs == 0):
                extra.append(f"epochs = {self.epochs!r}")
            _require(
                not extra,
                f"distillation.method = 'none' takes no {', '.join(extra)}; remove them "
                "(or choose method 'soft' or 'hard').",
            )
            return
        if self.steps is not None:
            _require(
                _is_integer(self.steps) and 1 <= self.steps <= MAX_DISTILL_STEPS,
                f"distillation.steps = {self.steps!r} must be an integer in [1, {MAX_DISTILL_STEPS}] (optimizer "
                "steps).",
            )
            _require(
                _is_integer(self.epochs) and self.epochs == 0,
                f"distillation.steps = {self.steps} and epochs = {self.epochs!r} both set a budget; keep one (steps: "
                "optimizer steps with warm-up and decay; epochs: passes at a constant learning rate).",
            )
            warmup = _check_number("distillation.warmup", 0.1 if self.warmup is None else self.warmup)
            _require(
                0.0 <= warmup < 1.0,
                f"distillation.warmup = {self.warmup!r} must be in [0, 1): the fraction of the steps spent warming up.",
            )
            _set_float(self, "warmup", warmup)
        else:
            _require(
                self.warmup is None,
                f"distillation.warmup = {self.warmup!r} needs a step budget (distillation.steps); with epochs the "
                "learning rate is constant.",
            )
            _require(
                _is_integer(self.epochs) and self.epochs >= 1,
                f"distillation.epochs = {self.epochs!r} must be an integer >= 1 (or set steps instead).",
            )
        if self.method == "hard":
            extra = _set_keys(self, ("temperature", "alpha"))
            _require(
                not extra,
                f"distillation.method = 'hard' takes no {', '.join(extra)}; remove them (or use method 'soft').",
            )
            return
        temperature = _check_number("distillation.temperature", self.temperature)
        _require(
            1.0 <= temperature <= 20.0,
            f"distillation.temperature = {self.temperature!r} must be in [1, 20].",
        )
        alpha = _check_number("distillation.alpha", self.alpha)
        _require(0.0 <= alpha <= 1.0, f"distillation.alpha = {self.alpha!r} must be in [0, 1].")
        _set_float(self, "temperature", temperature)
        _set_float(self, "alpha", alpha)


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """How the exported ONNX graph is built and optimised; ``None`` everywhere is the plain export
    a user gets from ``torch.onnx.export`` run at ONNX Runtime's full session optimisation.

    ``fusion = "transformer"`` runs ONNX Runtime's transformer optimizer
    (``onnxruntime.transformers.optimizer``) for the task's model type, which fuses each attention
    block into one ``Attention`` node (``QAttention`` after dynamic int8) and the bias and GELU into
    ``BiasGelu``; a trial whose requested fusions did not all happen fails with that reason.
    ``skip_layer_norm = "unfused"`` keeps each residual addition apart from the LayerNormalization
    that follows it, so ONNX Runtime does not fuse the two into ``SkipLayerNormalization`` (whose
    CPU kernel was several times slower than the two ops it replaces on the AVX-512 development
    CPU); ``"fused"`` lets the transformer optimizer fuse them. Both export the task's
    fusion-friendly module (``Task.export_module``) with the TorchScript exporter, the graph
    ONNX Runtime's transformer tools are written for. ``optimization_level`` is the session's
    graph optimisation level (``all`` when left out), recorded in the model file's metadata so
    that every session that opens it uses it.
    """

    fusion: GraphFusion | None = None
    skip_layer_norm: SkipLayerNorm | None = None
    optimization_level: OptimizationLevel | None = None

    def __post_init__(self) -> None:
        for name, allowed in (
            ("fusion", GRAPH_FUSIONS),
            ("skip_layer_norm", SKIP_LAYER_NORMS),
            ("optimization_level", OPTIMIZATION_LEVELS),
        ):
            value = getattr(self, name)
            if value is not None:
                _check_choice(f"graph.{name}", value, allowed)
        if self.fusion == "none":
            object.__setattr__(self, "fusion", None)  # the same graph: one config, one hash
        if self.optimization_level == "all":
            object.__setattr__(self, "optimization_level", None)

    @property
    def is_default(self) -> bool:
        """True for the plain export at full session optimisation."""
        return self == GraphConfig()

    def to_knobs(self) -> dict[str, str]:
        """The knobs that are set, as ``{name: value}``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def rewrites_graph(self) -> bool:
        """Whether the model is exported through the task's fusion-friendly module (any knob but the
        session level)."""
        return self.fusion is not None or self.skip_layer_norm is not None


#: Precisions a torch backend can run, by device kind: the module is cast to the dtype (a wrapper
#: casts float inputs in and outputs back to fp32). fp16 runs only on GPUs: on CPUs it ran slower
#: than fp32 even with AVX-512 FP16 (``spaces/_hardware.py``). Whether a search space offers bf16
#: on the CPU is decided from its ISA there too; a config may hold it anywhere (it then runs, and
#: is measured, on whatever CPU it is given). int8/int4 are ONNX Runtime quantizations and run
#: only on ONNX backends.
#: Pruning methods abbreviated in :meth:`CompressionConfig.short_label`.
_SHORT_PRUNING = {"unstructured": "unstr"}
TORCH_PRECISIONS: dict[str, tuple[str, ...]] = {"cpu": ("fp32", "bf16"), "gpu": ("fp32", "fp16", "bf16")}
MAX_DEPLOY_BATCH_SIZE = 65536
MAX_DEPLOY_THREADS = 512


def backend_traits(backend: str) -> tuple[str, str]:
    """``(model_format, device_kind)`` of the deployment backend ``backend`` (kind: cpu or gpu).

    Raises:
        ConfigError: ``backend`` is not a known deployment backend.
    """
    traits = known_backend_traits(backend)
    if traits is None:
        raise ConfigError(
            f"deployment.backend = {backend!r} is not a registered latency backend; use one of {backend_names()}."
        )
    return traits.model_format, traits.device_kind


def torch_precisions(backend: str) -> tuple[str, ...] | None:
    """The precisions ``backend`` runs if it is a torch backend; ``None`` for ONNX backends (which
    run every :class:`QuantizeConfig`)."""
    model_format, device_kind = backend_traits(backend)
    if model_format != "torch-export":
        return None
    return TORCH_PRECISIONS.get(device_kind, TORCH_PRECISIONS["cpu"])


def check_backend_precision(backend: str, quantization: QuantizeConfig) -> None:
    """Raises :class:`ConfigError` when ``backend`` cannot run ``quantization``."""
    allowed = torch_precisions(backend)
    if allowed is None or quantization.precision in allowed:
        return
    raise ConfigError(
        f"quantization.precision = {quantization.precision!r} cannot run on backend {backend!r}: torch backends run "
        f"the module cast to one of {list(allowed)} (int8/int4 quantization is done by ONNX Runtime, and fp16 runs "
        "on GPUs only: on CPUs it ran slower than fp32 even with AVX-512 FP16). Choose one of those precisions, or "
        "an onnxruntime-* backend."
    )


@dataclasses.dataclass(frozen=True)
class DeploymentConfig:
    """Where and how the compressed model is served; ``None`` means the study's ``[measurement]`` value.

    ``backend`` is a registered latency backend (``onnxruntime-cpu``, ``torch-cpu``, ...): ONNX
    backends run the quantized ONNX file, torch backends a ``torch.export`` program of the module
    cast to the config's precision. ``batch_size`` is the requests per run, ``threads`` the
    intra-op threads (a CPU deployment is priced per thread).
    """

    backend: str | None = None
    batch_size: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend is not None:
            _require(
                isinstance(self.backend, str),
                f"deployment.backend = {self.backend!r} must be a backend name (a string).",
            )
            backend_traits(self.backend)
        for name, high in (("batch_size", MAX_DEPLOY_BATCH_SIZE), ("threads", MAX_DEPLOY_THREADS)):
            value = getattr(self, name)
            _require(
                value is None or (_is_integer(value) and 1 <= value <= high),
                f"deployment.{name} = {value!r} must be an integer in [1, {high}] (or left out to use the "
                f"study's [measurement] {name}).",
            )

    @property
    def is_default(self) -> bool:
        """True when every field defers to the study's ``[measurement]`` settings."""
        return self == DeploymentConfig()


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """Everything one trial applies to the teacher, in pipeline order: prune, distill, export (the
    graph settings), quantize, and the deployment it is measured at (default: the study's
    ``[measurement]`` settings)."""

    SCHEMA_VERSION: ClassVar[int] = 1

    quantization: QuantizeConfig = dataclasses.field(default_factory=QuantizeConfig)
    pruning: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    distillation: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    deployment: DeploymentConfig = dataclasses.field(default_factory=DeploymentConfig)
    graph: GraphConfig = dataclasses.field(default_factory=GraphConfig)

    def __post_init__(self) -> None:
        if self.deployment.backend is not None:
            check_backend_precision(self.deployment.backend, self.quantization)
        q = self.quantization
        # fp32 is allowed: it is how the student's pruning is measured alone (objectives/_factors.py).
        _require(
            not self.distillation.quantization_aware
            or q.precision == "fp32"
            or (q.precision == "int8" and q.int8_mode == "dynamic"),
            "distillation.quantization_aware = true trains the student for dynamic int8 quantization, but "
            f"quantization.precision = {q.precision!r}"
            + (f" with int8_mode = {q.int8_mode!r}" if q.precision == "int8" else "")
            + "; use precision 'int8' with int8_mode 'dynamic', or leave quantization_aware out.",
        )
        if self.graph.is_default:
            return
        if self.deployment.backend is not None:
            model_format, _ = backend_traits(self.deployment.backend)
            _require(
                model_format == "onnx",
                f"graph settings {self.graph.to_knobs()} apply to ONNX graphs, but deployment.backend = "
                f"{self.deployment.backend!r} runs a torch.export program; remove the graph settings for torch "
                "backends (or deploy on an onnxruntime-* backend).",
            )
        q = self.quantization
        _require(
            not (self.graph.fusion == "transformer" and q.precision == "int8" and q.int8_mode == "static"),
            "graph.fusion = 'transformer' does not combine with static QDQ int8: ONNX Runtime's fused Attention has no "
            "QDQ form, so the quantized graph would lose the fusion (onnxruntime issue 8770). Use int8_mode = "
            "'dynamic' with fusion (it becomes QAttention), or leave fusion out for static int8.",
        )

    @property
    def is_baseline(self) -> bool:
        """True for the identity configuration: fp32, no pruning, no distillation."""
        return self == CompressionConfig()

    def to_dict(self) -> dict[str, Any]:
        """The plain nested dict of the fields, with ``None`` values left out.

        A deployment or graph section with every field ``None`` is left out entirely, so configs
        without those knobs keep the JSON (and hash) they had before the sections existed.
        """
        data = {
            section.name: {k: v for k, v in dataclasses.asdict(getattr(self, section.name)).items() if v is not None}
            for section in dataclasses.fields(self)
        }
        for optional in ("deployment", "graph"):
            if not data[optional]:
                del data[optional]
        return data

    def to_json(self) -> str:
        """Versioned JSON: ``{"_type": ..., "_version": ..., "_data": {...}}``, keys sorted."""
        payload = {"_type": "CompressionConfig", "_version": self.SCHEMA_VERSION, "_data": self.to_dict()}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))

    @property
    def config_hash(self) -> str:
        """A stable 16-hex-digit hash of the canonical JSON; equal configs hash equally."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Builds a config from :meth:`to_dict` output, rejecting unknown sections and keys."""
        sections = {
            "quantization": QuantizeConfig,
            "pruning": PruneConfig,
            "distillation": DistillConfig,
            "deployment": DeploymentConfig,
            "graph": GraphConfig,
        }
        _require(isinstance(data, dict), f"Config data must be an object of sections, got {data!r}.")
        unknown = set(data) - set(sections)
        _require(not unknown, f"Unknown config sections {sorted(map(str, unknown))}; allowed: {list(sections)}.")
        kwargs: dict[str, Any] = {}
        for name, section_cls in sections.items():
            section = data.get(name, {})
            _require(isinstance(section, dict), f"Config section {name} = {section!r} must be an object of keys.")
            values = dict(section)
            allowed = {f.name for f in dataclasses.fields(section_cls)}
            extra = set(values) - allowed
            _require(not extra, f"Unknown keys {sorted(extra)} in {name}; allowed: {sorted(allowed)}.")
            try:
                kwargs[name] = section_cls(**values)
            except TypeError as e:
                raise ConfigError(f"Invalid {name} section {values!r}: {e}") from e
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> CompressionConfig:
        """Inverse of :meth:`to_json`; accepts the envelope or a bare :meth:`to_dict` object."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"Config is not valid JSON: {e}") from e
        if not isinstance(payload, dict):
            raise ConfigError(f"Config JSON must be an object, got {type(payload).__name__}.")
        if "_type" in payload:
            _require(
                payload["_type"] == "CompressionConfig",
                f"Config _type {payload['_type']!r} is not allowed; expected 'CompressionConfig'.",
            )
            version = payload.get("_version")
            _require(
                _is_integer(version) and version == cls.SCHEMA_VERSION,
                f"Config _version {version!r} is not supported; this version of "
                f"lepton-search reads version {cls.SCHEMA_VERSION}.",
            )
            envelope = {"_type", "_version", "_data"}
            extra = set(payload) - envelope
            _require(not extra, f"Unknown envelope keys {sorted(extra)}; allowed: {sorted(envelope)}.")
            _require("_data" in payload, "Config envelope has no _data; expected the config's sections under it.")
            payload = payload["_data"]
        return cls.from_dict(payload)

    def short_label(self) -> str:
        """The techniques at a glance, for an 80-column table: ``int8 + channel 50% + hard KD``
        (:meth:`describe` gives their settings)."""
        q = self.quantization
        parts = [q.precision + (" dyn" if q.precision == "int8" and q.int8_mode == "dynamic" else "")]
        pr = self.pruning
        if pr.method == "2:4":
            parts.append("2:4")
        elif pr.head_ratio:
            parts.append(f"FFN {pr.ratio:.0%} heads {pr.head_ratio:.0%}")
        elif pr.method != "none":
            parts.append(f"{_SHORT_PRUNING.get(pr.method, pr.method)} {pr.ratio:.0%}")
        if self.distillation.method != "none":
            parts.append(f"{self.distillation.method} KD" + (" QA" if self.distillation.quantization_aware else ""))
        g = self.graph
        if g.fusion is not None:
            parts.append("fused")
        if g.skip_layer_norm == "unfused":
            parts.append("unfused LN")
        if g.optimization_level is not None:
            parts.append(f"ORT {g.optimization_level}")
        d = self.deployment
        where = [f"b{d.batch_size}" if d.batch_size is not None else "", f"t{d.threads}" if d.threads else ""]
        label = " + ".join(parts)
        return f"{label} @{' '.join(w for w in where if w)}" if any(where) else label

    def describe(self) -> str:
        """A short human label, e.g. ``int8-static(minmax) + channel 50% + soft KD``."""
        q = self.quantization
        label = q.precision
        if q.precision == "int8":
            label += f"-{q.int8_mode}"
            knobs = [str(q.calibration_method)] if q.int8_mode == "static" else []
            if not q.per_channel:
                knobs.append("per-tensor")
            if q.int8_format == "s8s8":
                knobs.append("s8s8")
            if q.reduce_range:
                knobs.append("7-bit weights")
            if knobs:
                label += f"({', '.join(knobs)})"
        elif q.precision == "int4":
            label += f"(block {q.int4_block_size}, {'sym' if q.int4_symmetric else 'asym'})"
        if q.fp32_fraction is not None:
            label += f" mixed({q.fp32_fraction:.0%} layers fp32)"
        parts = [label]
        pr = self.pruning
        if pr.method == "2:4":
            parts.append("2:4 sparse")
        elif pr.method == "depth":
            parts.append(f"depth -{pr.ratio:.0%} blocks")
        elif pr.method != "none":
            knobs = [k for k in (pr.importance, pr.scope) if k is not None]
            if pr.reconstruction is not None:
                knobs.append("refit")
            if pr.iterations is not None:
                knobs.append(f"{pr.iterations} steps")
            what = f"{pr.method} {pr.ratio:.0%}"
            if pr.head_ratio:
                what = f"FFN {pr.ratio:.0%} + heads {pr.head_ratio:.0%}"
            parts.append(what + (f" ({', '.join(knobs)})" if knobs else ""))
        if self.distillation.method != "none":
            d = self.distillation
            budget = f"{d.steps} steps" if d.steps is not None else f"x{d.epochs}"
            kd = f"{d.method} KD {budget}"
            if d.hidden_weight is not None:
                kd += f" +hidden {d.hidden_weight:.2g}"
            if d.relation_weight is not None:
                kd += f" +relations {d.relation_weight:.2g}"
            if d.quantization_aware:
                kd += " int8-aware"
            parts.append(kd)
        g = self.graph
        if g.fusion is not None:
            parts.append("fused")
        if g.skip_layer_norm == "unfused":
            parts.append("unfused skip-LN")
        if g.optimization_level is not None:
            parts.append(f"ORT {g.optimization_level}")
        label = " + ".join(parts)
        d = self.deployment
        where = [
            text
            for value, text in (
                (d.backend, d.backend),
                (d.batch_size, f"batch {d.batch_size}"),
                (d.threads, f"{d.threads} thread{'s' if d.threads != 1 else ''}"),
            )
            if value is not None
        ]
        return f"{label} @ {', '.join(where)}" if where else label
