"""Saving and loading compact (pruned) models in Hub format: config.json + safetensors (+ tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig

from .prune import STRUCTURE_KEY, build_compact_model


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, tokenizer: Any = None, **kwargs) -> Path:
    """Save a compact model (config with ``l0_structure`` + safetensors weights) and optionally its tokenizer."""
    save_directory = Path(save_directory)
    model.save_pretrained(save_directory, safe_serialization=True, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
    return save_directory


def _model_class(config: Any, model_class: type | None) -> type:
    if model_class is not None:
        return model_class
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ValueError(f"config.architectures={architectures} names no transformers class; pass model_class=.")


def from_pretrained(directory: str | os.PathLike, model_class: type | None = None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` without executing any code from the directory.

    Compact models are rebuilt from ``config.l0_structure``; dense ones go through the stock ``from_pretrained``.
    Weights are read from safetensors only, strictly: a missing, unexpected or mis-shaped tensor is an error.
    """
    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    cls = _model_class(config, model_class)
    if not getattr(config, STRUCTURE_KEY, None):
        return cls.from_pretrained(directory)
    model = build_compact_model(cls, config)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: compact models load from safetensors weights only.")
    state = load_file(weights)
    expected = model.state_dict()
    wrong_shape = [f"{k}: file {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
                   for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k in expected
                                                 and v.shape == expected[k].shape}, strict=False)
    missing = sorted(set(missing) - _tied_names(model))
    if wrong_shape or missing or unexpected:
        raise ValueError(f"{weights} does not match the structure in {directory / 'config.json'}: "
                         f"missing tensors {missing}, unexpected tensors {sorted(unexpected)}, "
                         f"mismatched shapes {wrong_shape}.")
    return model.eval()


def _tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that share their tensor with an earlier parameter (saved once, under the first name)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.setdefault(id(param), name)
    return tied
