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

Quantized types (``q8_0``, ``q5_0``, ``q4_0``, ``q4_1``, written with gguf-py's ``gguf.quants``) store a matrix in
blocks of 32 along its rows, and llama.cpp refuses a row length that is not a multiple of the block. A row is a
matrix's input dimension, and pruned widths are arbitrary, so the export pads with exact zero units:

* FFN width: zero neurons (zero gate / up rows and biases, zero down columns): ``silu(0) * 0 = 0``.
* Query heads (the input of the attention output): zero query heads, placed inside the KV groups so that llama.cpp's
  grouping (``head // (n_head / n_kv)``) still pairs every real head with its own KV head; a zero head attends
  uniformly and its zero output columns drop the result.
* Hidden size (the input of embeddings, Q / K / V, gate / up and the output head): zero dimensions in every tensor
  that writes the residual stream, so they stay 0. RMSNorm would then average over more dimensions; writing
  ``eps * n / n'`` as the epsilon and scaling every norm weight by ``sqrt(n / n')`` gives exactly the unpadded norm:
  ``x / sqrt(S / n' + eps n / n') * sqrt(n / n') = x / sqrt(S / n + eps)``.

The symmetric types (``q8_0``, ``q5_0``, ``q4_0``) store 0 exactly, so the padding changes nothing. ``q4_1`` stores a
block offset, so a zero pad sharing a block with real weights comes back nonzero: it is written only when no hidden
or head padding is needed (FFN padding stays exact: padded neurons are whole zero rows and multiply an exact 0).
"""

from __future__ import annotations

import logging
import math
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
from ..gates.patch import is_patched, transformers_model
from ..pruning.stand_ins import is_removed

logger = logging.getLogger(__name__)

ARCH = "deci"
MODEL_TYPES = ("llama", "mistral", "qwen2")
INSTALL_HINT = 'pip install "hf-l0[deploy]"'


# Matrix types: name -> (gguf type name, llama.cpp file type name, block size along a row, zero padding exact in
# blocks shared with real weights).
MATRIX_TYPES = {
    "f32": ("F32", "ALL_F32", 1, True),
    "f16": ("F16", "MOSTLY_F16", 1, True),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0", 32, True),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0", 32, True),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0", 32, True),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1", 32, False),
}


@dataclass
class GgufLayer:
    """What one layer of the GGUF holds (the shapes llama.cpp reads; stand-ins and zero padding included)."""

    heads: int
    kv_heads: int
    ffn: int
    zero_attention: bool = False  # a removed attention written as one zero head
    zero_ffn: bool = False  # a removed FFN written as a zero FFN of width 1
    pad_heads: int = 0  # zero query heads added so that heads * head_dim is a multiple of the block
    pad_ffn: int = 0  # zero FFN neurons added so that the FFN width is a multiple of the block


@dataclass
class GgufExport:
    """The written file: its matrix type, per-layer shapes, hidden size, and the zero padding it carries."""

    path: Path
    dtype: str
    layers: list[GgufLayer] = field(default_factory=list)
    tokenizer: str = "placeholder"
    hidden: int = 0  # embedding length written (pad_hidden included)
    pad_hidden: int = 0  # zero hidden dimensions added
    matrix_weights: int = 0  # weights of all matrices written (padding included)
    padding_weights: int = 0  # of those, zero padding

    @property
    def padding(self) -> dict[str, int]:
        """Zero units the export added: hidden dimensions, query heads and FFN neurons (summed over layers)."""
        return {
            "hidden": self.pad_hidden,
            "heads": sum(layer.pad_heads for layer in self.layers),
            "ffn": sum(layer.pad_ffn for layer in self.layers),
            "weights": self.padding_weights,
        }


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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _padded_heads(heads: int, kv_heads: int, head_dim: int, multiple: int) -> int:
    """The fewest query heads >= ``heads`` that fill whole KV groups and make ``heads * head_dim`` a multiple."""
    step = kv_heads * multiple // math.gcd(kv_heads * head_dim, multiple)  # heads * head_dim % multiple == 0
    return _round_up(heads, step)


def gguf_layers(model: nn.Module, pad_to: int = 1) -> list[GgufLayer]:
    """The per-layer shapes the GGUF of ``model`` gets (removed sublayers as their stand-ins), with the query heads
    and FFN widths zero-padded to multiples of ``pad_to`` (the block size of a quantized type; 1: none)."""
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
        padded_heads = _padded_heads(heads, kv, head_dim, pad_to) if heads else 0
        padded_ffn = _round_up(ffn, pad_to)
        layers.append(
            GgufLayer(
                padded_heads,
                kv,
                padded_ffn,
                zero_attention=zero,
                zero_ffn=removed_ffn,
                pad_heads=padded_heads - heads,
                pad_ffn=padded_ffn - ffn,
            )
        )
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


class _Padding:
    """Zero-pads one layer's tensors to the written shapes and counts the padding weights of the matrices."""

    def __init__(self, hidden: int, padded_hidden: int, head_dim: int) -> None:
        self.hidden, self.padded_hidden, self.head_dim = hidden, padded_hidden, head_dim
        self.matrix_weights = self.padding_weights = 0

    def matrix(self, weight: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
        """``weight`` in the top-left corner of a zero ``rows x cols`` matrix (the hidden size where one is None)."""
        rows = self.padded_hidden if rows is None else rows
        cols = self.padded_hidden if cols is None else cols
        out = weight.new_zeros(rows, cols, dtype=torch.float32)
        out[: weight.shape[0], : weight.shape[1]] = weight
        self.matrix_weights += out.numel()
        self.padding_weights += out.numel() - weight.numel()
        return out

    def vector(self, values: torch.Tensor, length: int | None = None) -> torch.Tensor:
        out = values.new_zeros(self.padded_hidden if length is None else length, dtype=torch.float32)
        out[: values.shape[0]] = values
        return out

    def norm(self, weight: torch.Tensor) -> torch.Tensor:
        """An RMSNorm weight for the padded hidden size (see the module docstring: the epsilon is scaled to match)."""
        return self.vector(weight.float() * math.sqrt(self.hidden / self.padded_hidden))

    def head_index(self, heads: int, kv_heads: int, padded_heads: int) -> torch.Tensor:
        """Where each real query head goes among ``padded_heads``: the first slots of its own KV group."""
        group, padded_group = heads // kv_heads, padded_heads // kv_heads
        real = torch.arange(heads)
        return real // group * padded_group + real % group

    def heads(self, rows: torch.Tensor, index: torch.Tensor, padded_heads: int) -> torch.Tensor:
        """Per-head rows (dim 0: heads * head_dim, any trailing dims) moved to their padded head slots."""
        out = rows.new_zeros(padded_heads, self.head_dim, *rows.shape[1:], dtype=torch.float32)
        out[index] = rows.float().reshape(len(index), self.head_dim, *rows.shape[1:])
        if rows.dim() == 2:  # a matrix (not a bias): its zero heads are padding weights
            self.padding_weights += out.numel() - rows.numel()
        return out.reshape(padded_heads * self.head_dim, *rows.shape[1:])


def _matrix_type(dtype: str, pad_to: int | None) -> tuple[Any, Any, int, bool]:
    import gguf

    if dtype not in MATRIX_TYPES:
        raise ValueError(
            f"dtype={dtype!r}: choose one of {', '.join(MATRIX_TYPES)} (the quantized types are written with gguf-py; "
            "for K-quants, quantize the f16 file with llama-quantize)."
        )
    type_name, file_type, block, zero_exact = MATRIX_TYPES[dtype]
    pad_to = block if pad_to is None else pad_to
    if not isinstance(pad_to, int) or pad_to < 1 or pad_to % block:
        raise ValueError(
            f"pad_to={pad_to!r}: {dtype} needs a positive multiple of its block size {block} (the row length of "
            "every quantized matrix must be one)."
        )
    return gguf.GGMLQuantizationType[type_name], gguf.LlamaFileType[file_type], pad_to, zero_exact


@torch.no_grad()
def export_gguf(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    dtype: str = "f32",
    tokenizer_gguf: str | os.PathLike | None = None,
    name: str | None = None,
    pad_to: int | None = None,
) -> GgufExport:
    """Write a compact (or dense) Llama-family causal LM to the GGUF file ``path`` for llama.cpp (architecture
    ``deci``: per-layer query heads, KV heads and FFN widths; removed sublayers as exact zero stand-ins, see the module
    docstring).

    ``dtype`` is the type of the matrices: ``"f32"``, ``"f16"``, or quantized ``"q8_0"``, ``"q5_0"``, ``"q4_0"``,
    ``"q4_1"`` (like ``llama-quantize --pure``: every matrix, embeddings and output head included; norms, biases and
    RoPE factors stay f32). Quantized types need row lengths that are multiples of their block (32): hidden size, query
    heads and FFN widths are zero-padded to multiples of ``pad_to`` (default: the block size; 1 for f32 / f16), which
    computes exactly the same model (module docstring); the result's ``padding`` reports what was added, and it is
    logged. Tokenizer: ``tokenizer_gguf`` names a GGUF file whose ``tokenizer.*`` metadata is copied verbatim (the
    file the model was loaded from with ``gguf_file=``); without it the file gets placeholder pieces and runs on token
    ids only. The write is atomic.
    """
    import gguf

    model = transformers_model(model)
    _check_model(model)
    qtype, file_type, pad_to, zero_exact = _matrix_type(dtype, pad_to)
    path = Path(path)
    config = model.config
    head_dim = _head_dim(model)
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim} is odd: RoPE needs pairs of dimensions.")
    layers = gguf_layers(model, pad_to)
    hidden = model.model.embed_tokens.weight.shape[1]
    padded_hidden = _round_up(hidden, pad_to)
    if not zero_exact:
        _check_offset_type_padding(dtype, model, layers, hidden, padded_hidden, head_dim)
    padding = _Padding(hidden, padded_hidden, head_dim)
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
        writer.add_embedding_length(padded_hidden)
        writer.add_feed_forward_length([layer.ffn for layer in layers])
        writer.add_head_count([layer.heads for layer in layers])
        writer.add_head_count_kv([layer.kv_heads for layer in layers])
        # Zero hidden padding: RMSNorm over n' = n + pad dimensions equals the unpadded one with eps * n / n' (and norm
        # weights scaled by sqrt(n / n'), see _Padding.norm).
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps) * hidden / padded_hidden)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope["freq_base"])
        if "scaling" in rope:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["scaling"][1])
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(file_type)
        if tokenizer_fields is None:
            _placeholder_tokenizer(writer, config)
        else:
            for key, value, vtype, sub_type in tokenizer_fields:
                if key.startswith("tokenizer."):
                    writer.add_key_value(key, value, vtype, sub_type)

        def add(tensor_name: str, value: torch.Tensor | np.ndarray, is_matrix: bool) -> None:
            array = value if isinstance(value, np.ndarray) else _array(value, np.float32)
            array = np.ascontiguousarray(array, dtype=np.float32)
            if not is_matrix or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor_name, array)
            elif qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(tensor_name, array.astype(np.float16))
            else:
                writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)

        embed = model.model.embed_tokens.weight
        add("token_embd.weight", padding.matrix(embed, rows=embed.shape[0]), True)
        add("output_norm.weight", padding.norm(model.model.norm.weight), False)
        if model.lm_head.weight.data_ptr() != embed.data_ptr():  # tied: llama.cpp reuses token_embd
            add("output.weight", padding.matrix(model.lm_head.weight, rows=model.lm_head.weight.shape[0]), True)
        if rope_factors is not None:
            add("rope_freqs.weight", rope_factors, False)
        for i, (layer, shape) in enumerate(zip(model.model.layers, layers)):
            _add_attention(add, padding, i, layer, shape)
            _add_ffn(add, padding, i, layer, shape)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    result = GgufExport(
        path,
        dtype,
        layers,
        "placeholder" if tokenizer_fields is None else str(tokenizer_gguf),
        hidden=padded_hidden,
        pad_hidden=padded_hidden - hidden,
        matrix_weights=padding.matrix_weights,
        padding_weights=padding.padding_weights,
    )
    if result.padding_weights:
        added = result.padding
        logger.info(
            "%s: zero padding to multiples of %d for %s: %d hidden dimensions, %d query heads, %d FFN neurons "
            "(%.1f%% of the matrix weights)",
            path,
            pad_to,
            dtype,
            added["hidden"],
            added["heads"],
            added["ffn"],
            100 * result.padding_weights / result.matrix_weights,
        )
    return result


