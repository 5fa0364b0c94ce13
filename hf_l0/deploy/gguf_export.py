"""Export a compact Llama-family causal LM to GGUF for llama.cpp, as its ``deci`` architecture.

``deci`` (DeciLM / Llama-3.1-Nemotron-NAS) reads the query heads, KV heads and FFN width of every layer from
per-layer arrays, so every shape hf-l0 makes on llama / mistral / qwen2 is expressible. Two details of llama.cpp's
graph (``src/models/deci.cpp``) decide how removed sublayers are written:

* A layer with ``n_ff == 0`` ends in ``continue`` before the attention output is added to the residual stream, so
  the layer's attention is computed and then dropped. A removed FFN is therefore written as a zero FFN of width 1
  (zero gate / up / down weights: its output is exactly 0, plus the kept output bias, if any), never as width 0.
* A layer with ``n_head == 0`` passes the residual stream through unchanged, which is what a removed attention does
  in hf-l0 unless it kept a nonzero output bias. llama.cpp also derives the head size from layer 0's head count
  (``n_embd / n_head(0)``, with ``attention.key_length`` overriding only when layer 0 has heads). So a removed
  attention in layer 0, or one whose output bias survived, is written as one zero head (zero Q / K / V / output
  weights: output exactly 0, plus the bias).

Rotary embeddings: llama.cpp's ``deci`` applies interleaved RoPE, so Q and K rows are permuted per head as
llama.cpp's own converter does.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..arch.base import base_model_type
from ..patch import is_patched, transformers_model
from ..stand_ins import is_removed

ARCH = "deci"
MODEL_TYPES = ("llama", "mistral", "qwen2")
INSTALL_HINT = 'pip install "hf-l0[deploy]"'


@dataclass
class GgufLayer:
    """What one layer of the GGUF holds (the shapes llama.cpp reads; stand-ins included)."""

    heads: int
    kv_heads: int
    ffn: int
    zero_attention: bool = False  # a removed attention written as one zero head
    zero_ffn: bool = False  # a removed FFN written as a zero FFN of width 1


@dataclass
class GgufExport:
    path: Path
    dtype: str
    layers: list[GgufLayer] = field(default_factory=list)
    tokenizer: str = "placeholder"


def _permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's half-split rotary layout -> GGML's interleaved pairs, per head (rows of q/k weights or biases)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _rope_metadata(config: Any, head_dim: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """RoPE keys and, for llama3 scaling, the per-frequency factors tensor (as llama.cpp's converter computes it)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", "default")
    keys: dict[str, Any] = {"freq_base": float(theta)}
    if rope_type == "default":
        return keys, None
    if rope_type == "linear":
        keys["scaling"] = ("linear", float(params["factor"]))
        return keys, None
    if rope_type == "llama3":
        freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        factor = params.get("factor", 8.0)
        low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
        old_context = params.get("original_max_position_embeddings", 8192)
        low_wavelen, high_wavelen = old_context / low, old_context / high
        factors = []
        for freq in freqs:
            wavelen = 2 * np.pi / freq
            if wavelen < high_wavelen:
                factors.append(1.0)
            elif wavelen > low_wavelen:
                factors.append(factor)
            else:
                smooth = (old_context / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return keys, np.asarray(factors, dtype=np.float32)
    raise ValueError(f"rope_type={rope_type!r} has no GGUF export here (supported: default, linear, llama3).")


def _array(tensor: torch.Tensor | None, dtype: np.dtype) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy().astype(dtype)


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach()


def gguf_layers(model: nn.Module) -> list[GgufLayer]:
    """The per-layer shapes the GGUF of ``model`` gets (removed sublayers as their stand-ins)."""
    head_dim = _head_dim(model)
    layers = []
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if is_removed(attn, "attention"):
            zero = i == 0 or _bias(attn.o_proj) is not None
            heads = kv = 1 if zero else 0
        else:
            zero, heads, kv = False, attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
        removed_ffn = is_removed(mlp, "ffn")
        ffn = 1 if removed_ffn else mlp.up_proj.out_features
        layers.append(GgufLayer(heads, kv, ffn, zero_attention=zero, zero_ffn=removed_ffn))
    return layers


def _head_dim(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_model(model: nn.Module) -> None:
    if is_patched(model):
        raise ValueError(
            "the model still carries L0 gates: call hf_l0.prune_model(model) first and export the "
            "compact model it returns."
        )
    model_type = base_model_type(model.config) if getattr(model.config, "model_type", None) else None
    if model_type not in MODEL_TYPES or not hasattr(model, "lm_head"):
        raise ValueError(
            f"GGUF export supports causal LMs of the Llama family ({', '.join(MODEL_TYPES)}), loaded with "
            f"AutoModelForCausalLM; got {type(model).__name__} (model_type={model_type!r}). Export "
            "encoders and other families with hf_l0.export_onnx."
        )
    act = getattr(model.config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r}: llama.cpp's deci architecture computes a SiLU-gated FFN only.")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: str | os.PathLike, prefix: str = "") -> dict[str, tuple[Any, int, int | None]]:
    """``{key: (value, value type, array item type)}`` of a GGUF file's metadata whose keys start with ``prefix``.

    Reads the key-value section only, in plain Python: ``gguf.GGUFReader`` also maps every tensor and builds one
    array per vocabulary entry, which takes tens of seconds for a 49k-token vocabulary on a busy CPU.
    """
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24 or header[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file.")
        version, _, kv_count = struct.unpack("<IQQ", header[4:])
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} (a big-endian or unknown file); this reads versions 2-3.")

        def read(fmt: str):
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, f.read(size))[0]

        def string() -> str:
            return f.read(read("<Q")).decode("utf-8")

        def value(vtype: int):
            if vtype == _STRING:
                return string()
            if vtype in _SCALARS:
                return read(_SCALARS[vtype])
            raise ValueError(f"{path}: unknown GGUF value type {vtype}.")

        metadata = {}
        for _ in range(kv_count):
            key, vtype = string(), read("<I")
            if vtype == _ARRAY:
                item_type, count = read("<I"), read("<Q")
                if item_type in _SCALARS:
                    fmt = _SCALARS[item_type]
                    items = list(struct.unpack(f"<{count}{fmt[1]}", f.read(count * struct.calcsize(fmt))))
                else:
                    items = [value(item_type) for _ in range(count)]
                entry = (items, vtype, item_type)
            else:
                entry = (value(vtype), vtype, None)
            if key.startswith(prefix):
                metadata[key] = entry
    return metadata


def _tokenizer_fields(source: str | os.PathLike, vocab_size: int) -> list[tuple[str, Any, Any, Any]]:
    """``(key, value, type, item type)`` of every ``tokenizer.*`` field of a GGUF file, and ``general.name``."""
    import gguf

    metadata = read_gguf_metadata(source)
    metadata = {k: v for k, v in metadata.items() if k.startswith("tokenizer.") or k == "general.name"}
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"{source} has no tokenizer.ggml.tokens: it carries no tokenizer to copy.")
    if len(tokens[0]) != vocab_size:
        raise ValueError(
            f"{source} has {len(tokens[0])} tokens but the model's vocabulary has {vocab_size} rows: "
            "pass the GGUF file the model was loaded from."
        )
    return [
        (key, value, gguf.GGUFValueType(vtype), None if sub is None else gguf.GGUFValueType(sub))
        for key, (value, vtype, sub) in metadata.items()
    ]


def _placeholder_tokenizer(writer: Any, config: Any) -> None:
    """A SentencePiece-type vocabulary of placeholder pieces ``<id N>``: enough for llama.cpp to load the model and
    run it on token ids (tokenize with the original tokenizer)."""
    import gguf

    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<id {i}>" for i in range(config.vocab_size)])
    writer.add_token_scores([0.0] * config.vocab_size)
    writer.add_token_types([gguf.TokenType.NORMAL] * config.vocab_size)
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 <= value < config.vocab_size:
            add(value)
    writer.add_add_bos_token(False)


@torch.no_grad()
def export_gguf(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    dtype: str = "f32",
    tokenizer_gguf: str | os.PathLike | None = None,
    name: str | None = None,
) -> GgufExport:
    """Write a compact (or dense) Llama-family causal LM to the GGUF file ``path`` for llama.cpp (architecture
    ``deci``: per-layer query heads, KV heads and FFN widths; removed sublayers as exact zero stand-ins, see the module
    docstring).

    ``dtype`` is ``"f32"`` or ``"f16"`` for the matrices (norms, biases and RoPE factors stay f32, as in llama.cpp's
    converter); quantize further with llama.cpp's ``llama-quantize``. Tokenizer: ``tokenizer_gguf`` names a GGUF file
    whose ``tokenizer.*`` metadata is copied verbatim (the file the model was loaded from with ``gguf_file=``);
    without it the file gets placeholder pieces and runs on token ids only. The write is atomic.
    """
    import gguf

    model = transformers_model(model)
    _check_model(model)
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype={dtype!r}: choose 'f32' or 'f16' (quantize the f16 file with llama-quantize).")
    path = Path(path)
    config = model.config
    head_dim = _head_dim(model)
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim} is odd: RoPE needs pairs of dimensions.")
    matrix = np.float16 if dtype == "f16" else np.float32
    layers = gguf_layers(model)
    hidden = model.model.embed_tokens.weight.shape[1]
    tokenizer_fields = _tokenizer_fields(tokenizer_gguf, config.vocab_size) if tokenizer_gguf is not None else None
    rope, rope_factors = _rope_metadata(config, head_dim)
    context = config.max_position_embeddings
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if window:
        # deci has no sliding window: a context of at most the window computes exactly what the model does.
        context = min(context, window)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=ARCH)
        writer.add_type(gguf.GGUFType.MODEL)
        source_name = next((v for k, v, _, _ in tokenizer_fields or () if k == "general.name"), None)
        default_name = f"{source_name} (hf-l0 compact)" if source_name else f"hf-l0 compact {base_model_type(config)}"
        writer.add_name(name or default_name)
        writer.add_block_count(len(layers))
        writer.add_context_length(context)
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length([layer.ffn for layer in layers])
        writer.add_head_count([layer.heads for layer in layers])
        writer.add_head_count_kv([layer.kv_heads for layer in layers])
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope["freq_base"])
        if "scaling" in rope:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["scaling"][1])
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        if tokenizer_fields is None:
            _placeholder_tokenizer(writer, config)
        else:
            for key, value, vtype, sub_type in tokenizer_fields:
                if key.startswith("tokenizer."):
                    writer.add_key_value(key, value, vtype, sub_type)

        def add(tensor_name: str, value: torch.Tensor | np.ndarray, is_matrix: bool) -> None:
            array = value if isinstance(value, np.ndarray) else _array(value, np.float32)
            writer.add_tensor(tensor_name, array.astype(matrix if is_matrix else np.float32))

        embed = model.model.embed_tokens.weight
        add("token_embd.weight", embed, True)
        add("output_norm.weight", model.model.norm.weight, False)
        if model.lm_head.weight.data_ptr() != embed.data_ptr():  # tied: llama.cpp reuses token_embd
            add("output.weight", model.lm_head.weight, True)
        if rope_factors is not None:
            add("rope_freqs.weight", rope_factors, False)
        for i, (layer, shape) in enumerate(zip(model.model.layers, layers)):
            _add_attention(add, i, layer, shape, hidden, head_dim)
            _add_ffn(add, i, layer, shape, hidden)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return GgufExport(path, dtype, layers, "placeholder" if tokenizer_fields is None else str(tokenizer_gguf))


