"""The persisted description of a compact model's shapes, ``config.l0_structure``: its key, format version and types.

A module of its own so that the adapters (which turn a structure into stock config fields) and the plan code (which
builds and applies structures) both read it without importing each other. Part of the portable set.

``config.l0_structure`` (format 1)::

    {"format": 1, "hidden_size": d, "head_dim": hd,
     "layers": [{"attention_heads": h, "key_value_heads": u, "attention_output_bias": bool,
                 "intermediate_size": n, "ffn_output_bias": bool}, ...]}

A unit of attention is a head (MHA) or a KV group (GQA: one KV head and its query heads). A sublayer with 0 units
was removed whole and is replaced by a stand-in that returns its (kept) output bias. On decoders, a layer whose two
sublayers were both removed with no bias left can leave the model: ``layers`` then lists only the layers kept (as many
as ``num_hidden_layers`` in the config) and the optional ``"dropped_layers"`` names the original indices of the others,
for the record (rebuilding does not need it).
"""

from __future__ import annotations

from typing import TypedDict

STRUCTURE_KEY = "l0_structure"
STRUCTURE_FORMAT = 1


class LayerStructure(TypedDict):
    """One layer of ``config.l0_structure`` (see the module docstring)."""

    attention_heads: int  # query heads: key_value_heads x query heads per KV group
    key_value_heads: int  # attention units (heads, or KV groups on GQA models); 0: the attention was removed
    attention_output_bias: bool
    intermediate_size: int  # FFN neurons; 0: the FFN was removed
    ffn_output_bias: bool


class _RequiredStructure(TypedDict):
    format: int
    hidden_size: int
    head_dim: int
    layers: list[LayerStructure]


class L0Structure(_RequiredStructure, total=False):
    """``config.l0_structure``, the persisted description of a compact model's shapes (format 1)."""

    dropped_layers: list[int]  # original indices of the layers pruning removed (identity layers)
