"""Shape surgery on the stock modules: one place that knows how Linear, Conv1D, Embedding and norms are laid out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def base_layer(module: nn.Module) -> nn.Module:
    """The stock layer inside a peft tuner layer (e.g. LoRA), or the module itself."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def linear_axes(module: nn.Module) -> tuple[int, int]:
    """(output axis, input axis) of a linear-like module's weight: Linear is [out, in], GPT-2's Conv1D is [in, out]."""
    module = base_layer(module)
    if isinstance(module, Conv1D):
        return 1, 0
    if isinstance(module, nn.Linear):
        return 0, 1
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}")


def in_features(module: nn.Module) -> int:
    return module.weight.shape[linear_axes(module)[1]]


def out_features(module: nn.Module) -> int:
    return module.weight.shape[linear_axes(module)[0]]


def _replace(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name)
    if value is None:
        module.register_parameter(name, None)
    else:
        requires_grad = old.requires_grad if old is not None else True
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=requires_grad))


def _sync_linear_attributes(module: nn.Module) -> None:
    if isinstance(module, Conv1D):
        module.nx, module.nf = module.weight.shape
    else:
        module.out_features, module.in_features = module.weight.shape


@torch.no_grad()
def slice_linear(
    module: nn.Module, out_index: torch.Tensor | None = None, in_index: torch.Tensor | None = None
) -> None:
    """Keep the given output and/or input features of a Linear or Conv1D in place."""
    out_axis, in_axis = linear_axes(module)
    weight = module.weight
    if out_index is not None:
        weight = weight.index_select(out_axis, out_index.to(weight.device))
        if module.bias is not None:
            _replace(module, "bias", module.bias.index_select(0, out_index.to(weight.device)))
    if in_index is not None:
        weight = weight.index_select(in_axis, in_index.to(weight.device))
    _replace(module, "weight", weight)
    _sync_linear_attributes(module)


@torch.no_grad()
def scale_linear(
    module: nn.Module, in_scale: torch.Tensor | None = None, out_scale: torch.Tensor | None = None
) -> None:
    """Fold gate values into a linear-like module: ``in_scale`` per input feature, ``out_scale`` on the whole output."""
    out_axis, in_axis = linear_axes(module)
    if in_scale is not None:
        shape = [1, 1]
        shape[in_axis] = -1
        module.weight.mul_(in_scale.to(module.weight).reshape(shape))
    if out_scale is not None:
        module.weight.mul_(out_scale.to(module.weight))
        if module.bias is not None:
            module.bias.mul_(out_scale.to(module.bias))


@torch.no_grad()
def drop_bias(module: nn.Module) -> None:
    module.register_parameter("bias", None)


@torch.no_grad()
def slice_embedding(embedding: nn.Embedding, dim_index: torch.Tensor) -> None:
    _replace(embedding, "weight", embedding.weight.index_select(1, dim_index.to(embedding.weight.device)))
    embedding.embedding_dim = embedding.weight.shape[1]


@torch.no_grad()
def slice_norm(norm: nn.Module, dim_index: torch.Tensor) -> None:
    """Keep the given dimensions of a LayerNorm or RMSNorm-like module (weight and optional bias)."""
    for name in ("weight", "bias"):
        param = getattr(norm, name, None)
        if isinstance(param, torch.Tensor):
            _replace(norm, name, param.index_select(0, dim_index.to(param.device)))
    if isinstance(norm, nn.LayerNorm):
        norm.normalized_shape = (len(dim_index),)


def unit_rows(blocks: Sequence[tuple[int, int]], units: torch.Tensor) -> torch.Tensor:
    """Feature indices owned by ``units`` in a projection laid out as ``blocks`` of (offset, width per unit)."""
    units = units.to(torch.long)
    pieces = []
    for offset, width in blocks:
        pieces.append((offset + units[:, None] * width + torch.arange(width)[None, :]).reshape(-1))
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)


def norm_on_subset(norm: nn.Module, x: torch.Tensor, dim_index: torch.Tensor) -> torch.Tensor:
    """Apply ``norm`` as if the model had only the dimensions ``dim_index`` (statistics over those alone)."""
    x_sub = x.index_select(-1, dim_index)
    if isinstance(norm, nn.LayerNorm):
        weight = norm.weight.index_select(0, dim_index) if norm.weight is not None else None
        bias = norm.bias.index_select(0, dim_index) if norm.bias is not None else None
        return nn.functional.layer_norm(x_sub, (len(dim_index),), weight, bias, norm.eps)
    # RMSNorm-like modules (Llama, Mistral, Qwen2, ...) normalise over the last axis of their input: running their own
    # forward with a sliced weight reproduces the compact model exactly without re-implementing it. ``forward`` is
    # called unbound on a view of the module so that the gate hooks on the module itself do not fire again.
    return type(norm).forward(_WithWeight(norm, norm.weight.index_select(0, dim_index)), x_sub)


class _WithWeight:
    """Attribute view of a module with its ``weight`` replaced."""

    def __init__(self, module: nn.Module, weight: torch.Tensor) -> None:
        self._module = module
        self.weight = weight

    def __getattr__(self, name: str):
        return getattr(self._module, name)