def _check_offset_type_padding(
    dtype: str, model: nn.Module, layers: list[GgufLayer], hidden: int, padded_hidden: int, head_dim: int
) -> None:
    """Refuse padding that shares a block with real weights in a type with block offsets (q4_1): it would not stay 0."""
    mixed = [f"hidden size {hidden} -> {padded_hidden}"] if padded_hidden != hidden else []
    for i, shape in enumerate(layers):
        if shape.pad_heads and not shape.zero_attention:
            real = shape.heads - shape.pad_heads
            mixed.append(f"layer {i}: {real} query heads x {head_dim} -> {shape.heads} heads")
    if mixed:
        raise ValueError(
            f"dtype={dtype!r} stores each block with an offset, so zero padding next to real weights would dequantize "
            f"to nonzero values; this model would need it ({'; '.join(mixed)}). Choose q4_0, q5_0 or q8_0 (their "
            "blocks store 0 exactly), or prune to widths that are multiples of 32."
        )


def _add_attention(add, padding: _Padding, i: int, layer: nn.Module, shape: GgufLayer) -> None:
    attn, prefix, head_dim = layer.self_attn, f"blk.{i}", padding.head_dim
    if shape.heads == 0:
        return  # no tensors: llama.cpp passes the residual stream through
    add(f"{prefix}.attn_norm.weight", padding.norm(layer.input_layernorm.weight), False)
    if shape.zero_attention:
        zeros, width = torch.zeros(head_dim, padding.hidden), shape.heads * head_dim  # one zero head, padded
        for proj in ("attn_q", "attn_k", "attn_v"):
            rows = width if proj == "attn_q" else shape.kv_heads * head_dim
            add(f"{prefix}.{proj}.weight", padding.matrix(zeros, rows=rows), True)
        add(f"{prefix}.attn_output.weight", padding.matrix(zeros.T, cols=width), True)
        bias = _bias(attn.o_proj)
        if bias is not None:
            add(f"{prefix}.attn_output.bias", padding.vector(bias), False)
        return
    real_heads = shape.heads - shape.pad_heads
    index = padding.head_index(real_heads, shape.kv_heads, shape.heads)
    q_rows = padding.heads(attn.q_proj.weight, index, shape.heads)
    o_cols = padding.heads(attn.o_proj.weight.T, index, shape.heads).T
    add(f"{prefix}.attn_q.weight", padding.matrix(_permute(q_rows, shape.heads), rows=q_rows.shape[0]), True)
    kv_rows = attn.k_proj.weight.shape[0]
    add(f"{prefix}.attn_k.weight", padding.matrix(_permute(attn.k_proj.weight, shape.kv_heads), rows=kv_rows), True)
    add(f"{prefix}.attn_v.weight", padding.matrix(attn.v_proj.weight, rows=kv_rows), True)
    add(f"{prefix}.attn_output.weight", padding.matrix(o_cols, cols=o_cols.shape[1]), True)
    for proj, module, heads in (
        ("attn_q", attn.q_proj, shape.heads),
        ("attn_k", attn.k_proj, shape.kv_heads),
        ("attn_v", attn.v_proj, None),
    ):
        bias = _bias(module)
        if bias is not None:
            if proj == "attn_q":
                bias = padding.heads(bias, index, shape.heads)
            add(f"{prefix}.{proj}.bias", bias if heads is None else _permute(bias, heads), False)
    bias = _bias(attn.o_proj)
    if bias is not None:
        add(f"{prefix}.attn_output.bias", padding.vector(bias), False)


