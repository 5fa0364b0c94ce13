"""GPT-2: fused ``c_attn`` Conv1D (weights stored [in, out]), pre-LayerNorm, tied ``lm_head``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..slicing import out_features
from ..stand_ins import ConstantProjection, RemovedAttention, RemovedMLP
from .base import ArchAdapter, Projection, ResidualStream, Sublayer, register_adapter


@register_adapter
class GPT2Adapter(ArchAdapter):
    model_types = ("gpt2",)

    def layers(self) -> list[nn.Module]:
        return list(self.base.h)

    def attention(self, layer_idx: int) -> Sublayer | None:
        attn = self.layers()[layer_idx].attn
        if isinstance(attn, RemovedAttention):
            return None
        hd, width = attn.head_dim, attn.split_size  # c_attn's output is [q | k | v], each num_heads * head_dim
        return Sublayer("attention", layer_idx, [Projection(attn.c_attn, ((0, hd), (width, hd), (2 * width, hd)))],
                        attn.c_proj, hd, attn.num_heads)

    def ffn(self, layer_idx: int) -> Sublayer | None:
        mlp = self.layers()[layer_idx].mlp
        if isinstance(mlp, RemovedMLP):
            return None
        return Sublayer("ffn", layer_idx, [Projection(mlp.c_fc, ((0, 1),))], mlp.c_proj, 1, out_features(mlp.c_fc))

    def dense_intermediate_size(self) -> int:
        return self.config.n_inner if self.config.n_inner is not None else 4 * self.config.hidden_size

    def native_config_fields(self, structure: dict[str, Any]) -> dict[str, Any]:
        layer = structure["layers"][0]
        return {"n_embd": structure["hidden_size"], "n_head": layer["attention_heads"],
                "n_inner": layer["intermediate_size"]}

    def set_attention_units(self, layer_idx: int, num_units: int) -> None:
        attn = self.layers()[layer_idx].attn
        attn.num_heads = num_units
        attn.split_size = num_units * attn.head_dim

    def remove_attention(self, layer_idx: int, keep_bias: bool) -> None:
        layer = self.layers()[layer_idx]
        proj = layer.attn.c_proj
        output = ConstantProjection(out_features(proj), proj.bias if keep_bias else None)
        layer.attn = RemovedAttention("c_proj", output, layer.attn.layer_idx)

    def remove_ffn(self, layer_idx: int, keep_bias: bool) -> None:
        layer = self.layers()[layer_idx]
        proj = layer.mlp.c_proj
        layer.mlp = RemovedMLP("c_proj", ConstantProjection(out_features(proj), proj.bias if keep_bias else None))

    def residual_stream(self) -> ResidualStream:
        norms = []
        for layer in self.layers():
            norms += [layer.ln_1, layer.ln_2]
        norms.append(self.base.ln_f)
        return ResidualStream([self.base.wte, self.base.wpe], norms, self.top_level_consumers())

    def check_supported(self, gate_hidden: bool) -> None:
        if getattr(self.config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (add_cross_attention=True) is not supported by hf-l0.")
