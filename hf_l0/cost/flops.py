"""Forward FLOPs of a gated model, expected (differentiable) and deterministic, and the cost targets built on them.

Users prune to make a model faster; the parameter fraction maps to speed unevenly (attention scores cost per token
in proportion to the sequence length, embeddings and heads are a fixed cost). This module counts the multiply-adds
(x2) of one forward pass per token at a sequence length ``L``, as :func:`hf_l0.cost.measure.forward_flops` does for any
model: every Linear / Conv1D applied to every token plus the attention scores and weighted sums.

Per sublayer, with the gates independent (as in :mod:`hf_l0.cost.size`)::

    E[flops] = P(layer) * E[units] * (2 * W_u * E[d] + 4 * L * S_u)

with ``W_u`` the weight entries per unit and hidden dimension (input rows + output columns), ``S_u`` the query
width per unit (the head dimension; a KV group's query heads x head dimension on GQA models; 0 for FFN neurons) and
``E[d]`` the expected number of hidden dimensions. Outside the sublayers, every other Linear counts its weights
(twice), and the heads reading the residual stream (pooler, classifier, ``lm_head``) shrink with the hidden
dimensions. With P replaced by ``1[z != 0]`` of the deterministic gates the count equals
:func:`compact_flops` of the model :func:`hf_l0.prune_model` returns.

:class:`FlopsTarget` turns the count into a reduction that the controller drives (:mod:`hf_l0.cost.base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..arch import get_adapter
from ..gates.patch import get_gates, transformers_model
from ..pruning.slicing import base_layer, out_features
from .base import SUBLAYER_GATES, CostTarget
from .size import unit_probabilities


@dataclass
class FlopsReport:
    """Forward FLOPs per token (float64 tensors; differentiable when expected)."""

    attention: torch.Tensor  # projections + attention scores and weighted sums
    ffn: torch.Tensor
    fixed: torch.Tensor  # every other Linear: pooler, classifier, lm_head (those reading the residual stream shrink)

    @property
    def total(self) -> torch.Tensor:
        return self.attention + self.ffn + self.fixed


def _linear_modules(model: nn.Module) -> list[nn.Module]:
    """Every Linear / Conv1D the forward pass applies (peft's LoRA factors excluded: merging removes them)."""
    return [m for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and ".lora_" not in f".{name}"]


_LAYOUT_ATTR = "_flops_layout"


def _layout(model: nn.Module) -> dict[str, Any]:
    """Per-layer unit counts, weights per unit and query width per unit, and the Linears outside the sublayers.

    Read once from the dense model the gates were attached to and kept on the gates module (as in :mod:`size`).
    """
    gates = get_gates(model)
    layout = gates.__dict__.get(_LAYOUT_ATTR)
    if layout is not None:
        return layout
    target = transformers_model(model)
    adapter = get_adapter(target)
    sublayer_ids: set[int] = set()
    layout = {"hidden_size": adapter.hidden_size}
    for kind, _, _ in SUBLAYER_GATES:
        rows = []
        for i in range(adapter.num_layers):
            sublayer = getattr(adapter, kind)(i)
            sublayer_ids.update(id(base_layer(p.module)) for p in sublayer.inputs)
            sublayer_ids.add(id(base_layer(sublayer.output)))
            rows.append(
                [sublayer.num_units, sublayer.weights_per_unit(), sublayer.unit_width if kind == "attention" else 0]
            )
        layout[kind] = [list(column) for column in zip(*rows)]
    consumers = adapter.residual_stream().consumers
    consumer_ids = {id(base_layer(c)) for c in consumers}
    layout["consumers_per_dim"] = sum(out_features(c) for c in consumers)
    layout["other_weights"] = sum(
        m.weight.numel() for m in _linear_modules(target) if id(m) not in sublayer_ids and id(m) not in consumer_ids
    )
    gates.__dict__[_LAYOUT_ATTR] = layout
    return layout


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive int (the sequence length the FLOPs are counted at).")


def _flops(model: nn.Module, seq_len: int, mode: str) -> FlopsReport:
    _check_seq_len(seq_len)
    layout = _layout(model)
    probs = unit_probabilities(model, mode)
    device = next(iter(get_gates(model).gates.values())).log_alpha.device
    one = torch.ones((), dtype=torch.float64, device=device)
    hidden = probs["hidden"].sum() if "hidden" in probs else one * layout["hidden_size"]
    totals = {}
    for kind, unit_gate, layer_gate in SUBLAYER_GATES:
        num_units, weights, score_width = torch.tensor(layout[kind], dtype=torch.float64, device=device)
        units = probs[unit_gate].sum(-1) if unit_gate in probs else num_units
        flops = units * (2.0 * weights * hidden + 4.0 * seq_len * score_width)
        if layer_gate in probs:
            flops = flops * probs[layer_gate]
        totals[kind] = flops.sum()
    fixed = 2.0 * (layout["other_weights"] + layout["consumers_per_dim"] * hidden)
    return FlopsReport(totals["attention"], totals["ffn"], fixed * one)


def expected_flops(model: nn.Module, seq_len: int) -> FlopsReport:
    """Expected forward FLOPs per token at ``seq_len`` under the hard concrete distributions (differentiable)."""
    return _flops(model, seq_len, "expected")


def deterministic_flops(model: nn.Module, seq_len: int) -> FlopsReport:
    """Forward FLOPs per token under the eval-mode gates: those of the model :func:`hf_l0.prune_model` returns."""
    return _flops(model, seq_len, "deterministic")


def full_flops(model: nn.Module, seq_len: int) -> FlopsReport:
    """Forward FLOPs per token of the dense model (every gate open)."""
    return _flops(model, seq_len, "full")


def compact_flops(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token at ``seq_len`` of an ungated (dense or pruned) model, from its modules' shapes.

    Counts what :func:`hf_l0.cost.measure.forward_flops` counts (every Linear applied to every token, attention scores
    and weighted sums), per token; sublayers that pruning removed whole cost nothing.
    """
    _check_seq_len(seq_len)
    target = transformers_model(model)
    adapter = get_adapter(target)
    query_width = 0
    for i in range(adapter.num_layers):
        attention = adapter.attention(i)
        if attention is not None:
            query_width += attention.num_units * attention.unit_width
    weights = sum(m.weight.numel() for m in _linear_modules(target))
    return float(2 * weights + 4 * seq_len * query_width)


def flops_reduction(model: nn.Module, seq_len: int, deterministic: bool = False) -> torch.Tensor:
    """``1 - FLOPs / dense FLOPs`` of the whole forward pass (differentiable unless ``deterministic``)."""
    flops = deterministic_flops(model, seq_len) if deterministic else expected_flops(model, seq_len)
    return 1.0 - flops.total / full_flops(model, seq_len).total


class FlopsTarget(CostTarget):
    """Forward FLOPs per token at ``seq_len`` (logged in GFLOPs per token)."""

    name = "flops"
    unit = "GFLOPs / token"
    scale = 1e-9
    fixed_description = "the FLOPs outside attention and FFN (pooler, classifier, lm_head)"

    def __init__(self, seq_len: int) -> None:
        _check_seq_len(seq_len)
        self.seq_len = seq_len

    def cost(self, model: nn.Module, mode: str) -> torch.Tensor:
        return _flops(model, self.seq_len, mode).total

    def fixed_cost(self, model: nn.Module) -> float:
        return float(_flops(model, self.seq_len, "minimum").fixed)  # heads shrink only with hidden gates

    def config_dict(self) -> dict[str, Any]:
        return {"metric": self.name, "seq_len": self.seq_len}
