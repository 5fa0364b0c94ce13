"""Loading a saved directory (native, remote-code or dense) without executing any code from it.

The config is read as JSON, compact shapes are rebuilt by hf-l0's own :mod:`hf_l0.pruning.structure`, and the weights
come from safetensors only, strictly: the checks and the mismatch report are :mod:`hf_l0.hub.checkpoint`'s, the same
ones the remote-code classes run (:mod:`hf_l0.hub.remote`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..arch.base import MODEL_TYPE_PREFIX, base_model_type
from ..pruning.structure import build_compact_model
from ..pruning.structure_format import STRUCTURE_KEY
from .checkpoint import _tied_groups, check_weights, checkpoint_files, read_safetensors_header
from .export import EXPORT_KEY
from .own_methods import bind_compact_methods
from .save import finish_before_loading


def _resolve_directory(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    if path.is_dir():
        return path
    if os.path.exists(path) or str(directory).count("/") != 1:
        raise FileNotFoundError(f"{directory} is not a directory (nor a Hub repo id 'owner/name').")
    from huggingface_hub import snapshot_download

    # Never the .py files: hf_l0 does not execute code from a model repository.
    return Path(
        snapshot_download(str(directory), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.md"])
    )


def load_config(directory: str | os.PathLike):
    """The stock transformers config of a saved directory (``hf_l0_<type>`` read as ``<type>``), from JSON only.

    Raises a ValueError naming ``config.json`` and the field for a config that is not a JSON object, an unknown
    model type, a compact model without structure, or values the config class refuses.
    """
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing.")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ValueError(f"{path}: not a transformers config (a JSON object with a model_type string).")
    export = data.get(EXPORT_KEY) or {}
    if not isinstance(export, dict):
        raise ValueError(f"{path}: {EXPORT_KEY} must be an object, got {type(export).__name__}.")
    base_type = base_model_type(data)
    if base_type not in CONFIG_MAPPING:
        raise ValueError(f"{path}: model_type {data.get('model_type')!r} is not a transformers model type.")
    if data["model_type"].startswith(MODEL_TYPE_PREFIX) and not data.get(STRUCTURE_KEY):
        raise ValueError(
            f"{path}: model_type {data['model_type']!r} but no {STRUCTURE_KEY}: the structure of this "
            "compact model is unknown."
        )
    if STRUCTURE_KEY in data and not isinstance(data[STRUCTURE_KEY], dict):
        raise ValueError(f"{path}: {STRUCTURE_KEY} must be an object, got {type(data[STRUCTURE_KEY]).__name__}.")
    for key in ("model_type", "auto_map", "transformers_version"):
        data.pop(key, None)
    if export.get("base_architectures"):
        data["architectures"] = export["base_architectures"]
    try:
        config = CONFIG_MAPPING[base_type].from_dict(data)
    except Exception as err:  # noqa: BLE001 - any refusal of the config class is a bad file, reported as such
        raise ValueError(
            f"{path}: the {CONFIG_MAPPING[base_type].__name__} refuses these values: {' '.join(str(err).split())}"
        ) from None
    config._name_or_path = str(directory)
    return config


def _family_class(config: Any, cls: Any) -> bool:
    """Whether ``cls`` is a transformers model class built from this config's family (its config_class)."""
    return (
        isinstance(cls, type)
        and issubclass(cls, transformers.PreTrainedModel)
        and getattr(cls, "config_class", None) is not None
        and getattr(cls.config_class, "model_type", None) == getattr(config, "model_type", None)
    )


def _model_class(config: Any, model_class: type | None, where: str = "config.json") -> type:
    if model_class is not None:
        mapping = getattr(model_class, "_model_mapping", None)
        if mapping is not None:  # an Auto class
            try:
                cls = mapping[type(config)]
            except KeyError:
                raise ValueError(f"{model_class.__name__} has no model class for {type(config).__name__}.") from None
            return cls[0] if isinstance(cls, (tuple, list)) else cls
        return model_class
    architectures = getattr(config, "architectures", None) or []
    if not isinstance(architectures, list) or not all(isinstance(name, str) for name in architectures):
        raise ValueError(f"{where}: architectures={architectures!r} must be a list of class names.")
    for name in architectures:
        cls = getattr(transformers, name, None) if name.isidentifier() else None
        # Only a model class of the config's own family: a name such as "Trainer" must never be instantiated.
        if not _family_class(config, cls):
            raise ValueError(
                f"{where}: architectures names {name!r}, which is not a transformers model class of "
                f"the {config.model_type!r} family (its config_class must be {type(config).__name__}); "
                "fix architectures or pass model_class=."
            )
        return cls
    raise ValueError(f"{where}: architectures={architectures} names no transformers class; pass model_class=.")


def tied_groups(model: nn.Module) -> list[set[str]]:
    """Sets of parameter names that share one tensor (saved once, under any of the names)."""
    return _tied_groups(model)


