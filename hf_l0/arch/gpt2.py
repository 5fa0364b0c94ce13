"""GPT-2: fused ``c_attn`` Conv1D (weights stored [in, out]), pre-LayerNorm, tied ``lm_head``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pruning.slicing import out_features
from .base import DecoderAdapter, Projection, Sublayer, register_adapter

if TYPE_CHECKING:
    from ..pruning.structure_format import L0Structure


@register_adapter
class GPT2Adapter(DecoderAdapter):
    model_types = ("gpt2",)
    layers_attr, attention_attr, attention_output_attr = "h", "attn", "c_proj"
    ffn_attr, ffn_output_attr = "mlp", "c_proj"
    layer_norm_attrs, final_norm_attr, embedding_attrs = ("ln_1", "ln_2"), "ln_f", ("wte", "wpe")

    def attention(self, layer_idx: int) -> Sublayer | None:
        attn = self.attention_module(layer_idx)
        if attn is None:
            return None
        hd, width = attn.head_dim, attn.split_size  # c_attn's output is [q | k | v], each num_heads * head_dim
        return Sublayer(
            "attention",
            layer_idx,
            [Projection(attn.c_attn, ((0, hd), (width, hd), (2 * width, hd)))],
            attn.c_proj,
            hd,
            attn.num_heads,
        )

    def ffn(self, layer_idx: int) -> Sublayer | None:
        mlp = self.ffn_module(layer_idx)
        if mlp is None:
            return None
        return Sublayer("ffn", layer_idx, [Projection(mlp.c_fc, ((0, 1),))], mlp.c_proj, 1, out_features(mlp.c_fc))

    def dense_intermediate_size(self) -> int:
        return self.config.n_inner if self.config.n_inner is not None else 4 * self.config.hidden_size

    def native_config_fields(self, structure: L0Structure) -> dict[str, Any]:
        layer = structure["layers"][0]
        return {
            "n_embd": structure["hidden_size"],
            "n_head": layer["attention_heads"],
            "n_inner": layer["intermediate_size"],
        }

    def set_attention_units(self, layer_idx: int, num_units: int) -> None:
        attn = self.layers()[layer_idx].attn
        attn.num_heads = num_units
        attn.split_size = num_units * attn.head_dim

    def can_drop_layers(self) -> bool:
        # With scale_attn_by_inverse_layer_idx the attention scale depends on the layer's index: renumbering the
        # layers after a dropped one would change their outputs.
        return not self.config.scale_attn_by_inverse_layer_idx

    def check_supported(self, gate_hidden: bool) -> None:
        if getattr(self.config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (add_cross_attention=True) is not supported by hf-l0.")
