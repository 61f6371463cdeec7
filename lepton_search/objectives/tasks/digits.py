"""The built-in ``digits-cnn`` task: a small CNN on scikit-learn's bundled 8x8 digits.

The data (1,797 images) ships inside scikit-learn, so nothing is downloaded. The split is fixed
(60% train, 20% validation, 20% test, stratified, seed 0). The teacher is trained on first use and
cached under ``<cache_dir>/teachers/`` keyed by the hash of its recipe (architecture, data split,
training settings); the file also records the sha256 of the weights it holds.

The CNN is wide (64 then 128 channels) and measured at batch 64 so that compression changes latency
measurably: at batch 1 an 8x8 model takes microseconds and session overhead would dominate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lepton_search._atomic import atomic_path, write_json_atomically
from lepton_search.errors import ConfigError
from lepton_search.objectives.tasks._base import PredictFn, Split, Task

if TYPE_CHECKING:
    import torch

_RECIPE_VERSION = 1


def build_digits_cnn(width: int = 64) -> torch.nn.Module:
    """The teacher architecture: three 3x3 convolutions with batch norm, then a linear head."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 10),
    )


class DigitsClassificationTask(Task):
    """The data and metric of every digits task: scikit-learn's 1,797 8x8 images as ``(n, 1, 8, 8)``
    float32 in [0, 1], split 60/20/20 (stratified, seed 0), scored by accuracy.

    A subclass gives the model: :meth:`teacher` and :meth:`fingerprint` (``examples/resnet_task.py``
    is one written outside the package).
    """

    @cached_property
    def _splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        y = y.astype(np.int64)
        x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
        x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest)
        return {"train": (x_train, y_train), "validation": (x_val, y_val), "test": (x_test, y_test)}

    def example_inputs(self, batch_size: int) -> np.ndarray:
        x = self._splits["validation"][0]
        reps = -(-batch_size // len(x))
        return np.ascontiguousarray(np.concatenate([x] * reps)[:batch_size])

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        x, y = self._splits["train"]
        order = np.random.default_rng(seed).permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    def evaluate(self, predict: PredictFn, split: Split = "validation") -> float:
        x, y = self._splits[split]
        correct = 0
        for start in range(0, len(x), 256):
            logits = np.asarray(predict(x[start : start + 256]))
            correct += int((logits.argmax(axis=1) == y[start : start + 256]).sum())
        return correct / len(x)

    def accuracy_resolution(self) -> float:
        return 1.0 / len(self._splits["validation"][0])


class DigitsCNNTask(DigitsClassificationTask):
    """Classify scikit-learn's 8x8 digits with a small CNN; the metric is accuracy.

    Args:
        width: Channels of the first convolution (the later ones have twice as many).
        epochs: Teacher training epochs.
        seed: Seed of the teacher's initialisation and of its data order.
    """

    name = "digits-cnn"

    def __init__(self, *, width: int = 64, epochs: int = 12, seed: int = 0) -> None:
        if width < 4:
            raise ConfigError(f"digits-cnn width = {width!r} is too small; use 4 or more.")
        if epochs < 1:
            raise ConfigError(f"digits-cnn epochs = {epochs!r} must be >= 1.")
        self.width = width
        self.epochs = epochs
        self.seed = seed

    def fingerprint(self) -> str:
        recipe = {
            "task": self.name,
            "v": _RECIPE_VERSION,
            "width": self.width,
            "epochs": self.epochs,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def hidden_layers(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The output of each convolution's ReLU (three feature maps), for hidden-state
        distillation. The CNN has no residual blocks, so it names no depth blocks."""
        from torch import nn

        return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]

    def teacher(self, cache_dir: Path) -> torch.nn.Module:
        import torch

        path = Path(cache_dir) / "teachers" / f"{self.name}-{self.fingerprint()}.pt"
        if path.exists():
            model = build_digits_cnn(self.width)
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        # The initialisation is part of the recipe the fingerprint names: seed it, so that every
        # process (and every re-training) that misses the cache builds the same teacher.
        torch.manual_seed(self.seed)
        model = build_digits_cnn(self.width)
        self._train(model)
        # Two processes may train at once, and a reader must never see half a file.
        with atomic_path(path) as staged:
            torch.save(model.state_dict(), staged)
            digest = hashlib.sha256(staged.read_bytes()).hexdigest()
        write_json_atomically(
            path.with_suffix(".json"), {"recipe": self.fingerprint(), "weights_sha256": digest}, indent=2
        )
        return model.eval()

    def _train(self, model: torch.nn.Module) -> None:
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        model.train()
        for epoch in range(self.epochs):
            for inputs, labels in self.train_batches(64, seed=self.seed * 1000 + epoch):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(torch.from_numpy(inputs)), torch.from_numpy(labels))
                loss.backward()
                optimizer.step()
            scheduler.step()
        model.eval()