def load_weights_strictly(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load a directory's safetensors weights into ``model``; any missing, unexpected or mis-shaped tensor, a tensor
    of another dtype than ``config.json`` declares, a truncated file, a shard outside the directory or an index that
    disagrees with its shards raises a ValueError naming the file and tensor
    (:func:`hf_l0.hub.checkpoint.check_weights`)."""
    directory = Path(directory)
    found = check_weights(model, str(directory))
    state = {}
    by_file: dict[str, list[tuple[str, str]]] = {}
    for key, (path, name) in found.items():
        by_file.setdefault(path, []).append((key, name))
    for path, pairs in by_file.items():
        with safe_open(path, framework="pt") as f:
            for key, name in pairs:
                state[key] = f.get_tensor(name)
    model.load_state_dict(state, strict=False)
    return model


# Integer sizes a config may carry, checked before any model is built (a hostile value must not allocate memory).
_LAYER_KEYS = ("num_hidden_layers", "n_layer")
_SIZE_KEYS = (
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "hidden_size",
    "n_embd",
    "intermediate_size",
    "n_inner",
    "vocab_size",
    "head_dim",
    "embedding_size",
)


def _check_config_sizes(config: Any, files: dict[str, list[str]], where: Path) -> None:
    """Each size must be a positive int; a layer count cannot exceed the checkpoint's tensor count, a width its
    element count (a config that claims more describes another model, and building it could exhaust memory)."""
    headers = [read_safetensors_header(path) for path in files]
    tensors = sum(len(names) for names in files.values())
    elements = sum(
        math.prod(info["shape"]) for header in headers for name, info in header.items() if name != "__metadata__"
    )
    for key in (*_LAYER_KEYS, *_SIZE_KEYS):
        value = getattr(config, key, None)
        if value is None:
            continue
        limit = tensors if key in _LAYER_KEYS else elements
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            raise ValueError(
                f"{where}: {key}={value!r} must be a positive int of at most {limit} (the "
                f"{'tensor' if key in _LAYER_KEYS else 'element'} count of the saved weights)."
            )


def _build(cls: type, config: Any, compact_shapes: bool, where: Path) -> nn.Module:
    try:
        return build_compact_model(cls, config) if compact_shapes else cls(config)
    except Exception as err:  # noqa: BLE001 - a config that cannot build its model is a bad file, reported as such
        raise ValueError(
            f"{where}: {cls.__name__} cannot be built from these values: {' '.join(str(err).split())}"
        ) from None


def from_pretrained(
    directory: str | os.PathLike, model_class: type | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (native, remote-code or dense) without executing any code from
    the directory: the config is read as JSON, compact shapes are rebuilt by :mod:`hf_l0.pruning.structure` (part of
    hf-l0), weights come from safetensors only and load strictly (see :func:`load_weights_strictly`).

    The model is first built on the meta device and checked against the weights' headers (names, shapes, dtypes),
    so a hostile config (huge sizes, wrong layer lists) fails before any memory is allocated. ``architectures`` may
    only name model classes of the config's family.

    ``model_class`` may be a transformers model class or an Auto class (e.g. ``AutoModel`` for the base model of a
    task checkpoint); by default the saved architecture. ``dtype`` casts the loaded model (the file's dtype must
    still be the one config.json declares). ``directory`` may also be a Hub repo id (no .py file is downloaded).
    A save into ``directory`` that a crash interrupted after it committed is finished first
    (:func:`hf_l0.hub.finish_interrupted_save`).
    """
    directory = _resolve_directory(directory)
    finish_before_loading(directory)  # a save a crash interrupted after it committed: finish it first
    files = checkpoint_files(str(directory))  # safetensors present, complete, inside the directory
    config = load_config(directory)
    config_file = directory / "config.json"
    cls = _model_class(config, model_class, str(config_file))
    _check_config_sizes(config, files, config_file)
    export = getattr(config, EXPORT_KEY, None) or {}
    compact_shapes = bool(getattr(config, STRUCTURE_KEY, None)) and not export.get("native", False)
    with torch.device("meta"):
        skeleton = _build(cls, copy.deepcopy(config), compact_shapes, config_file)
    check_weights(skeleton, str(directory), files)
    del skeleton
    model = _build(cls, config, compact_shapes, config_file)
    saved_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    dtype = dtype or (getattr(torch, saved_dtype) if isinstance(saved_dtype, str) else saved_dtype)
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    load_weights_strictly(model, directory)
    if getattr(config, STRUCTURE_KEY, None):
        bind_compact_methods(model)  # its own save_pretrained / push_to_hub write this format again
    if (directory / "generation_config.json").is_file() and getattr(model, "can_generate", lambda: False)():
        model.generation_config = transformers.GenerationConfig.from_pretrained(directory)
    return model.eval()
