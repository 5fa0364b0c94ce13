"""Expected (differentiable) and deterministic parameter counts of everything the gates can remove.

For each sublayer (CoFi's outer products, gates independent):
``E = P(layer) * (sum_u P(u) * (W_u * E[d] + B_u) + B_out * E[d])`` where ``W_u`` is the number of weight entries per
unit and hidden dimension (input rows + output columns), ``B_u`` the input-projection biases per unit, ``B_out`` 1 when
the output projection has a bias (kept while the layer gate is open, even with no unit left), and ``E[d]`` the
expected number of hidden dimensions. Outside the sublayers, hidden gates also shrink embeddings, norms and the
Linear heads that read the residual stream. With P replaced by ``1[z != 0]`` of the deterministic gates, the count
equals the parameters of the model that :func:`hf_l0.prune_model` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .arch import ArchAdapter, get_adapter
from .patch import get_gates, transformers_model
from .slicing import out_features


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


def _probabilities(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    gates = get_gates(model)
    if mode == "full":
        return {}
    if mode == "expected":
        return {name: gate.prob_nonzero().double() for name, gate in gates.gates().items()}
    if mode == "minimum":  # every gate shut, except the entries a uniform target (keep_per_row) must keep
        minimum = {}
        for name, gate in gates.gates().items():
            value = torch.zeros_like(gate.log_alpha, dtype=torch.float64)
            if gate.keep_per_row is not None:
                value[..., :min(gate.keep_per_row, value.shape[-1])] = 1.0
            minimum[name] = value.detach()
        return minimum
    return {name: (value != 0).double() for name, value in gates.deterministic().items()}


def _residual_params_per_dim(adapter: ArchAdapter) -> int:
    stream = adapter.residual_stream()
    embedding_weights = {id(e.weight) for e in stream.embeddings}
    count = sum(e.num_embeddings for e in stream.embeddings)
    count += sum(sum(p.numel() for p in norm.parameters(recurse=False)) // adapter.hidden_size for norm in stream.norms)
    count += sum(out_features(c) for c in stream.consumers if id(c.weight) not in embedding_weights)  # tied: once
    return count


_LAYOUT_ATTR = "_size_layout"


def _layout(model: nn.Module) -> dict:
    """Per-layer counts of the sublayers (units, weights and biases per unit, output bias) and of the residual stream.

    They describe the dense model the gates were attached to, which patching never changes, so they are read from the
    adapter once and kept on the gates module: the trainer asks for the size at every step.
    """
    gates = get_gates(model)
    layout = gates.__dict__.get(_LAYOUT_ATTR)
    if layout is None:
        adapter = get_adapter(transformers_model(model))
        layout = {"hidden_size": adapter.hidden_size, "residual_per_dim": _residual_params_per_dim(adapter)}
        for kind in ("attention", "ffn"):
            sublayers = [getattr(adapter, kind)(i) for i in range(adapter.num_layers)]
            layout[kind] = [[s.num_units for s in sublayers], [s.weights_per_unit() for s in sublayers],
                            [s.biases_per_unit() for s in sublayers], [s.output_bias() for s in sublayers]]
        gates.__dict__[_LAYOUT_ATTR] = layout
    return layout


def _size(model: nn.Module, mode: str) -> SizeReport:
    layout = _layout(model)
    probs = _probabilities(model, mode)
    device = next(get_gates(model).parameters()).device
    one = torch.ones((), dtype=torch.float64, device=device)
    hidden = probs["hidden"].sum() if "hidden" in probs else one * layout["hidden_size"]
    totals = {}
    for kind, unit_gate, layer_gate in (("attention", "heads", "attention_layers"), ("ffn", "ffn", "ffn_layers")):
        num_units, weights, biases, output_bias = torch.tensor(layout[kind], dtype=torch.float64, device=device)
        units = probs[unit_gate].sum(-1) if unit_gate in probs else num_units
        size = units * (weights * hidden + biases) + output_bias * hidden
        if layer_gate in probs:
            size = size * probs[layer_gate]
        totals[kind] = size.sum()
    return SizeReport(totals["attention"], totals["ffn"], layout["residual_per_dim"] * hidden)


def expected_size(model: nn.Module) -> SizeReport:
    """Expected parameter counts under the hard concrete distributions (differentiable in every ``log_alpha``)."""
    return _size(model, "expected")


def deterministic_size(model: nn.Module) -> SizeReport:
    """Parameter counts under the eval-mode gates: what :func:`hf_l0.prune_model` will keep."""
    return _size(model, "deterministic")


def full_size(model: nn.Module) -> SizeReport:
    """Parameter counts with every gate open (the dense model)."""
    return _size(model, "full")


def expected_sparsity(model: nn.Module, deterministic: bool = False) -> torch.Tensor:
    """1 - remaining / full size of the attention + FFN blocks (differentiable unless ``deterministic``)."""
    size = deterministic_size(model) if deterministic else expected_size(model)
    return 1.0 - size.prunable / full_size(model).prunable


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
        structures = ", ".join(get_gates(model).gates())
        raise ValueError(
            f"target_sparsity={target_sparsity} cannot be reached: with gates on {structures} this model can lose at "
            f"most {maximum:.4f} of its attention + FFN parameters (every gate shut). Gate more structures (layers "
            f"or hidden remove what heads / FFN gates cannot; drop uniform targets like target_heads) or lower "
            f"target_sparsity to at most {maximum:.4f}."
        )
