"""Pruned and distilled students, built once and shared by every trial and study that needs them.

Pruning and distillation are the expensive steps of a trial (minutes for a transformer), and
many trials share them: those that differ only in quantization, graph settings or deployment
start from the same student. A student is stored under ``<cache_dir>/students/`` by a content key
(:func:`student_key`: the task's fingerprint, the pruning and distillation sections of the
config, the seed, and the precision distillation trained in), as safetensors weights plus a JSON
description of its structure; nothing is unpickled when it is loaded.

Writes are atomic (temporary files, then renames; the weights land before the description that
marks the entry complete), and a file lock per key makes two concurrent trials that need the same
student build it once: the second waits and loads what the first wrote.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search._atomic import atomic_path, write_json_atomically
from lepton_search.errors import CompressionError
from lepton_search.objectives._distill import training_precision
from lepton_search.objectives._prune import KEPT_BLOCKS_ATTR, _without, kept_blocks
from lepton_search.objectives._targets import file_lock
from lepton_search.spaces import CompressionConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task

STUDENT_FORMAT_VERSION = 1


@dataclass
class StudentInfo:
    """How a trial got its student: built now (``cache = "miss"``), loaded (``"hit"``), or the
    teacher itself (``"none"``: nothing was pruned or trained)."""

    cache: str
    key: str | None = None
    build_s: float = 0.0
    training_precision: str = "fp32"
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def student_key(task: Task, config: CompressionConfig, seed: int) -> str:
    """The cache key of ``config``'s student: what decides its weights, and nothing else."""
    recipe = {
        "v": STUDENT_FORMAT_VERSION,
        "task": task.name,
        "fingerprint": task.fingerprint(),
        "pruning": _section(config.pruning),
        "distillation": _section(config.distillation),
        "seed": seed,
        "precision": training_precision(config.distillation),
    }
    if config.distillation.quantization_aware:
        # The rounding it was trained through (objectives/_fake_quant.py).
        q = config.quantization
        recipe["simulated_int8"] = {"per_channel": q.per_channel, "reduce_range": bool(q.reduce_range)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]


def _section(section: Any) -> dict[str, Any]:
    return {k: v for k, v in asdict(section).items() if v is not None}


class StudentCache:
    """Students stored under ``<cache_dir>/students/<key>.safetensors`` and ``<key>.json``."""

    def __init__(self, cache_dir: Path) -> None:
        self.directory = Path(cache_dir) / "students"

    def lock(self, key: str) -> Any:
        """Held while a student is looked up and, on a miss, built."""
        return file_lock(self.directory / f"{key}.lock")

    def load(self, key: str, teacher: torch.nn.Module, task: Task) -> tuple[torch.nn.Module, dict[str, Any]] | None:
        """The stored student ``key`` rebuilt on a copy of ``teacher``, with its description; None
        when absent or unreadable (it is then built again)."""
        from safetensors.torch import load_file

        description_path = self.directory / f"{key}.json"
        try:
            description = json.loads(description_path.read_text())
            state = load_file(str(self.directory / f"{key}.safetensors"))
        except (OSError, ValueError):
            return None
        if description.get("version") != STUDENT_FORMAT_VERSION:
            return None
        student = copy.deepcopy(teacher)
        renamed = description.get("kept_blocks") or {}
        if renamed:
            teacher_blocks = [name for name, _ in task.depth_blocks(student)]
            _without(student, [name for name in teacher_blocks if name not in set(renamed.values())])
            setattr(student, KEPT_BLOCKS_ATTR, dict(renamed))
        try:
            resize_to(student, state)
            student.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CompressionError(
                f"The cached student {key} under {self.directory} does not fit this task's model ({e}); delete "
                "that student's files to rebuild it."
            ) from e
        task.after_pruning(student)
        return student.eval(), description

    def save(self, key: str, student: torch.nn.Module, description: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().clone() for name, tensor in student.state_dict().items()}
        with atomic_path(self.directory / f"{key}.safetensors") as staged:
            save_file(state, str(staged))
        payload = {"version": STUDENT_FORMAT_VERSION, "kept_blocks": kept_blocks(student), **description}
        write_json_atomically(self.directory / f"{key}.json", payload, indent=2, sort_keys=True)


def resize_to(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Gives every parameter and buffer of ``model`` the shape it has in ``state`` (a pruned
    model's state dict), and updates the size attributes of the layers whose weights changed, so
    that ``load_state_dict`` can fill them."""
    import torch

    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        changed = False
        for name, param in list(module.named_parameters(recurse=False)):
            stored = state.get(prefix + name)
            if stored is not None and stored.shape != param.shape:
                setattr(module, name, torch.nn.Parameter(torch.empty_like(stored), requires_grad=param.requires_grad))
                changed = True
        for name, buffer in list(module.named_buffers(recurse=False)):
            stored = state.get(prefix + name)
            if stored is not None and buffer is not None and stored.shape != buffer.shape:
                module.register_buffer(name, torch.empty_like(stored))
                changed = True
        if changed:
            _update_size_attributes(module)


def _update_size_attributes(module: torch.nn.Module) -> None:
    import torch

    if isinstance(module, torch.nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, torch.nn.modules.conv._ConvNd):
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        module.num_features = module.weight.shape[0] if module.weight is not None else module.running_mean.shape[0]
    elif isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, torch.nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
