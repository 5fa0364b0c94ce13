"""What an architecture adapter tells hf-l0 about a model family, and the registry of adapters by ``model_type``.

Like every module the adapters use, it imports only torch, transformers and those modules (never the rest of hf_l0):
``hf_l0.save_pretrained`` copies them into remote-code directories that must load without hf_l0 installed.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import nn

from ..pruning.slicing import base_layer, in_features, out_features
from ..pruning.stand_ins import ConstantProjection, RemovedAttention, RemovedMLP, is_removed

if TYPE_CHECKING:
    from ..pruning.structure_format import L0Structure

SublayerKind = Literal["attention", "ffn"]


@dataclass
class Projection:
    """A linear-like module reading the residual stream whose output features belong to units (heads, neurons).

    ``blocks`` lists (offset, width per unit) along the output features: Llama's ``q_proj`` is ``[(0, g * head_dim)]``,
    GPT-2's fused ``c_attn`` is ``[(0, hd), (d, hd), (2 * d, hd)]``.
    """

    module: nn.Module
    blocks: tuple[tuple[int, int], ...]

    @property
    def width_per_unit(self) -> int:
        return sum(width for _, width in self.blocks)


@dataclass
class Sublayer:
    """An attention or FFN block: unit-owning input projections and one output projection back to the residual."""

    kind: SublayerKind
    layer_idx: int
    inputs: list[Projection]
    output: nn.Module
    unit_width: int  # input features of ``output`` per unit
    num_units: int

    def weights_per_unit(self) -> int:
        """Weight entries per unit and per hidden dimension (inputs' rows plus the output's columns)."""
        return sum(p.width_per_unit for p in self.inputs) + self.unit_width

    def biases_per_unit(self) -> int:
        return sum(p.width_per_unit for p in self.inputs if base_layer(p.module).bias is not None)

    def output_bias(self) -> int:
        return int(base_layer(self.output).bias is not None)


@dataclass
class ResidualStream:
    """Everything that touches the hidden dimension outside the sublayers' own projections."""

    embeddings: list[nn.Embedding]  # their outputs enter the residual stream
    norms: list[nn.Module]  # LayerNorm / RMSNorm on the residual stream
    consumers: list[nn.Module] = field(default_factory=list)  # linear-like modules reading it (pooler, task heads)


