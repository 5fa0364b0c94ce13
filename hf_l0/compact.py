"""Rebuild a compact (pruned) model from ``config.l0_structure`` on a stock transformers model, and check checkpoints.

STANDALONE MODULE: it imports only the standard library, torch and transformers, never ``hf_l0``. hf-l0 uses it
in-process (``hf_l0.build_compact_model``, ``hf_l0.from_pretrained``) and ``hf_l0.save_pretrained`` copies its source
verbatim into a saved directory as ``modeling_hf_l0.py`` (plus a few generated lines that subclass the stock
transformers classes), so that ``AutoModel*.from_pretrained(dir, trust_remote_code=True)`` works where hf-l0 is not
installed. One source for the shape logic: the written file and the library cannot drift apart.

``config.l0_structure`` (format 1)::

    {"format": 1, "hidden_size": d, "head_dim": hd,
     "layers": [{"attention_heads": h, "key_value_heads": u, "attention_output_bias": bool,
                 "intermediate_size": n, "ffn_output_bias": bool}, ...]}

A unit of attention is a head (MHA) or a KV group (GQA: one KV head and its query heads). A sublayer with 0 units
was removed whole and is replaced by a stand-in that returns its (kept) output bias. Rebuilding keeps the *first*
units of every projection: the values are placeholders that loading the compact weights overwrites.
"""

from __future__ import annotations

import json
import os
import struct

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

STRUCTURE_KEY = "l0_structure"
EXPORT_KEY = "l0_export"
MODEL_TYPE_PREFIX = "hf_l0_"
STRUCTURE_FORMAT = 1

BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2")

# BERT-family task heads that read the sequence output (their input shrinks with the hidden size), by class suffix.
BERT_SEQUENCE_OUTPUT_HEADS = {
    "Model": (),
    "ForSequenceClassification": ("classifier.dense",),
    "ForMultipleChoice": (),
    "ForTokenClassification": ("classifier",),
    "ForQuestionAnswering": ("qa_outputs",),
}


# -- stand-ins for sublayers that pruning removed whole ------------------------------------------------------------

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


# -- families -------------------------------------------------------------------------------------------------------

def base_model_type(config) -> str:
    """The stock ``model_type`` of a config (``hf_l0_llama`` -> ``llama``)."""
    model_type = config["model_type"] if isinstance(config, dict) else config.model_type
    return model_type[len(MODEL_TYPE_PREFIX):] if model_type.startswith(MODEL_TYPE_PREFIX) else model_type


def family_of(model_type: str) -> str:
    for family, types in (("bert", BERT_TYPES), ("gpt2", GPT2_TYPES), ("llama", LLAMA_TYPES)):
        if model_type in types:
            return family
    raise ValueError(f"no compact-model rules for model_type={model_type!r}; supported: "
                     f"{', '.join(BERT_TYPES + GPT2_TYPES + LLAMA_TYPES)}.")


def dense_head_dim(config) -> int:
    if family_of(base_model_type(config)) == "llama" and getattr(config, "head_dim", None):
        return config.head_dim
    return config.hidden_size // config.num_attention_heads


def query_heads_per_unit(config) -> int:
    if family_of(base_model_type(config)) == "llama":
        return config.num_attention_heads // (config.num_key_value_heads or config.num_attention_heads)
    return 1


def validate_structure(structure, config, num_layers: int) -> None:
    """Raise a ValueError naming the field when ``structure`` cannot describe a pruning of ``config``."""
    where = f"config.{STRUCTURE_KEY}"
    if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
        found = structure.get("format") if isinstance(structure, dict) else type(structure).__name__
        raise ValueError(f"{where}: unknown format {found!r}; this code reads format {STRUCTURE_FORMAT}.")
    layers = structure.get("layers")
    if not isinstance(layers, list) or len(layers) != num_layers:
        count = len(layers) if isinstance(layers, list) else layers
        raise ValueError(f"{where} describes {count} layers but the config builds {num_layers}.")
    hidden, head_dim = structure.get("hidden_size"), structure.get("head_dim")
    if not isinstance(hidden, int) or not 0 < hidden <= config.hidden_size:
        raise ValueError(f"{where}.hidden_size={hidden!r} must be an int in [1, {config.hidden_size}].")
    if head_dim != dense_head_dim(config):
        raise ValueError(f"{where}.head_dim={head_dim!r} contradicts the config (head_dim {dense_head_dim(config)}).")
    group = query_heads_per_unit(config)
    units = config.num_attention_heads // group
    intermediate = _dense_intermediate(config)
    for i, layer in enumerate(layers):
        for key, limit in (("key_value_heads", units), ("intermediate_size", intermediate)):
            value = layer.get(key)
            if not isinstance(value, int) or not 0 <= value <= limit:
                raise ValueError(f"{where}.layers[{i}].{key}={value!r} must be an int in [0, {limit}].")
        if layer.get("attention_heads") != layer["key_value_heads"] * group:
            raise ValueError(f"{where}.layers[{i}].attention_heads={layer.get('attention_heads')!r} must be "
                             f"key_value_heads x {group} = {layer['key_value_heads'] * group}.")
        for key in ("attention_output_bias", "ffn_output_bias"):
            if not isinstance(layer.get(key), bool):
                raise ValueError(f"{where}.layers[{i}].{key}={layer.get(key)!r} must be true or false.")


