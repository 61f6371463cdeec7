"""Bring your own task: a small residual network on scikit-learn's 8x8 digits.

This file is a complete lepton-search task written the way a user would write one, outside the
package. Name it in a study file as ``task = "resnet_task:make_task"`` with this folder on
``PYTHONPATH`` (see ``examples/README.md``), or install it and register ``make_task`` under the
``lepton_search.tasks`` entry-point group.

A task is a subclass of :class:`lepton_search.objectives.tasks.Task`. This one reuses the digits
data, split and accuracy metric of
:class:`~lepton_search.objectives.tasks.digits.DigitsClassificationTask` (``example_inputs``,
``train_batches`` and ``evaluate``) and gives its own model. A task provides:

``teacher(cache_dir)``
    The trained, uncompressed ``torch.nn.Module`` in eval mode. Train it on first use and cache it
    under ``cache_dir`` keyed by :meth:`fingerprint`; several worker processes may call this at
    once, so write the cache atomically (temporary file, then ``os.replace``). Load weights with
    ``torch.load(weights_only=True)`` (:func:`~lepton_search.objectives.tasks.loaders.load_weights_into`
    does that), never by unpickling arbitrary objects.
``example_inputs(batch_size)``
    A batch of real inputs (numpy): used to export the model to ONNX and to measure latency, so
    choose the batch size in the study's ``[measurement]``, not here. A model with several inputs
    returns a dict of arrays keyed by its ``forward``'s argument names.
``train_batches(batch_size, seed=...)``
    One shuffled pass over labelled training data, as ``(inputs, labels)``; distillation and static
    int8 calibration read it.
``evaluate(predict, split)``
    The task metric (maximised unless ``metric_direction = "minimize"``) of ``predict``, a numpy-in,
    numpy-out function, on ``"validation"`` (the objective) or ``"test"`` (recorded beside it). The
    same code scores the torch teacher and every compressed ONNX model.

and optionally ``fingerprint()`` (what identifies the data and teacher recipe; part of every cache
key), ``prunable_ignored_layers(model)`` (layers channel pruning keeps whole; by default the last
``Linear``, so the class count stays 10), ``attention_heads(model)`` and ``after_pruning(model)`` (for
transformers), ``depth_blocks(model)`` (blocks depth pruning may drop: here the residual blocks with
an identity shortcut), ``hidden_layers(model)`` (outputs matched by hidden-state distillation; by
default the depth blocks, here every residual block), ``calibration_inputs(...)``,
``before_trial(config)``, and the class attributes ``output_kind`` (``"logits"`` or ``"embedding"``,
which picks the distillation loss) and ``train_batch_size``.

Residual connections need nothing special: torch-pruning traces the graph, sees that a block's
output and its shortcut are added, and removes the same channels from both (and from every layer
that reads them), so the pruned network still adds tensors of equal shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lepton_search.errors import ConfigError
from lepton_search.objectives.tasks.digits import DigitsClassificationTask
from lepton_search.objectives.tasks.loaders import load_weights_into

RECIPE_VERSION = 1


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to a shortcut (identity, or a strided 1x1
    convolution where the shape changes), then ReLU: the block of ResNet-18/34."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetDigits(nn.Module):
    """A stem, two stages of two residual blocks (the second halves the 8x8 resolution and doubles
    the width), global average pooling and a linear classifier."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.stage2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2), BasicBlock(2 * width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNetDigitsTask(DigitsClassificationTask):
    """Classify scikit-learn's 8x8 digits with :class:`ResNetDigits`; the metric is accuracy.

    The data ships with scikit-learn (1,797 images), split 60/20/20 with a fixed seed. The teacher
    is trained on first use (a few seconds on one core) and cached.

    Args:
        width: Channels of the first stage (the second has twice as many).
        epochs: Teacher training epochs.
        seed: Seed of the teacher's initialisation and data order.
    """

    name = "resnet-digits"

    def __init__(self, *, width: int = 32, epochs: int = 10, seed: int = 0) -> None:
        if not isinstance(width, int) or width < 4:
            raise ConfigError(f"resnet-digits width = {width!r} must be an integer >= 4.")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"resnet-digits epochs = {epochs!r} must be an integer >= 1.")
        self.width = width
        self.epochs = epochs
        self.seed = seed

    def fingerprint(self) -> str:
        recipe = {"task": self.name, "v": RECIPE_VERSION, "width": self.width, "epochs": self.epochs, "seed": self.seed}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def depth_blocks(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The residual blocks with an identity shortcut: their input and output shapes match, so
        the network still runs without them (the first block of stage 2 halves the resolution and
        doubles the width, so it stays). Depth pruning drops the least important of these."""
        return [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, BasicBlock) and isinstance(module.shortcut, nn.Identity)
        ]

    def hidden_layers(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """Every residual block's output, for hidden-state distillation: the depth blocks and the
        first block of stage 2, which depth pruning never drops, so a student always has one."""
        return [(name, module) for name, module in model.named_modules() if isinstance(module, BasicBlock)]

    def teacher(self, cache_dir: Path) -> torch.nn.Module:
        path = Path(cache_dir) / "teachers" / f"{self.name}-{self.fingerprint()}.pt"
        model = ResNetDigits(self.width)
        if path.exists():
            return load_weights_into(model, path).eval()
        torch.manual_seed(self.seed)
        model = ResNetDigits(self.width)
        self._train(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: another worker never reads half a file
        return model.eval()

    def _train(self, model: nn.Module) -> None:
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
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


def make_task(**options: Any) -> ResNetDigitsTask:
    """The factory a study file names (``task = "resnet_task:make_task"``); ``[study.task_options]``
    arrive as keyword arguments."""
    return ResNetDigitsTask(**options)
