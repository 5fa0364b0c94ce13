"""Llama-family decoders (llama, mistral, qwen2): separate q/k/v/o, GQA, gated MLP, RMSNorm.

GQA: one attention gate covers a whole KV group (one KV head and the ``num_key_value_groups`` query heads that
``repeat_kv`` pairs with it). A closed gate removes the KV head and its queries together, so every surviving KV head
keeps exactly ``num_key_value_groups`` queries and the stock grouping stays exact; K and V projections shrink.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pruning.slicing import out_features
from .base import DecoderAdapter, Projection, Sublayer, register_adapter

if TYPE_CHECKING:
    from ..pruning.structure_format import L0Structure


@register_adapter
class LlamaAdapter(DecoderAdapter):
    model_types = ("llama", "mistral", "qwen2")
    layers_attr, attention_attr, attention_output_attr = "layers", "self_attn", "o_proj"
    ffn_attr, ffn_output_attr = "mlp", "down_proj"
    layer_norm_attrs = ("input_layernorm", "post_attention_layernorm")
    final_norm_attr, embedding_attrs = "norm", ("embed_tokens",)

    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads

    def query_heads_per_unit(self) -> int:
        return self.config.num_attention_heads // self.config.num_key_value_heads

    def native_config_fields(self, structure: L0Structure) -> dict[str, Any]:
        # head_dim is a config field here (not hidden_size / heads), so any kept width is expressible.
        return {
            **super().native_config_fields(structure),
            "num_key_value_heads": structure["layers"][0]["key_value_heads"],
            "head_dim": structure["head_dim"],
        }

    def attention(self, layer_idx: int) -> Sublayer | None:
        attn = self.attention_module(layer_idx)
        if attn is None:
            return None
        hd, group = attn.head_dim, attn.num_key_value_groups
        return Sublayer(
            kind="attention",
            layer_idx=layer_idx,
            inputs=[
                Projection(attn.q_proj, ((0, group * hd),)),
                Projection(attn.k_proj, ((0, hd),)),
                Projection(attn.v_proj, ((0, hd),)),
            ],
            output=attn.o_proj,
            unit_width=group * hd,
            num_units=out_features(attn.k_proj) // hd,
        )

    def ffn(self, layer_idx: int) -> Sublayer | None:
        mlp = self.ffn_module(layer_idx)
        if mlp is None:
            return None
        return Sublayer(
            "ffn",
            layer_idx,
            [Projection(mlp.gate_proj, ((0, 1),)), Projection(mlp.up_proj, ((0, 1),))],
            mlp.down_proj,
            1,
            out_features(mlp.up_proj),
        )
