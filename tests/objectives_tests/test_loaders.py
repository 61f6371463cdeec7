"""Loading real models from local files: Hugging Face directories (a tiny BERT with random weights,
saved here), torchvision architectures (where torchvision imports), and weights files read with
``weights_only=True``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lepton_search.errors import TaskError
from lepton_search.objectives.tasks.loaders import (
    load_huggingface_model,
    load_huggingface_tokenizer,
    load_state_dict_file,
    load_torchvision_model,
    load_weights_into,
    torchvision_available,
)

TORCHVISION_OK, TORCHVISION_WHY = torchvision_available()
needs_torchvision = pytest.mark.skipif(
    not TORCHVISION_OK,
    reason=f"torchvision does not import here ({TORCHVISION_WHY})",
)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "model", "is", "small", "##s", "a", "b", "c"]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def tiny_bert(tmp_path: Path) -> tuple[Path, Any]:
    """A 2-layer BERT with random weights and a 13-word tokenizer, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers", reason='install the minilm extra: pip install -e ".[minilm]"')
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(config).eval()
    directory = tmp_path / "tiny-bert"
    model.save_pretrained(directory)
    # A WordPiece tokenizer as its files (what BertTokenizer.save_pretrained writes, less the optional ones).
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    return directory, model


# --------------------------------------------------------------------------------- Hugging Face


def test_huggingface_model_loads_from_a_local_directory(tiny_bert: tuple[Path, Any]) -> None:
    directory, saved = tiny_bert

    model = load_huggingface_model(directory)

    assert type(model).__name__ == "BertModel"
    assert not model.training
    assert _same_weights(model, saved)
    ids = torch.tensor([[2, 5, 6, 3]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).last_hidden_state, saved(input_ids=ids).last_hidden_state)


def test_huggingface_loader_passes_options_and_picks_the_auto_class(tiny_bert: tuple[Path, Any]) -> None:
    directory, _ = tiny_bert

    bare = load_huggingface_model(directory, add_pooling_layer=False, attn_implementation="eager")
    classifier = load_huggingface_model(directory, auto_class="AutoModelForSequenceClassification", num_labels=3)

    assert bare.pooler is None
    assert classifier.classifier.out_features == 3
    with pytest.raises(TaskError, match="no model class 'AutoNothing'"):
        load_huggingface_model(directory, auto_class="AutoNothing")


def test_huggingface_tokenizer_loads_from_a_local_directory(tiny_bert: tuple[Path, Any]) -> None:
    directory, _ = tiny_bert

    tokenizer = load_huggingface_tokenizer(directory)

    assert tokenizer("the models")["input_ids"] == [2, 5, 6, 9, 3]  # [CLS] the model ##s [SEP]


def test_huggingface_loader_names_a_missing_or_wrong_directory(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason='install the minilm extra: pip install -e ".[minilm]"')
    with pytest.raises(TaskError, match=r"does not exist.*local directories only"):
        load_huggingface_model(tmp_path / "nowhere")
    with pytest.raises(TaskError, match=r"no config\.json"):
        load_huggingface_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(TaskError, match="Could not load a tokenizer"):
        load_huggingface_tokenizer(tmp_path)


def test_without_transformers_the_loader_says_to_install_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)

    with pytest.raises(TaskError, match=r"transformers.*lepton-search\[minilm\]"):
        load_huggingface_model(tmp_path)


# ---------------------------------------------------------------------------------- weight files


def _net() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_state_dict", "dataparallel"])
def test_state_dict_files_load_in_common_layouts(tmp_path: Path, wrap: str) -> None:
    source = _net()
    state = source.state_dict()
    saved: Any = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model_state_dict": {"model_state_dict": state, "optimizer_step": 10},
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(saved, tmp_path / "weights.pt")

    target = load_weights_into(
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)), tmp_path / "weights.pt"
    )

    assert _same_weights(target, source)


def test_safetensors_files_load(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = _net()
    safetensors_torch.save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))

    assert load_state_dict_file(tmp_path / "weights.safetensors").keys() == source.state_dict().keys()


def test_pickled_models_and_other_objects_are_refused(tmp_path: Path) -> None:
    torch.save(_net(), tmp_path / "model.pt")  # the whole module, pickled: not read with weights_only
    torch.save({"lr": 0.1, "note": "not weights"}, tmp_path / "settings.pt")

    with pytest.raises(TaskError, match=r"weights_only=True.*state_dict\(\)"):
        load_state_dict_file(tmp_path / "model.pt")
    with pytest.raises(TaskError, match="does not hold a state dict"):
        load_state_dict_file(tmp_path / "settings.pt")
    with pytest.raises(TaskError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_weights_that_do_not_fit_name_the_mismatch(tmp_path: Path) -> None:
    torch.save(_net().state_dict(), tmp_path / "weights.pt")

    with pytest.raises(TaskError, match=r"(?s)do not fit Sequential.*size mismatch"):
        load_weights_into(
            torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)), tmp_path / "weights.pt"
        )


# -------------------------------------------------------------------------------------- torchvision


@needs_torchvision
def test_torchvision_model_loads_random_weights_from_a_local_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")

    model = load_torchvision_model("resnet18", tmp_path / "resnet18.pt", num_classes=10)

    assert not model.training and _same_weights(model, source)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x))
    with pytest.raises(TaskError, match="do not fit"):
        load_torchvision_model("resnet18", tmp_path / "resnet18.pt")  # 1000 classes: the head does not fit
    with pytest.raises(TaskError, match="no model 'resnet-nothing'"):
        load_torchvision_model("resnet-nothing")


def test_without_torchvision_the_loader_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)

    with pytest.raises(TaskError, match="torchvision could not be imported"):
        load_torchvision_model("resnet18")