class ArchAdapter(ABC):
    """Maps one model family onto sublayers, projections and the residual stream.

    Subclasses set ``model_types`` and implement the abstract methods (an adapter that misses one fails when it is
    registered or built, not in the middle of pruning); registering a family is one file. Decoders whose families
    differ only in attribute names derive from :class:`DecoderAdapter`.
    """

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # the transformers model (inside a peft wrapper, if any)
        self.config = model.config
        self.base = model.base_model

    # -- layout ----------------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @abstractmethod
    def layers(self) -> list[nn.Module]:
        """The transformer layers, in order."""

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    @abstractmethod
    def attention(self, layer_idx: int) -> Sublayer | None:
        """The attention sublayer, or None when pruning already removed it."""

    @abstractmethod
    def ffn(self, layer_idx: int) -> Sublayer | None:
        """The FFN sublayer, or None when pruning already removed it."""

    @abstractmethod
    def residual_stream(self) -> ResidualStream:
        """Embeddings, norms and linear heads along the hidden dimension."""

    def query_heads_per_unit(self) -> int:
        """Query heads covered by one attention gate (1 for MHA, the KV group size for GQA)."""
        return 1

    def head_dim(self) -> int:
        return self.config.hidden_size // self.config.num_attention_heads

    def dense_intermediate_size(self) -> int:
        """FFN neurons per layer of the dense model, as the config describes it."""
        return self.config.intermediate_size

    def native_config_fields(self, structure: L0Structure) -> dict[str, Any]:
        """Stock config fields that describe ``structure`` when all its layers share one shape (native export)."""
        layer = structure["layers"][0]
        return {
            "hidden_size": structure["hidden_size"],
            "num_attention_heads": layer["attention_heads"],
            "intermediate_size": layer["intermediate_size"],
        }

    # -- surgery -----------------------------------------------------------------------------------------------------
    def set_attention_units(self, layer_idx: int, num_units: int) -> None:  # noqa: B027 (optional hook)
        """Update the attention module's own attributes after its projections were sliced to ``num_units``."""

    @abstractmethod
    def remove_attention(self, layer_idx: int, keep_bias: bool) -> None:
        """Replace a whole attention sublayer by a stand-in returning its output bias (``keep_bias``) or zeros."""

    @abstractmethod
    def remove_ffn(self, layer_idx: int, keep_bias: bool) -> None:
        """Replace a whole FFN sublayer by a stand-in returning its output bias (``keep_bias``) or zeros."""

    def can_drop_layers(self) -> bool:
        """Whether a layer whose two sublayers both output zero can leave the model (it is then the identity)."""
        return False

    def layer_norms(self, layer_idx: int) -> list[nn.Module]:
        """The residual norms inside a layer (they leave with it when the layer is dropped)."""
        return []

    def drop_layers(self, indices: list[int]) -> None:
        """Remove the layers at ``indices`` and renumber the rest (only when :meth:`can_drop_layers`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot drop layers.")

    # -- checks ------------------------------------------------------------------------------------------------------
    def check_supported(self, gate_hidden: bool) -> None:  # noqa: B027 (optional hook)
        """Raise a clear error when this particular model can't be gated as asked."""

    def top_level_consumers(self) -> list[nn.Module]:
        """Linear task heads of a decoder (lm_head, score, ...): direct children reading the final hidden states."""
        return [
            module
            for name, module in self.model.named_children()
            if module is not self.base
            and hasattr(module, "weight")
            and isinstance(module, nn.Linear)
            and in_features(module) == self.hidden_size
        ]


