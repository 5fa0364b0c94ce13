"""Llama-family decoders (llama, mistral, qwen2): separate q/k/v/o, GQA, gated MLP, RMSNorm.

GQA: one attention gate covers a whole KV group (one KV head and the ``num_key_value_groups`` query heads that
``repeat_kv`` pairs with it). A closed gate removes the KV head and its queries together, so every surviving KV head
keeps exactly ``num_key_value_groups`` queries and the stock grouping stays exact; K and V projections shrink.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..slicing import out_features
from ..stand_ins import ConstantProjection, RemovedAttention, RemovedMLP
from .base import ArchAdapter, Projection, ResidualStream, Sublayer, register_adapter


@register_adapter
class LlamaAdapter(ArchAdapter):
    model_types = ("llama", "mistral", "qwen2")

    def layers(self) -> list[nn.Module]:
        return list(self.base.layers)

    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads

    def query_heads_per_unit(self) -> int:
        return self.config.num_attention_heads // self.config.num_key_value_heads

    def native_config_fields(self, structure: dict[str, Any]) -> dict[str, Any]:
        # head_dim is a config field here (not hidden_size / heads), so any kept width is expressible.
        return {**super().native_config_fields(structure),
                "num_key_value_heads": structure["layers"][0]["key_value_heads"], "head_dim": structure["head_dim"]}

    def attention(self, layer_idx: int) -> Sublayer | None:
        attn = self.layers()[layer_idx].self_attn
        if isinstance(attn, RemovedAttention):
            return None
        hd, group = attn.head_dim, attn.num_key_value_groups
        return Sublayer(
            kind="attention",
            layer_idx=layer_idx,
            inputs=[Projection(attn.q_proj, ((0, group * hd),)), Projection(attn.k_proj, ((0, hd),)),
                    Projection(attn.v_proj, ((0, hd),))],
            output=attn.o_proj,
            unit_width=group * hd,
            num_units=out_features(attn.k_proj) // hd,
        )

    def ffn(self, layer_idx: int) -> Sublayer | None:
        mlp = self.layers()[layer_idx].mlp
        if isinstance(mlp, RemovedMLP):
            return None
        return Sublayer("ffn", layer_idx, [Projection(mlp.gate_proj, ((0, 1),)), Projection(mlp.up_proj, ((0, 1),))],
                        mlp.down_proj, 1, out_features(mlp.up_proj))

    def remove_attention(self, layer_idx: int, keep_bias: bool) -> None:
        layer = self.layers()[layer_idx]
        proj = layer.self_attn.o_proj
        output = ConstantProjection(out_features(proj), proj.bias if keep_bias else None)
        layer.self_attn = RemovedAttention("o_proj", output, layer.self_attn.layer_idx)

    def remove_ffn(self, layer_idx: int, keep_bias: bool) -> None:
        layer = self.layers()[layer_idx]
        proj = layer.mlp.down_proj
        layer.mlp = RemovedMLP("down_proj", ConstantProjection(out_features(proj), proj.bias if keep_bias else None))

    def residual_stream(self) -> ResidualStream:
        norms = []
        for layer in self.layers():
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        norms.append(self.base.norm)
        return ResidualStream([self.base.embed_tokens], norms, self.top_level_consumers())
