"""A tiny BERT sentence encoder with random weights, saved as a local model directory, for tests of
the ``minilm`` task's code paths that need no real weights (two layers, four heads of eight, 64
feed-forward neurons; a WordPiece vocabulary of the reference passages' most common words)."""

from __future__ import annotations

import collections
import re
from pathlib import Path

#: ``minilm`` task options that fit the tiny encoder (its position embeddings hold 64 tokens).
TINY_OPTIONS = {"sequence_length": 32, "train_passages": 32, "eval_passages": 32}


def save_tiny_bert(directory: Path) -> Path:
    """Writes the tiny encoder's ``save_pretrained`` files and vocabulary into ``directory``."""
    import torch
    import transformers

    from lepton_search.objectives.tasks.minilm import passages

    words = collections.Counter(w for p in passages() for w in re.findall(r"[a-z]+", p.lower()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    vocab += [w for w, _ in words.most_common(400) if w not in vocab]
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,  # large enough that every head and neuron moves the embedding
    )
    directory = Path(directory)
    transformers.BertModel(config).save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    return directory
