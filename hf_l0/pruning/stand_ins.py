"""Stand-ins for sublayers that pruning removed whole (no heads or no neurons left).

Part of the portable set (:data:`hf_l0.hub.remote_code.PORTABLE_MODULES`), copied into remote-code directories: a
model rebuilt from a saved directory, with or without hf_l0 installed, uses the very same classes.
"""

from __future__ import annotations

import torch
from torch import nn

# Class attribute naming the sublayer a stand-in replaces. Checks go by it (:func:`is_removed`), not by isinstance: a
# model loaded through transformers' remote code holds the directory's copies of these classes, not hf_l0's.
STAND_IN_ATTR = "hf_l0_stand_in"


def is_removed(module: nn.Module | None, kind: str) -> bool:
    """Whether ``module`` is the stand-in of a sublayer removed whole (``kind``: "attention" or "ffn"), whichever copy
    of this module defined its class."""
    return getattr(type(module), STAND_IN_ATTR, None) == kind


class ConstantProjection(nn.Module):
    """An output projection with no inputs left: its output is its bias (a constant), or zeros without one.

    It keeps the parameter name ``bias`` so the compact state dict has the same key as the projection it replaces.
    """

    def __init__(self, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        shape = (*like.shape[:-1], self.out_features)
        if self.bias is None:
            return like.new_zeros(shape)
        return self.bias.to(like.dtype).expand(shape)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, bias={self.bias is not None}"


class RemovedAttention(nn.Module):
    """Replaces a decoder attention block whose heads were all pruned.

    Returns ``(constant output, None)`` like the stock block. It still records an entry per step in the KV cache
    (one head of width 1) because transformers reads the cache length from layer 0 (``Cache.get_seq_length``):
    a layer with no cache entries would reset positions during ``generate()``.
    """

    hf_l0_stand_in = "attention"

    def __init__(self, output_name: str, output: ConstantProjection, layer_idx: int | None) -> None:
        super().__init__()
        self.output_name = output_name
        self.layer_idx = layer_idx
        self.add_module(output_name, output)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and self.layer_idx is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return getattr(self, self.output_name)(hidden_states), None


class RemovedMLP(nn.Module):
    """Replaces an FFN block whose neurons were all pruned: returns the constant output of its projection."""

    hf_l0_stand_in = "ffn"

    def __init__(self, output_name: str, output: ConstantProjection) -> None:
        super().__init__()
        self.output_name = output_name
        self.add_module(output_name, output)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return getattr(self, self.output_name)(hidden_states)


class EmptySelfAttention(nn.Module):
    """Replaces the context computation of an encoder attention whose heads were all pruned: a width-0 context,
    so the following output projection (kept, with 0 inputs) yields its bias."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None
