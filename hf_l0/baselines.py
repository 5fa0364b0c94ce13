"""A structured magnitude-pruning baseline, built on the same gates and surgery as L0 pruning."""

from __future__ import annotations

import math

import torch
from torch import nn

from .arch import Sublayer, get_adapter
from .config import L0Config
from .patch import get_gates, patch_model, transformers_model
from .prune import prune_model
from .slicing import base_layer, linear_axes, unit_rows


def unit_weight_norms(sublayer: Sublayer) -> torch.Tensor:
    """L2 norm of all weights owned by each unit (its rows in the input projections and columns of the output)."""
    squares = torch.zeros(sublayer.num_units)
    for projection in sublayer.inputs:
        weight = base_layer(projection.module).weight.detach()
        out_axis = linear_axes(projection.module)[0]
        for unit in range(sublayer.num_units):
            rows = unit_rows(projection.blocks, torch.tensor([unit]))
            squares[unit] += weight.index_select(out_axis, rows).pow(2).sum().item()
    weight = base_layer(sublayer.output).weight.detach()
    in_axis = linear_axes(sublayer.output)[1]
    per_feature = weight.pow(2).sum(dim=1 - in_axis)
    squares += per_feature.reshape(sublayer.num_units, sublayer.unit_width).sum(-1).cpu()
    return squares.sqrt()


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Remove the fraction ``sparsity`` of attention heads (KV groups on GQA models) and of FFN neurons with the
    smallest weight norm, ranked globally across layers, and return the compact model (see :func:`prune_model`).

    Every head of a model has the same parameter count, and so does every neuron, so removing the same fraction of
    each removes that fraction of the attention + FFN parameters (up to rounding and biases).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must lie in [0, 1).")
    patch_model(model, L0Config(heads=True, ffn=True, layers=False, hidden=False))
    adapter = get_adapter(transformers_model(model))
    gates = get_gates(model)
    for gate, sublayer_of in ((gates.heads, adapter.attention), (gates.ffn, adapter.ffn)):
        scores = torch.stack([unit_weight_norms(sublayer_of(i)) for i in range(adapter.num_layers)])
        keep = torch.zeros(scores.numel(), dtype=torch.bool)
        keep[scores.flatten().topk(scores.numel() - math.floor(sparsity * scores.numel())).indices] = True
        # Closed gates at -20 and open ones at +20: the deterministic rule then keeps exactly the open ones, at 1.
        gate.log_alpha.copy_(torch.where(keep, 20.0, -20.0).reshape(gate.log_alpha.shape))
    return prune_model(model)
