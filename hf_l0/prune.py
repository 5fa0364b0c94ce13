"""Physical pruning: turn a gated model into a compact model of the same transformers class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .arch import ArchAdapter, Sublayer, get_adapter
from .compact import apply_structure
from .patch import get_gates, transformers_model, unpatch_model
from .slicing import scale_linear, slice_embedding, slice_linear, slice_norm, unit_rows

STRUCTURE_KEY = "l0_structure"


@dataclass
class SublayerPlan:
    units: torch.Tensor  # indices of the surviving units (heads / KV groups / neurons), sorted
    keep_bias: bool  # whether the output bias survives (the layer gate is open)


@dataclass
class PruningPlan:
    hidden: torch.Tensor | None  # surviving hidden dimensions, or None to keep all
    attention: list[SublayerPlan] = field(default_factory=list)
    ffn: list[SublayerPlan] = field(default_factory=list)


def _shrink_sublayer(adapter: ArchAdapter, sublayer: Sublayer, plan: SublayerPlan, hidden: torch.Tensor | None):
    for projection in sublayer.inputs:
        slice_linear(projection.module, out_index=unit_rows(projection.blocks, plan.units), in_index=hidden)
    slice_linear(sublayer.output, out_index=hidden, in_index=unit_rows(((0, sublayer.unit_width),), plan.units))
    is_attention = sublayer.kind == "attention"
    if len(plan.units) == 0:
        remove = adapter.remove_attention if is_attention else adapter.remove_ffn
        remove(sublayer.layer_idx, plan.keep_bias)
    elif is_attention:
        adapter.set_attention_units(sublayer.layer_idx, len(plan.units))


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Slice every module of ``model`` (a stock, unpatched model) to the shapes of ``plan``, in place."""
    adapter = get_adapter(model)
    hidden = plan.hidden
    stream = adapter.residual_stream()  # collected before surgery: tied heads are found by weight identity
    tied = {id(c): e for c in stream.consumers for e in stream.embeddings if c.weight is e.weight}
    for i in range(adapter.num_layers):
        _shrink_sublayer(adapter, adapter.attention(i), plan.attention[i], hidden)
        _shrink_sublayer(adapter, adapter.ffn(i), plan.ffn[i], hidden)
    if hidden is not None:
        for embedding in stream.embeddings:
            slice_embedding(embedding, hidden)
        for norm in stream.norms:
            slice_norm(norm, hidden)
        for consumer in stream.consumers:
            if id(consumer) in tied:
                consumer.weight = tied[id(consumer)].weight
                consumer.in_features = consumer.weight.shape[1]
            else:
                slice_linear(consumer, in_index=hidden)
    setattr(model.config, STRUCTURE_KEY, structure_of(adapter, plan))
    return model


def structure_of(adapter: ArchAdapter, plan: PruningPlan) -> dict[str, Any]:
    """The per-layer structure recorded in ``config.l0_structure`` (enough to rebuild the compact model)."""
    heads_per_unit = adapter.query_heads_per_unit()
    layers = []
    for attention, ffn in zip(plan.attention, plan.ffn):
        units = len(attention.units)
        layers.append({
            "attention_heads": units * heads_per_unit,
            "key_value_heads": units,
            "attention_output_bias": attention.keep_bias,
            "intermediate_size": len(ffn.units),
            "ffn_output_bias": ffn.keep_bias,
        })
    hidden = adapter.hidden_size if plan.hidden is None else len(plan.hidden)
    return {"format": 1, "hidden_size": hidden, "head_dim": adapter.head_dim(), "layers": layers}


def plan_from_structure(structure: dict[str, Any], adapter: ArchAdapter) -> PruningPlan:
    """The plan that reproduces a recorded structure on a freshly built dense model (first units kept)."""
    if structure.get("format") != 1:
        raise ValueError(f"unknown {STRUCTURE_KEY} format {structure.get('format')!r}; this hf-l0 reads format 1.")
    if len(structure["layers"]) != adapter.num_layers:
        raise ValueError(f"{STRUCTURE_KEY} describes {len(structure['layers'])} layers but the config builds "
                         f"{adapter.num_layers}.")
    hidden = structure["hidden_size"]
    plan = PruningPlan(hidden=None if hidden == adapter.hidden_size else torch.arange(hidden))
    for layer in structure["layers"]:
        plan.attention.append(SublayerPlan(torch.arange(layer["key_value_heads"]), layer["attention_output_bias"]))
        plan.ffn.append(SublayerPlan(torch.arange(layer["intermediate_size"]), layer["ffn_output_bias"]))
    return plan


def _fold(sublayer: Sublayer, unit_values: torch.Tensor | None, layer_value: torch.Tensor | None) -> SublayerPlan:
    if unit_values is None:
        unit_values = torch.ones(sublayer.num_units)
    in_scale = unit_values.repeat_interleave(sublayer.unit_width)
    scale_linear(sublayer.output, in_scale=in_scale, out_scale=layer_value)
    layer_open = layer_value is None or bool(layer_value != 0)
    units = unit_values.nonzero().squeeze(-1) if layer_open else torch.empty(0, dtype=torch.long)
    return SublayerPlan(units.cpu(), keep_bias=layer_open)


@torch.no_grad()
def prune_model(model: nn.Module) -> nn.Module:
    """Remove every structure whose deterministic gate is 0 and fold the surviving gate values into the weights.

    Returns ``model`` itself, now compact, of the same class, without gates or hooks. Its eval output equals the
    gated model's eval output. Sublayers with no unit left are replaced by stand-ins that return the (kept) output
    bias. ``model.config.l0_structure`` records the per-layer shapes; :func:`build_compact_model` rebuilds from it.

    A peft model's adapters are merged first (``merge_and_unload``): the result is a plain transformers model, so use
    the returned object.
    """
    gates = get_gates(model)
    values = {name: value.detach().cpu() for name, value in gates.deterministic().items()}
    unpatch_model(model)
    if transformers_model(model) is not model:
        model = model.merge_and_unload()
    adapter = get_adapter(model)
    hidden = values.get("hidden")
    plan = PruningPlan(hidden=None if hidden is None or bool(hidden.all()) else hidden.nonzero().squeeze(-1))
    for i in range(adapter.num_layers):
        for sublayer, unit_gate, layer_gate, steps in (
            (adapter.attention(i), "heads", "attention_layers", plan.attention),
            (adapter.ffn(i), "ffn", "ffn_layers", plan.ffn),
        ):
            unit_values = values[unit_gate][i] if unit_gate in values else None
            layer_value = values[layer_gate][i] if layer_gate in values else None
            steps.append(_fold(sublayer, unit_values, layer_value))
    apply_plan(model, plan)
    return model


def build_compact_model(model_class: type, config: Any) -> nn.Module:
    """Instantiate ``model_class`` from a config carrying ``l0_structure``, with the compact shapes (random weights).

    Load the compact state dict into it afterwards (strictly: every shape must match).
    """
    structure = getattr(config, STRUCTURE_KEY, None)
    if not structure:
        raise ValueError(f"config has no {STRUCTURE_KEY}: it describes a dense model, load it with from_pretrained.")
    model = model_class(config)
    # The same code rebuilds the shapes in a saved directory's trust_remote_code modeling file (hf_l0/compact.py).
    return apply_structure(model, structure)