def _dense_intermediate(config) -> int:
    if family_of(base_model_type(config)) == "gpt2":
        return config.n_inner if config.n_inner is not None else 4 * config.hidden_size
    return config.intermediate_size


# -- shape surgery (placeholders: keep the first units / dimensions) --------------------------------------------------

def _axes(module: nn.Module) -> tuple[int, int]:
    return (1, 0) if isinstance(module, Conv1D) else (0, 1)


def _param(old: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.clone().contiguous(), requires_grad=old.requires_grad)


@torch.no_grad()
def _resize_linear(module: nn.Module, out_index: torch.Tensor | int | None = None,
                   in_size: int | None = None) -> None:
    """Keep output features ``out_index`` (indices, or a count of leading features) and the first ``in_size``
    input features of a Linear or Conv1D."""
    out_axis, in_axis = _axes(module)
    weight = module.weight
    if out_index is not None:
        if isinstance(out_index, int):
            out_index = torch.arange(out_index)
        weight = weight.index_select(out_axis, out_index.to(weight.device))
        if module.bias is not None:
            module.bias = _param(module.bias, module.bias.index_select(0, out_index.to(weight.device)))
    if in_size is not None:
        weight = weight.narrow(in_axis, 0, in_size)
    module.weight = _param(module.weight, weight)
    if isinstance(module, Conv1D):
        module.nx, module.nf = module.weight.shape
    else:
        module.out_features, module.in_features = module.weight.shape


def _unit_rows(blocks, units: int) -> torch.Tensor:
    """Leading ``units`` of a projection laid out as blocks of (offset, width per unit)."""
    pieces = [torch.arange(offset, offset + units * width) for offset, width in blocks]
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def _resize_norm(norm: nn.Module, size: int) -> None:
    for name in ("weight", "bias"):
        param = getattr(norm, name, None)
        if isinstance(param, torch.Tensor):
            setattr(norm, name, _param(param, param.narrow(0, 0, size)))
    if isinstance(norm, nn.LayerNorm):
        norm.normalized_shape = (size,)


@torch.no_grad()
def _resize_embedding(embedding: nn.Embedding, size: int) -> None:
    embedding.weight = _param(embedding.weight, embedding.weight.narrow(1, 0, size))
    embedding.embedding_dim = size


def _constant(proj: nn.Module, keep_bias: bool, hidden: int) -> ConstantProjection:
    bias = proj.bias.narrow(0, 0, hidden) if keep_bias and proj.bias is not None else None
    return ConstantProjection(hidden, bias)


def _consumers(model: nn.Module, family: str) -> list[nn.Module]:
    """Linear-like modules outside the blocks that read the residual stream (pooler, task heads, lm_head)."""
    base = model.base_model
    hidden = model.config.hidden_size
    if family == "bert":
        modules = []
        pooler = getattr(base, "pooler", None)
        if pooler is not None:
            modules.append(pooler.dense)
        name = type(model).__name__
        suffix = next((s for s in BERT_SEQUENCE_OUTPUT_HEADS if name.endswith(s)), None)
        for path in BERT_SEQUENCE_OUTPUT_HEADS.get(suffix, ()):
            try:
                modules.append(model.get_submodule(path))
            except AttributeError:
                continue  # BertForSequenceClassification: its classifier reads the pooler
        return modules
    return [module for _, module in model.named_children() if module is not base and isinstance(module, nn.Linear)
            and module.weight.shape[1] == hidden]


