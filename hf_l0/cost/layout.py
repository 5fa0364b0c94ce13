"""The parameter counts of a dense model that its size under the gates is computed from (:mod:`hf_l0.cost.size`).

They describe the model the gates were attached to, which patching never changes, so :func:`hf_l0.patch_model`
reads them from the adapter once and keeps them on the gates (``L0Gates.size_layout``): the trainer asks for the
size at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import ArchAdapter
from ..gates.hard_concrete import SUBLAYER_KINDS
from ..pruning.slicing import out_features


@dataclass(frozen=True)
class SublayerCounts:
    """Per layer: units, weight entries per unit and hidden dimension, input biases per unit, output bias (0 / 1)."""

    num_units: tuple[int, ...]
    weights_per_unit: tuple[int, ...]
    biases_per_unit: tuple[int, ...]
    output_bias: tuple[int, ...]

    def rows(self) -> list[tuple[int, ...]]:
        return [self.num_units, self.weights_per_unit, self.biases_per_unit, self.output_bias]


@dataclass(frozen=True)
class SizeLayout:
    """Counts of the sublayers of every layer, by kind (``"attention"``, ``"ffn"``), and of the residual stream."""

    hidden_size: int
    residual_per_dim: int  # parameters per hidden dimension outside the sublayers (embeddings, norms, heads)
    sublayers: dict[str, SublayerCounts]
    # parameters per hidden dimension that leave with a dropped layer (its norms); 0 where layers are never dropped
    dropped_layer_per_dim: int = 0


def residual_params_per_dim(adapter: ArchAdapter) -> int:
    stream = adapter.residual_stream()
    embedding_weights = {id(e.weight) for e in stream.embeddings}
    count = sum(e.num_embeddings for e in stream.embeddings)
    count += sum(sum(p.numel() for p in norm.parameters(recurse=False)) // adapter.hidden_size for norm in stream.norms)
    count += sum(out_features(c) for c in stream.consumers if id(c.weight) not in embedding_weights)  # tied: once
    return count


def layout_of(adapter: ArchAdapter) -> SizeLayout:
    """The counts of the dense model ``adapter`` describes."""
    sublayers = {}
    for kind in SUBLAYER_KINDS:
        found = [getattr(adapter, kind)(i) for i in range(adapter.num_layers)]
        sublayers[kind] = SublayerCounts(
            tuple(s.num_units for s in found),
            tuple(s.weights_per_unit() for s in found),
            tuple(s.biases_per_unit() for s in found),
            tuple(s.output_bias() for s in found),
        )
    dropped_layer_per_dim = 0
    if adapter.can_drop_layers():
        norms = adapter.layer_norms(0)
        dropped_layer_per_dim = (
            sum(p.numel() for n in norms for p in n.parameters(recurse=False)) // adapter.hidden_size
        )
    return SizeLayout(adapter.hidden_size, residual_params_per_dim(adapter), sublayers, dropped_layer_per_dim)