def _add_ffn(add, padding: _Padding, i: int, layer: nn.Module, shape: GgufLayer) -> None:
    mlp, prefix = layer.mlp, f"blk.{i}"
    add(f"{prefix}.ffn_norm.weight", padding.norm(layer.post_attention_layernorm.weight), False)
    if shape.zero_ffn:
        zeros = torch.zeros(1, padding.hidden)  # a zero FFN of width 1, padded
        add(f"{prefix}.ffn_gate.weight", padding.matrix(zeros, rows=shape.ffn), True)
        add(f"{prefix}.ffn_up.weight", padding.matrix(zeros, rows=shape.ffn), True)
        add(f"{prefix}.ffn_down.weight", padding.matrix(zeros.T, cols=shape.ffn), True)
        bias = _bias(mlp.down_proj)
        if bias is not None:
            add(f"{prefix}.ffn_down.bias", padding.vector(bias), False)
        return
    for proj, module in (("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj)):
        add(f"{prefix}.{proj}.weight", padding.matrix(module.weight, rows=shape.ffn), True)
        bias = _bias(module)
        if bias is not None:
            add(f"{prefix}.{proj}.bias", padding.vector(bias, shape.ffn), False)
    add(f"{prefix}.ffn_down.weight", padding.matrix(mlp.down_proj.weight, cols=shape.ffn), True)
    bias = _bias(mlp.down_proj)
    if bias is not None:
        add(f"{prefix}.ffn_down.bias", padding.vector(bias), False)