def apply_structure(model: nn.Module, structure: dict) -> nn.Module:
    """Shrink a freshly built stock ``model`` (dense shapes, any weights, meta device allowed) to ``structure``."""
    config = model.config
    family = family_of(base_model_type(config))
    base = model.base_model
    layers = list(base.encoder.layer if family == "bert" else base.h if family == "gpt2" else base.layers)
    validate_structure(structure, config, len(layers))
    hidden = structure["hidden_size"]
    dense_hidden = config.hidden_size
    head_dim = structure["head_dim"]
    group = query_heads_per_unit(config)
    consumers = _consumers(model, family)
    embeddings = ([m for m in (base.embeddings.word_embeddings, getattr(base.embeddings, "position_embeddings", None),
                               getattr(base.embeddings, "token_type_embeddings", None)) if m is not None]
                  if family == "bert" else [base.wte, base.wpe] if family == "gpt2" else [base.embed_tokens])
    tied = {id(c): e for c in consumers for e in embeddings if c.weight is e.weight}
    if family == "bert" and hidden != dense_hidden and hasattr(base, "embeddings_project"):
        raise ValueError("a BERT-family model with embeddings_project cannot have a pruned hidden size.")
    h_in = hidden if hidden != dense_hidden else None
    h_out = hidden if hidden != dense_hidden else None
    norms = []
    for i, (layer, shape) in enumerate(zip(layers, structure["layers"])):
        units, neurons = shape["key_value_heads"], shape["intermediate_size"]
        if family == "bert":
            attention = layer.attention
            core = attention.self
            for proj in (core.query, core.key, core.value):
                _resize_linear(proj, units * head_dim, h_in)
            _resize_linear(attention.output.dense, h_out, units * head_dim)
            if units == 0:
                attention.self = EmptySelfAttention()
                if not shape["attention_output_bias"]:
                    attention.output.dense.register_parameter("bias", None)
            else:
                core.num_attention_heads = units
                core.all_head_size = units * head_dim
            _resize_linear(layer.intermediate.dense, neurons, h_in)
            _resize_linear(layer.output.dense, h_out, neurons)
            if neurons == 0 and not shape["ffn_output_bias"]:
                layer.output.dense.register_parameter("bias", None)
            norms += [attention.output.LayerNorm, layer.output.LayerNorm]
            continue
        if family == "gpt2":
            attn, mlp = layer.attn, layer.mlp
            width = attn.split_size
            attn_in, attn_out, attn_name, attn_blocks = [attn.c_attn], attn.c_proj, "c_proj", \
                [((0, head_dim), (width, head_dim), (2 * width, head_dim))]
            mlp_in, mlp_out, mlp_name = [mlp.c_fc], mlp.c_proj, "c_proj"
            norms += [layer.ln_1, layer.ln_2]
            attn_attr, mlp_attr = "attn", "mlp"
        else:
            attn, mlp = layer.self_attn, layer.mlp
            attn_in, attn_out, attn_name = [attn.q_proj, attn.k_proj, attn.v_proj], attn.o_proj, "o_proj"
            attn_blocks = [((0, group * head_dim),), ((0, head_dim),), ((0, head_dim),)]
            mlp_in, mlp_out, mlp_name = [mlp.gate_proj, mlp.up_proj], mlp.down_proj, "down_proj"
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
            attn_attr, mlp_attr = "self_attn", "mlp"
        if units == 0:
            stand_in = _constant(attn_out, shape["attention_output_bias"], hidden)
            setattr(layer, attn_attr, RemovedAttention(attn_name, stand_in, getattr(attn, "layer_idx", i)))
        else:
            for proj, blocks in zip(attn_in, attn_blocks):
                _resize_linear(proj, _unit_rows(blocks, units), h_in)
            _resize_linear(attn_out, h_out, units * group * head_dim)
            if family == "gpt2":
                attn.num_heads = units
                attn.split_size = units * head_dim
        if neurons == 0:
            setattr(layer, mlp_attr, RemovedMLP(mlp_name, _constant(mlp_out, shape["ffn_output_bias"], hidden)))
        else:
            for proj in mlp_in:
                _resize_linear(proj, neurons, h_in)
            _resize_linear(mlp_out, h_out, neurons)
    if hidden != dense_hidden:
        if family == "bert":
            norms.append(base.embeddings.LayerNorm)
        else:
            norms.append(base.ln_f if family == "gpt2" else base.norm)
        for embedding in embeddings:
            _resize_embedding(embedding, hidden)
        for norm in norms:
            _resize_norm(norm, hidden)
        for consumer in consumers:
            if id(consumer) in tied:
                consumer.weight = tied[id(consumer)].weight
                consumer.in_features = hidden
            else:
                _resize_linear(consumer, None, hidden)
    return model


