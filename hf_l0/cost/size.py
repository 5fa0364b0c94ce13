"""Expected (differentiable) and deterministic parameter counts of everything the gates can remove.

For each sublayer (CoFi's outer products, gates independent):
``E = P(layer) * (sum_u P(u) * (W_u * E[d] + B_u) + B_out * E[d])`` where ``W_u`` is the number of weight entries per
unit and hidden dimension (input rows + output columns), ``B_u`` the input-projection biases per unit, ``B_out`` 1 when
the output projection has a bias (kept while the layer gate is open, even with no unit left), and ``E[d]`` the
expected number of hidden dimensions. Outside the sublayers, hidden gates also shrink embeddings, norms and the
Linear heads that read the residual stream; on decoders, a layer that loses both sublayers leaves with its norms
(:func:`dropped_layers`). With P replaced by ``1[z != 0]`` of the deterministic gates, the count equals the
parameters of the model that :func:`hf_l0.prune_model` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..arch import get_adapter
from ..gates.hard_concrete import HIDDEN_GATE, SUBLAYER_KINDS, sublayer_gate_names
from ..gates.patch import get_gates, transformers_model
from .layout import SizeLayout, layout_of


@dataclass
class SizeReport:
    """Parameter counts (float64 tensors; differentiable when expected) of the prunable parts of a model."""

    attention: torch.Tensor
    ffn: torch.Tensor
    residual: torch.Tensor  # embeddings, norms and heads along the hidden dimension

    @property
    def prunable(self) -> torch.Tensor:
        """Attention + FFN blocks: the part whose sparsity the Lagrangian controls (embeddings excluded, as in CoFi)."""
        return self.attention + self.ffn

    @property
    def total(self) -> torch.Tensor:
        return self.prunable + self.residual


SizeMode = Literal["expected", "deterministic", "full", "minimum"]
SIZE_MODES: tuple[str, ...] = SizeMode.__args__


def unit_probabilities(model: nn.Module, mode: SizeMode) -> dict[str, torch.Tensor]:
    """Per gate, the probability that each unit is kept under ``mode`` (none for ``full``: every unit kept)."""
    if mode not in SIZE_MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(SIZE_MODES)}.")
    gates = get_gates(model)
    if mode == "full":
        return {}
    if mode == "expected":
        return {name: gate.prob_nonzero().double() for name, gate in gates.named_gates()}
    if mode == "minimum":  # every gate shut, except the entries a uniform target (keep_per_row) must keep
        minimum = {}
        for name, gate in gates.named_gates():
            value = torch.zeros_like(gate.log_alpha, dtype=torch.float64)
            if gate.keep_per_row is not None:
                value[..., : min(gate.keep_per_row, value.shape[-1])] = 1.0
            minimum[name] = value.detach()
        return minimum
    return {name: (value != 0).double() for name, value in gates.deterministic().items()}


def size_layout(model: nn.Module) -> SizeLayout:
    """The dense parameter counts of a gated model (kept on its gates, read once)."""
    gates = get_gates(model)
    if gates.size_layout is None:  # gates built by hand instead of by patch_model
        gates.size_layout = layout_of(get_adapter(transformers_model(model)))
    return gates.size_layout


def dropped_layers(probs: dict[str, torch.Tensor], layout: SizeLayout, mode: SizeMode) -> torch.Tensor:
    """How many layers :func:`hf_l0.prune_model` drops (expected: a sum of probabilities, differentiable).

    A layer leaves when both its sublayers output zero: the layer gate shut or, without an output bias, every unit
    shut (units are independent, so ``P = prod(1 - P(u))``). Only where the family allows it (pre-norm decoders);
    a model keeps one layer.
    """
    if not layout.dropped_layer_per_dim:
        return torch.zeros((), dtype=torch.float64)
    removed = None
    for kind in SUBLAYER_KINDS:
        unit_gate, layer_gate = sublayer_gate_names(kind)
        counts = layout.sublayers[kind]
        output_bias = torch.tensor(counts.output_bias, dtype=torch.float64)
        open_layer = probs.get(layer_gate, torch.ones(len(counts.num_units), dtype=torch.float64))
        output_bias = output_bias.to(open_layer.device)
        all_shut = (1.0 - probs[unit_gate]).prod(-1) if unit_gate in probs else torch.zeros_like(open_layer)
        zero = 1.0 - open_layer * torch.where(output_bias > 0, torch.ones_like(all_shut), 1.0 - all_shut)
        removed = zero if removed is None else removed * zero
    count = removed.sum()
    if mode != "expected":
        count = count.clamp(max=len(removed) - 1)
    return count


def _size(model: nn.Module, mode: SizeMode) -> SizeReport:
    layout = size_layout(model)
    probs = unit_probabilities(model, mode)
    device = next(get_gates(model).parameters()).device
    one = torch.ones((), dtype=torch.float64, device=device)
    hidden = probs[HIDDEN_GATE].sum() if HIDDEN_GATE in probs else one * layout.hidden_size
    totals = {}
    for kind in SUBLAYER_KINDS:
        unit_gate, layer_gate = sublayer_gate_names(kind)
        counts = layout.sublayers[kind].rows()
        num_units, weights, biases, output_bias = torch.tensor(counts, dtype=torch.float64, device=device)
        units = probs[unit_gate].sum(-1) if unit_gate in probs else num_units
        size = units * (weights * hidden + biases) + output_bias * hidden
        if layer_gate in probs:
            size = size * probs[layer_gate]
        totals[kind] = size.sum()
    residual = layout.residual_per_dim * hidden
    if layout.dropped_layer_per_dim:  # a dropped layer takes its norms with it
        residual = residual - dropped_layers(probs, layout, mode) * layout.dropped_layer_per_dim * hidden
    return SizeReport(totals["attention"], totals["ffn"], residual)


def expected_size(model: nn.Module) -> SizeReport:
    """Expected parameter counts under the hard concrete distributions (differentiable in every ``log_alpha``)."""
    return _size(model, "expected")


def deterministic_size(model: nn.Module) -> SizeReport:
    """Parameter counts under the eval-mode gates: what :func:`hf_l0.prune_model` will keep."""
    return _size(model, "deterministic")


def full_size(model: nn.Module) -> SizeReport:
    """Parameter counts with every gate open (the dense model)."""
    return _size(model, "full")


def expected_sparsity(model: nn.Module) -> torch.Tensor:
    """1 - expected remaining / full size of the attention + FFN blocks, differentiable in every ``log_alpha``."""
    return 1.0 - expected_size(model).prunable / full_size(model).prunable


def deterministic_sparsity(model: nn.Module) -> torch.Tensor:
    """1 - remaining / full size of the attention + FFN blocks under the eval-mode gates: the sparsity of the model
    :func:`hf_l0.prune_model` returns (no gradient)."""
    return 1.0 - deterministic_size(model).prunable / full_size(model).prunable


def max_reachable_sparsity(model: nn.Module) -> float:
    """The largest sparsity (of the attention + FFN blocks) that the model's gates can reach with every gate shut.

    Layer gates can remove everything (1.0). Without them some parameters always stay: heads-only gates keep the FFN,
    FFN-only gates keep attention, hidden-only gates keep the input projections' biases, and uniform targets
    (``target_heads`` ...) keep their counts. Sizes only grow with each gate, so all-shut is the minimum.
    """
    return float(1.0 - _size(model, "minimum").prunable / full_size(model).prunable)


def check_target_reachable(model: nn.Module, target_sparsity: float) -> None:
    """Raise a ``ValueError`` before training when the gated structures cannot remove ``target_sparsity`` of the
    attention + FFN parameters (the Lagrangian would otherwise end far below the target without a word).

    :class:`hf_l0.L0Trainer` calls it after patching; call it in a custom loop right after :func:`hf_l0.patch_model`.
    """
    maximum = max_reachable_sparsity(model)
    if target_sparsity > maximum + 1e-12:
        structures = ", ".join(get_gates(model).gates)
        raise ValueError(
            f"target_sparsity={target_sparsity} cannot be reached: with gates on {structures} this model can lose at "
            f"most {maximum:.4f} of its attention + FFN parameters (every gate shut). Gate more structures (layers "
            f"or hidden remove what heads / FFN gates cannot; drop uniform targets like target_heads) or lower "
            f"target_sparsity to at most {maximum:.4f}."
        )