def _add_attention(add, i: int, layer: nn.Module, shape: GgufLayer, hidden: int, head_dim: int) -> None:
    attn, prefix = layer.self_attn, f"blk.{i}"
    if shape.heads == 0:
        return  # no tensors: llama.cpp passes the residual stream through
    add(f"{prefix}.attn_norm.weight", layer.input_layernorm.weight, False)
    if shape.zero_attention:
        zeros = torch.zeros(head_dim, hidden)
        for proj in ("attn_q", "attn_k", "attn_v"):
            add(f"{prefix}.{proj}.weight", zeros, True)
        add(f"{prefix}.attn_output.weight", zeros.T.contiguous(), True)
        bias = _bias(attn.o_proj)
        if bias is not None:
            add(f"{prefix}.attn_output.bias", bias, False)
        return
    add(f"{prefix}.attn_q.weight", _permute(attn.q_proj.weight, shape.heads), True)
    add(f"{prefix}.attn_k.weight", _permute(attn.k_proj.weight, shape.kv_heads), True)
    add(f"{prefix}.attn_v.weight", attn.v_proj.weight, True)
    add(f"{prefix}.attn_output.weight", attn.o_proj.weight, True)
    for proj, module, heads in (
        ("attn_q", attn.q_proj, shape.heads),
        ("attn_k", attn.k_proj, shape.kv_heads),
        ("attn_v", attn.v_proj, None),
        ("attn_output", attn.o_proj, None),
    ):
        bias = _bias(module)
        if bias is not None:
            add(f"{prefix}.{proj}.bias", bias if heads is None else _permute(bias, heads), False)


def _add_ffn(add, i: int, layer: nn.Module, shape: GgufLayer, hidden: int) -> None:
    mlp, prefix = layer.mlp, f"blk.{i}"
    add(f"{prefix}.ffn_norm.weight", layer.post_attention_layernorm.weight, False)
    if shape.zero_ffn:
        add(f"{prefix}.ffn_gate.weight", torch.zeros(1, hidden), True)
        add(f"{prefix}.ffn_up.weight", torch.zeros(1, hidden), True)
        add(f"{prefix}.ffn_down.weight", torch.zeros(hidden, 1), True)
        bias = _bias(mlp.down_proj)
        if bias is not None:
            add(f"{prefix}.ffn_down.bias", bias, False)
        return
    for proj, module in (("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj), ("ffn_down", mlp.down_proj)):
        add(f"{prefix}.{proj}.weight", module.weight, True)
        bias = _bias(module)
        if bias is not None:
            add(f"{prefix}.{proj}.bias", bias, False)
