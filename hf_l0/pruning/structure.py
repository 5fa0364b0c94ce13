"""The pruning plan (surviving units) and the one code path that applies a
plan to a stock transformers model (the module shapes themselves are :mod:`hf_l0.pruning.slicing`).

``prune_model`` builds the plan from trained gates; a compact model is rebuilt from the plan that
``config.l0_structure`` describes (:func:`apply_structure`), in hf_l0 and in the ``trust_remote_code`` files that
``hf_l0.save_pretrained`` writes: it is part of the portable set (:data:`hf_l0.hub.remote_code.PORTABLE_MODULES`)
copied into those directories.

The format itself is :mod:`hf_l0.pruning.structure_format`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..arch.base import ArchAdapter, Sublayer, get_adapter
from .slicing import slice_embedding, slice_linear, slice_norm, unit_rows
from .structure_format import STRUCTURE_FORMAT, STRUCTURE_KEY, L0Structure, LayerStructure


@dataclass
class SublayerPlan:
    units: torch.Tensor  # indices of the surviving units (heads / KV groups / neurons), sorted
    keep_bias: bool  # whether the output bias survives (the layer gate is open)


@dataclass
class PruningPlan:
    hidden: torch.Tensor | None  # surviving hidden dimensions, or None to keep all
    attention: list[SublayerPlan] = field(default_factory=list)
    ffn: list[SublayerPlan] = field(default_factory=list)


def _shrink_sublayer(adapter: ArchAdapter, sublayer: Sublayer, plan: SublayerPlan, hidden: torch.Tensor | None) -> None:
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
    """Slice every module of ``model`` (a stock, unpatched model; meta device allowed) to ``plan``, in place."""
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
    return model


def structure_of(adapter: ArchAdapter, plan: PruningPlan) -> L0Structure:
    """The per-layer structure recorded in ``config.l0_structure`` (enough to rebuild the compact model)."""
    heads_per_unit = adapter.query_heads_per_unit()
    layers: list[LayerStructure] = []
    for attention, ffn in zip(plan.attention, plan.ffn):
        units = len(attention.units)
        layers.append(
            {
                "attention_heads": units * heads_per_unit,
                "key_value_heads": units,
                "attention_output_bias": attention.keep_bias,
                "intermediate_size": len(ffn.units),
                "ffn_output_bias": ffn.keep_bias,
            }
        )
    hidden = adapter.hidden_size if plan.hidden is None else len(plan.hidden)
    return {"format": STRUCTURE_FORMAT, "hidden_size": hidden, "head_dim": adapter.head_dim(), "layers": layers}


def validate_structure(structure: Any, adapter: ArchAdapter) -> None:
    """Raise a ValueError naming the field when ``structure`` cannot describe a pruning of the adapter's model."""
    where = f"config.{STRUCTURE_KEY}"
    if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
        found = structure.get("format") if isinstance(structure, dict) else type(structure).__name__
        raise ValueError(f"{where}: unknown format {found!r}; this code reads format {STRUCTURE_FORMAT}.")
    layers = structure.get("layers")
    if not isinstance(layers, list) or len(layers) != adapter.num_layers:
        count = len(layers) if isinstance(layers, list) else layers
        raise ValueError(f"{where} describes {count} layers but the config builds {adapter.num_layers}.")
    hidden, head_dim = structure.get("hidden_size"), structure.get("head_dim")
    if not isinstance(hidden, int) or not 0 < hidden <= adapter.hidden_size:
        raise ValueError(f"{where}.hidden_size={hidden!r} must be an int in [1, {adapter.hidden_size}].")
    if head_dim != adapter.head_dim():
        raise ValueError(f"{where}.head_dim={head_dim!r} contradicts the config (head_dim {adapter.head_dim()}).")
    dropped = structure.get("dropped_layers", [])
    if not isinstance(dropped, list) or any(not isinstance(i, int) or i < 0 for i in dropped):
        raise ValueError(f"{where}.dropped_layers={dropped!r} must be a list of layer indices (ints >= 0).")
    adapter.check_supported(gate_hidden=hidden != adapter.hidden_size)
    group = adapter.query_heads_per_unit()
    limits = (
        ("key_value_heads", adapter.config.num_attention_heads // group),
        ("intermediate_size", adapter.dense_intermediate_size()),
    )
    for i, layer in enumerate(layers):
        for key, limit in limits:
            value = layer.get(key)
            if not isinstance(value, int) or not 0 <= value <= limit:
                raise ValueError(f"{where}.layers[{i}].{key}={value!r} must be an int in [0, {limit}].")
        if layer.get("attention_heads") != layer["key_value_heads"] * group:
            raise ValueError(
                f"{where}.layers[{i}].attention_heads={layer.get('attention_heads')!r} must be "
                f"key_value_heads x {group} = {layer['key_value_heads'] * group}."
            )
        for key in ("attention_output_bias", "ffn_output_bias"):
            if not isinstance(layer.get(key), bool):
                raise ValueError(f"{where}.layers[{i}].{key}={layer.get(key)!r} must be true or false.")


def plan_from_structure(structure: L0Structure, adapter: ArchAdapter) -> PruningPlan:
    """The plan that reproduces a recorded structure on a freshly built dense model.

    It keeps the *first* units and dimensions: their values are placeholders that loading the compact weights
    overwrites.
    """
    validate_structure(structure, adapter)
    hidden = structure["hidden_size"]
    plan = PruningPlan(hidden=None if hidden == adapter.hidden_size else torch.arange(hidden))
    for layer in structure["layers"]:
        plan.attention.append(SublayerPlan(torch.arange(layer["key_value_heads"]), layer["attention_output_bias"]))
        plan.ffn.append(SublayerPlan(torch.arange(layer["intermediate_size"]), layer["ffn_output_bias"]))
    return plan


def apply_structure(model: nn.Module, structure: L0Structure) -> nn.Module:
    """Shrink a freshly built stock ``model`` (dense shapes, any weights, meta device allowed) to ``structure``."""
    return apply_plan(model, plan_from_structure(structure, get_adapter(model)))


def build_compact_model(model_class: type, config: Any) -> nn.Module:
    """Instantiate ``model_class`` from a config carrying ``l0_structure``, with the compact shapes (random weights).

    Load the compact state dict into it afterwards (strictly: every shape must match).
    """
    structure = getattr(config, STRUCTURE_KEY, None)
    if not structure:
        raise ValueError(f"config has no {STRUCTURE_KEY}: it describes a dense model, load it with from_pretrained.")
    # The same code rebuilds the shapes in a saved directory's trust_remote_code files (hf_l0.hub.remote).
    return apply_structure(model_class(config), structure)