# -- checkpoint files -----------------------------------------------------------------------------------------------

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
UNSAFE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def read_safetensors_header(path: str) -> dict:
    """The header of a safetensors file, after checking that every tensor's bytes lie inside the file.

    Raises a ValueError naming the file (and the first tensor that does not fit) for a truncated or corrupt file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header).")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise ValueError(f"{path}: truncated safetensors file: header of {header_len} bytes but the file has "
                             f"{size} bytes.")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            raise ValueError(f"{path}: corrupt safetensors header ({err}).") from None
    data = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > data:
            raise ValueError(f"{path}: truncated safetensors file: tensor {name!r} (shape {info['shape']}) needs "
                             f"bytes {begin}..{end} of the data section but only {data} are present.")
    return header


def checkpoint_files(directory: str) -> dict[str, list[str]]:
    """``{file path: [tensor names]}`` of a directory's safetensors weights (single file or sharded with an index),
    verified: every file exists and is complete, and a sharded index agrees with the shards' contents."""
    single = os.path.join(directory, SAFE_WEIGHTS_NAME)
    index = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map.")
        files: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            files.setdefault(os.path.join(directory, shard), []).append(tensor)
        for path, names in files.items():
            if not os.path.isfile(path):
                raise ValueError(f"{index} lists tensor {names[0]!r} in {path}, which is missing.")
            stored = set(read_safetensors_header(path)) - {"__metadata__"}
            absent = sorted(set(names) - stored)
            if absent:
                raise ValueError(f"{index} lists tensor {absent[0]!r} in {path}, which does not contain it.")
            extra = sorted(stored - set(names))
            if extra:
                raise ValueError(f"{path} holds tensor {extra[0]!r}, which {index} does not list.")
        return files
    if os.path.isfile(single):
        return {single: sorted(set(read_safetensors_header(single)) - {"__metadata__"})}
    unsafe = [name for name in UNSAFE_WEIGHTS if os.path.isfile(os.path.join(directory, name))]
    detail = f" (found {', '.join(unsafe)}: pickled weights are never loaded)" if unsafe else ""
    raise FileNotFoundError(f"{directory} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}{detail}.")


# -- classes for trust_remote_code ----------------------------------------------------------------------------------

class CompactModelMixin:
    """Mix into a stock transformers model class: builds the compact shapes of ``config.l0_structure`` at
    ``__init__`` and loads strictly (a missing or mis-shaped tensor is an error, never a random initialisation)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        structure = getattr(config, STRUCTURE_KEY, None)
        if not structure:
            raise ValueError(f"config.json has no {STRUCTURE_KEY}: it is not an hf-l0 compact model.")
        apply_structure(self, structure)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = str(pretrained_model_name_or_path)
        subfolder = kwargs.get("subfolder") or ""
        if os.path.isdir(os.path.join(path, subfolder)):
            checkpoint_files(os.path.join(path, subfolder))
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              **kwargs)
        where = os.path.join(path, subfolder)
        prefix = model.base_model_prefix
        architectures = getattr(model.config, "architectures", None) or []
        loads_base_of_head = cls.__name__ not in architectures and not hasattr(model, prefix)
        unexpected = sorted(k for k in info.get("unexpected_keys", ())
                            if not (loads_base_of_head and not k.startswith(prefix + ".")))
        problems = [f"missing tensor {k!r}" for k in sorted(info.get("missing_keys", ()))]
        problems += [f"tensor {k[0]!r}: file {tuple(k[1])} vs model {tuple(k[2])}"
                     for k in sorted(info.get("mismatched_keys", ()))]
        problems += [f"unexpected tensor {k!r}" for k in unexpected]
        problems += [str(m) for m in info.get("error_msgs", ())]
        if problems:
            raise ValueError(f"{where}: the weights do not match the structure in config.json "
                             f"({STRUCTURE_KEY}): " + "; ".join(problems))
        return (model, info) if want_info else model
