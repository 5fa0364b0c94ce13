"""Physical pruning: turn a gated model into a compact model of the same transformers class.

This module reads the gates and folds their values into the weights; the shape surgery itself is
:mod:`hf_l0.pruning.structure`, shared with rebuilding a compact model from its config.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..arch import ArchAdapter, Sublayer, get_adapter
from ..gates.config import L0Config
from ..gates.hard_concrete import HIDDEN_GATE, SUBLAYER_KINDS, sublayer_gate_names, whole_tensor
from ..gates.patch import GATES_ATTR, get_gates, patch_model, transformers_model, unpatch_model
from ..hub.own_methods import bind_compact_methods
from .slicing import scale_linear
from .structure import PruningPlan, SublayerPlan, apply_plan, structure_of
from .structure_format import STRUCTURE_KEY


def _fold(sublayer: Sublayer, unit_values: torch.Tensor | None, layer_value: torch.Tensor | None) -> SublayerPlan:
    if unit_values is None:
        unit_values = torch.ones(sublayer.num_units)
    in_scale = unit_values.repeat_interleave(sublayer.unit_width)
    scale_linear(sublayer.output, in_scale=in_scale, out_scale=layer_value)
    layer_open = layer_value is None or bool(layer_value != 0)
    units = unit_values.nonzero().squeeze(-1) if layer_open else torch.empty(0, dtype=torch.long)
    return SublayerPlan(units.cpu(), keep_bias=layer_open)


def _outputs_zero(sublayer: Sublayer, plan: SublayerPlan) -> bool:
    """Whether the sublayer's stand-in after pruning returns zeros (no unit left, and no output bias kept)."""
    return len(plan.units) == 0 and (not plan.keep_bias or not sublayer.output_bias())


def _layers_to_drop(adapter: ArchAdapter, zero: list[list[bool]]) -> list[int]:
    if not adapter.can_drop_layers():
        return []
    empty = [i for i, (attention, ffn) in enumerate(zip(*zero)) if attention and ffn]
    # A model keeps one layer: the KV cache and the exporters read the sequence length from layer 0.
    return empty[1:] if len(empty) == adapter.num_layers else empty


@torch.no_grad()
def prune_model(model: nn.Module, drop_empty_layers: bool = True) -> nn.Module:
    """Remove every structure whose deterministic gate is 0 and fold the surviving gate values into the weights.

    Returns ``model`` itself, now compact, of the same class, without gates or hooks. Its eval output equals the
    gated model's eval output. Sublayers with no unit left are replaced by stand-ins that return the (kept) output
    bias. On pre-norm decoders (GPT-2, Llama family) a layer whose attention and FFN both output zero is the identity:
    with ``drop_empty_layers`` it leaves the model, ``config.num_hidden_layers`` shrinks and the original indices are
    recorded in ``l0_structure["dropped_layers"]``; encoders (post-norm) keep theirs, as stand-ins. The parameter
    count and latency models (:func:`hf_l0.deterministic_size`, latency targets) assume such layers are dropped.
    ``model.config.l0_structure`` records the per-layer shapes; :func:`build_compact_model` rebuilds from it.
    The returned model's own ``save_pretrained`` and ``push_to_hub`` write :func:`hf_l0.save_pretrained`'s export
    (see :mod:`hf_l0.hub.own_methods`).

    A peft model's adapters are merged first (``merge_and_unload``): the result is a plain transformers model, so use
    the returned object.
    """
    gates = get_gates(model)
    values = {name: value.detach().cpu() for name, value in gates.deterministic().items()}
    unpatch_model(model)
    if transformers_model(model) is not model:
        model = model.merge_and_unload()
    adapter = get_adapter(model)
    hidden = values.get(HIDDEN_GATE)
    plan = PruningPlan(hidden=None if hidden is None or bool(hidden.all()) else hidden.nonzero().squeeze(-1))
    zero: list[list[bool]] = [[], []]  # per kind (SUBLAYER_KINDS order), per layer: the stand-in outputs zeros
    for i in range(adapter.num_layers):
        for kind, kind_zero in zip(SUBLAYER_KINDS, zero):
            sublayer, (unit_gate, layer_gate) = getattr(adapter, kind)(i), sublayer_gate_names(kind)
            steps = getattr(plan, kind)  # plan.attention / plan.ffn
            unit_values = values[unit_gate][i] if unit_gate in values else None
            layer_value = values[layer_gate][i] if layer_gate in values else None
            steps.append(_fold(sublayer, unit_values, layer_value))
            kind_zero.append(_outputs_zero(sublayer, steps[-1]))
    apply_plan(model, plan)
    dropped = _layers_to_drop(adapter, zero) if drop_empty_layers else []
    if dropped:
        adapter.drop_layers(dropped)
        plan.attention = [step for i, step in enumerate(plan.attention) if i not in dropped]
        plan.ffn = [step for i, step in enumerate(plan.ffn) if i not in dropped]
        adapter = get_adapter(model)
    structure = structure_of(adapter, plan)
    if dropped:
        structure["dropped_layers"] = dropped
    setattr(model.config, STRUCTURE_KEY, structure)
    # model.save_pretrained / push_to_hub (and so Trainer.save_model) must not write a stock config that
    # would load a dense or randomly filled model: they write hf_l0.save_pretrained's export instead.
    return bind_compact_methods(model)


def pruned_copy(model: nn.Module, config: L0Config | None = None) -> nn.Module:
    """A pruned copy of a gated model: :func:`prune_model` on a copy, so ``model`` stays gated and trainable.

    ``config`` is the model's ``L0Config`` (default: the one :func:`hf_l0.patch_model` attached). Works on peft
    models (the copy gets the same adapters, which pruning merges) and on FSDP2-sharded models, whose shards are
    gathered: a collective, so every rank must call it.
    """
    gated_base = transformers_model(model)
    config = copy.deepcopy(gated_base.l0_config if config is None else config)
    param = next(model.parameters())
    # A fresh instance instead of deepcopy: the gating hooks are closures over the original's gates.
    copied = type(gated_base)(copy.deepcopy(gated_base.config))
    if gated_base is not model:  # a peft model: the same adapters on the copy; prune_model merges them
        from peft import get_peft_model

        copied = get_peft_model(copied, copy.deepcopy(model.peft_config[model.active_adapter]))
    gates_prefix = f"{GATES_ATTR}."
    weights = {k: whole_tensor(v) for k, v in model.state_dict().items() if gates_prefix not in k}
    copied.load_state_dict(weights)
    copied.to(device=whole_tensor(param).device, dtype=param.dtype)
    patch_model(copied, config)
    get_gates(copied).load_state_dict({k: whole_tensor(v) for k, v in get_gates(model).state_dict().items()})
    return prune_model(copied.eval())
