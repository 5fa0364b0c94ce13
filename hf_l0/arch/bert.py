"""BERT-style encoders: bert, roberta, xlm-roberta, electra (post-LayerNorm, separate q/k/v Linears)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..pruning.slicing import out_features
from ..pruning.stand_ins import EmptySelfAttention
from .base import ArchAdapter, Projection, ResidualStream, Sublayer, register_adapter

if TYPE_CHECKING:
    from ..pruning.structure_format import L0Structure

# Task heads whose input is the sequence output (so hidden-dimension pruning slices their input), by class suffix.
# Sequence classification reads either the pooler (BERT) or the first token through ``classifier.dense``
# (RoBERTa, ELECTRA); ``_head_consumers`` tells them apart.
_SEQUENCE_OUTPUT_HEADS = {
    "Model": (),
    "ForSequenceClassification": ("classifier.dense",),
    "ForMultipleChoice": ("sequence_summary.summary",),  # ELECTRA; BERT's classifier reads the pooler
    "ForTokenClassification": ("classifier",),
    "ForQuestionAnswering": ("qa_outputs",),
}


@register_adapter
class BertAdapter(ArchAdapter):
    model_types = ("bert", "roberta", "xlm-roberta", "electra")

    def layers(self) -> list[nn.Module]:
        return list(self.base.encoder.layer)

    def attention(self, layer_idx: int) -> Sublayer | None:
        layer = self.layers()[layer_idx]
        core = layer.attention.self
        if isinstance(core, EmptySelfAttention):
            return None
        hd = core.attention_head_size
        return Sublayer(
            kind="attention",
            layer_idx=layer_idx,
            inputs=[
                Projection(core.query, ((0, hd),)),
                Projection(core.key, ((0, hd),)),
                Projection(core.value, ((0, hd),)),
            ],
            output=layer.attention.output.dense,
            unit_width=hd,
            num_units=core.num_attention_heads,
        )

    def ffn(self, layer_idx: int) -> Sublayer | None:
        layer = self.layers()[layer_idx]
        neurons = out_features(layer.intermediate.dense)
        if neurons == 0:
            return None
        return Sublayer(
            "ffn", layer_idx, [Projection(layer.intermediate.dense, ((0, 1),))], layer.output.dense, 1, neurons
        )

    def native_config_fields(self, structure: L0Structure) -> dict[str, Any]:
        fields = super().native_config_fields(structure)
        if getattr(self.config, "embedding_size", None) == self.config.hidden_size:  # ELECTRA without a projection
            fields["embedding_size"] = structure["hidden_size"]
        return fields

    def set_attention_units(self, layer_idx: int, num_units: int) -> None:
        core = self.layers()[layer_idx].attention.self
        core.num_attention_heads = num_units
        core.all_head_size = num_units * core.attention_head_size

    def remove_attention(self, layer_idx: int, keep_bias: bool) -> None:
        # The output projection stays (0 inputs): BertSelfOutput also holds the residual LayerNorm.
        attention = self.layers()[layer_idx].attention
        attention.self = EmptySelfAttention()
        if not keep_bias:
            attention.output.dense.register_parameter("bias", None)

    def remove_ffn(self, layer_idx: int, keep_bias: bool) -> None:
        # Zero-width intermediate Linears run fine; BertOutput keeps the residual LayerNorm.
        if not keep_bias:
            self.layers()[layer_idx].output.dense.register_parameter("bias", None)

    def _head_consumers(self) -> list[nn.Module]:
        name = type(self.model).__name__
        suffix = next((s for s in _SEQUENCE_OUTPUT_HEADS if name.endswith(s)), None)
        if suffix is None:
            return []
        modules = []
        for path in _SEQUENCE_OUTPUT_HEADS[suffix]:
            try:
                module = self.model.get_submodule(path)
            except AttributeError:
                continue  # e.g. BertForSequenceClassification: its classifier reads the pooler
            if isinstance(module, nn.Identity):  # ELECTRA's summary without projection: the classifier reads it
                module = self.model.classifier
            modules.append(module)
        return modules

    def residual_stream(self) -> ResidualStream:
        emb = self.base.embeddings
        embeddings = [
            m
            for m in (
                emb.word_embeddings,
                getattr(emb, "position_embeddings", None),
                getattr(emb, "token_type_embeddings", None),
            )
            if m is not None
        ]
        norms = [emb.LayerNorm]
        for layer in self.layers():
            norms += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
        consumers = self._head_consumers()
        pooler = getattr(self.base, "pooler", None)
        if pooler is not None:
            consumers.insert(0, pooler.dense)
        return ResidualStream(embeddings, norms, consumers)

    def check_supported(self, gate_hidden: bool) -> None:
        if self.config.is_decoder or getattr(self.config, "add_cross_attention", False):
            raise ValueError(
                f"{type(self.model).__name__}: hf-l0 supports BERT-family encoders only, not decoders "
                "with cross-attention."
            )
        position_type = getattr(self.config, "position_embedding_type", "absolute")
        if position_type not in (None, "absolute"):
            raise ValueError(f"position_embedding_type={position_type!r} is not supported; use 'absolute'.")
        if not gate_hidden:
            return
        name = type(self.model).__name__
        if not any(name.endswith(s) for s in _SEQUENCE_OUTPUT_HEADS):
            raise ValueError(
                f"hidden-dimension gates are not supported on {name}: its head would need its own slicing rule. "
                f"Supported heads: {', '.join('*' + s for s in _SEQUENCE_OUTPUT_HEADS)}; or set hidden=False."
            )
        if hasattr(self.base, "embeddings_project"):
            raise ValueError(
                f"{name} projects embeddings (embedding_size != hidden_size); hidden-dimension gates "
                "are not supported there. Set hidden=False."
            )