class DecoderAdapter(ArchAdapter):
    """A pre-norm decoder whose family differs from the others only in attribute names (GPT-2, Llama, ...).

    Subclasses name the attributes and describe their sublayers (:meth:`attention`, :meth:`ffn`: the projections and
    their unit blocks are the family's own); removal and the residual stream follow from the names. A removed
    sublayer becomes a :class:`RemovedAttention` / :class:`RemovedMLP` stand-in holding the output projection's bias.
    """

    layers_attr: ClassVar[str]  # on the base model: the ModuleList of layers
    attention_attr: ClassVar[str]  # on a layer: the attention module ...
    attention_output_attr: ClassVar[str]  # ... and on it, its output projection
    ffn_attr: ClassVar[str]
    ffn_output_attr: ClassVar[str]
    layer_norm_attrs: ClassVar[tuple[str, ...]]  # on a layer: the residual norms, in order
    final_norm_attr: ClassVar[str]  # on the base model
    embedding_attrs: ClassVar[tuple[str, ...]]  # on the base model: embeddings whose outputs enter the stream

    def layers(self) -> list[nn.Module]:
        return list(getattr(self.base, self.layers_attr))

    def attention_module(self, layer_idx: int) -> nn.Module | None:
        """The layer's attention module, or None when pruning removed it."""
        module = getattr(self.layers()[layer_idx], self.attention_attr)
        return None if is_removed(module, "attention") else module

    def ffn_module(self, layer_idx: int) -> nn.Module | None:
        module = getattr(self.layers()[layer_idx], self.ffn_attr)
        return None if is_removed(module, "ffn") else module

    def remove_attention(self, layer_idx: int, keep_bias: bool) -> None:
        layer = self.layers()[layer_idx]
        attention = getattr(layer, self.attention_attr)
        proj = getattr(attention, self.attention_output_attr)
        output = ConstantProjection(out_features(proj), proj.bias if keep_bias else None)
        setattr(layer, self.attention_attr, RemovedAttention(self.attention_output_attr, output, attention.layer_idx))

    def remove_ffn(self, layer_idx: int, keep_bias: bool) -> None:
        layer = self.layers()[layer_idx]
        proj = getattr(getattr(layer, self.ffn_attr), self.ffn_output_attr)
        output = ConstantProjection(out_features(proj), proj.bias if keep_bias else None)
        setattr(layer, self.ffn_attr, RemovedMLP(self.ffn_output_attr, output))

    def can_drop_layers(self) -> bool:
        # Pre-norm: a layer adds its sublayers' outputs to the residual stream, so with both at zero it is the
        # identity, norms included (their outputs only feed the removed sublayers).
        return True

    def drop_layers(self, indices: list[int]) -> None:
        """Remove the layers at ``indices``; the others are renumbered so the KV cache stays dense, and the config's
        ``num_hidden_layers`` (and ``layer_types``, which the cache and masks read per layer) follow."""
        drop = set(indices)
        layers = getattr(self.base, self.layers_attr)
        kept = [layer for i, layer in enumerate(layers) if i not in drop]
        for new_idx, layer in enumerate(kept):
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = new_idx
            attention = getattr(layer, self.attention_attr)
            if getattr(attention, "layer_idx", None) is not None:
                attention.layer_idx = new_idx
        setattr(self.base, self.layers_attr, nn.ModuleList(kept))
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None:
            self.config.layer_types = [t for i, t in enumerate(layer_types) if i not in drop]
        self.config.num_hidden_layers = len(kept)

    def layer_norms(self, layer_idx: int) -> list[nn.Module]:
        layer = self.layers()[layer_idx]
        return [getattr(layer, name) for name in self.layer_norm_attrs]

    def residual_stream(self) -> ResidualStream:
        norms = [norm for i in range(self.num_layers) for norm in self.layer_norms(i)]
        norms.append(getattr(self.base, self.final_norm_attr))
        embeddings = [getattr(self.base, name) for name in self.embedding_attrs]
        return ResidualStream(embeddings, norms, self.top_level_consumers())


ADAPTERS: dict[str, type[ArchAdapter]] = {}
# Remote-code directories rename ``model_type`` so that stock transformers refuses them instead of building the dense
# model: ``hf_l0_llama`` is a compact ``llama``.
MODEL_TYPE_PREFIX = "hf_l0_"


def base_model_type(config: Any) -> str:
    """The stock ``model_type`` of a config object or dict (``hf_l0_llama`` -> ``llama``)."""
    model_type = config["model_type"] if isinstance(config, dict) else config.model_type
    return model_type.removeprefix(MODEL_TYPE_PREFIX)


def register_adapter(cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Class decorator: make ``cls`` the adapter of every ``model_type`` it names (a ``TypeError`` when it misses an
    abstract method or names none)."""
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"{cls.__name__} cannot be registered: it does not implement {missing} (see ArchAdapter).")
    if not cls.model_types:
        raise TypeError(f"{cls.__name__} cannot be registered: it names no model_types.")
    for model_type in cls.model_types:
        ADAPTERS[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    """The ``model_type`` values that have an adapter, sorted."""
    return sorted(ADAPTERS)


def get_adapter(model: nn.Module) -> ArchAdapter:
    """The adapter of ``model``'s family, chosen by its config's ``model_type`` (compact remote-code types
    included); a ``ValueError`` naming the supported types otherwise."""
    config = getattr(model, "config", None)
    model_type = base_model_type(config) if getattr(config, "model_type", None) else None
    if model_type not in ADAPTERS:
        raise ValueError(
            f"hf-l0 has no adapter for model_type={model_type!r} ({type(model).__name__}). Supported model types: "
            f"{', '.join(supported_model_types())}. To add a family, write an ArchAdapter in hf_l0/arch/ and decorate "
            "it with @register_adapter."
        )
    return ADAPTERS[model_type](model)
