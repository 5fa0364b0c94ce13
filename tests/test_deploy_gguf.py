"""GGUF export for llama.cpp (architecture deci): metadata and tensors read back with the gguf package, and the
model computed from the file the way llama.cpp's deci graph computes it equals the compact transformers model."""

import copy
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import make_model
from helpers import randomize_, randomize_gates

import hf_l0
from hf_l0.deploy.gguf_export import (
    GgufLayer,
    _check_offset_type_padding,
    _Padding,
    _placeholder_tokenizer,
    _rope_metadata,
    _tokenizer_fields,
    export_gguf,
    gguf_layers,
    read_gguf_metadata,
)
from hf_l0.pruning.stand_ins import RemovedAttention, RemovedMLP

gguf = pytest.importorskip("gguf", reason="the deploy extra is not installed: pip install -e '.[deploy]'")


def tiny_config(config_class=tf.LlamaConfig, **fields):
    """The tiny decoder config of these tests (hidden 48, 6 query heads in 2 KV groups, 37 FFN neurons), eager
    attention; ``fields`` add to or override it."""
    config = config_class(
        **{
            "vocab_size": 101,
            "hidden_size": 48,
            "num_hidden_layers": 3,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "intermediate_size": 37,
            **fields,
        }
    )
    config._attn_implementation = "eager"
    return config


def llama_with_biases(seed: int = 0):
    """A tiny Llama with attention and MLP biases (random, not zeros), so removed sublayers keep output biases."""
    torch.manual_seed(seed)
    config = tiny_config(attention_bias=True, mlp_bias=True)
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    return model.eval()


def compact_model(family: str = "llama", seed: int = 0, closed_attention_layer: int = 0):
    """Non-uniform compact decoder with hidden pruning and removed sublayers (attention of ``closed_attention_layer``,
    FFN of layer 1, which keeps its attention)."""
    model = llama_with_biases(seed) if family == "llama-biases" else make_model(family, seed=seed)
    hf_l0.patch_model(model, hf_l0.L0Config(hidden=True, layers=True))
    randomize_gates(model, seed=seed, closed_attention_layer=closed_attention_layer)
    if closed_attention_layer != 0:  # layer 0 keeps attention: the removed one is written with no heads at all
        gates = hf_l0.get_gates(model)
        with torch.no_grad():
            gates.heads.log_alpha[0] = 10.0
            gates.attention_layers.log_alpha[0] = 10.0
    compact = hf_l0.prune_model(model).eval()
    layers = compact.config.l0_structure["layers"]
    assert layers[closed_attention_layer]["attention_heads"] == 0
    assert layers[1]["intermediate_size"] == 0 and layers[1]["attention_heads"] > 0
    return compact


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def tensors(reader) -> dict[str, np.ndarray]:
    """Tensors in torch layout (GGUF lists dimensions innermost first; ``data`` is already row-major), quantized ones
    dequantized to float32 with gguf-py."""
    return {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type) for t in reader.tensors}


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of the export's rotary permutation (GGML interleaved pairs -> HF half split)."""
    return (
        weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def rope_interleaved(
    x: np.ndarray, base: float, freq_factors: np.ndarray | None = None, freq_scale: float = 1.0
) -> np.ndarray:
    """GGML's normal RoPE: adjacent pairs (2i, 2i+1) rotate by pos * freq_scale * base^(-2i/d) / freq_factors[i]
    (``rope_freqs.weight``; ``freq_scale`` is 1 / the linear scaling factor). x: [tokens, heads, d]."""
    d = x.shape[-1]
    freqs = freq_scale * base ** (-np.arange(0, d, 2) / d)
    if freq_factors is not None:
        freqs = freqs / freq_factors
    angles = np.arange(x.shape[0])[:, None] * freqs[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
    return out


def deci_forward(path, token_ids: list[int]) -> np.ndarray:
    """Logits of one sequence as llama.cpp's ``src/models/deci.cpp`` graph computes them, read from the GGUF file
    alone (including its rule that a layer with n_ff == 0 skips the residual add of its attention)."""
    reader = gguf.GGUFReader(str(path))
    meta, w = fields(reader), {k: v.astype(np.float64) for k, v in tensors(reader).items()}
    eps, base, hd = (
        meta["deci.attention.layer_norm_rms_epsilon"],
        meta["deci.rope.freq_base"],
        meta["deci.attention.key_length"],
    )
    freq_factors = w.get("rope_freqs.weight")
    freq_scale = 1.0
    if "deci.rope.scaling.type" in meta:
        assert meta["deci.rope.scaling.type"] == "linear", meta["deci.rope.scaling.type"]
        freq_scale = 1.0 / meta["deci.rope.scaling.factor"]
    x = w["token_embd.weight"][token_ids]
    n = len(token_ids)
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for il in range(meta["deci.block_count"]):
        n_head, n_kv, n_ff = (
            meta[k][il]
            for k in ("deci.attention.head_count", "deci.attention.head_count_kv", "deci.feed_forward_length")
        )
        p = f"blk.{il}."
        inp_sa = x
        if n_head == 0:
            cur = x
        else:
            h = rms_norm(x, w[p + "attn_norm.weight"], eps)
            q = (h @ w[p + "attn_q.weight"].T + w.get(p + "attn_q.bias", 0)).reshape(n, n_head, hd)
            k = (h @ w[p + "attn_k.weight"].T + w.get(p + "attn_k.bias", 0)).reshape(n, n_kv, hd)
            v = (h @ w[p + "attn_v.weight"].T + w.get(p + "attn_v.bias", 0)).reshape(n, n_kv, hd)
            q, k = (rope_interleaved(t, base, freq_factors, freq_scale) for t in (q, k))
            group = n_head // n_kv
            heads = []
            for head in range(n_head):
                scores = q[:, head] @ k[:, head // group].T / np.sqrt(hd) + causal
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                heads.append((probs / probs.sum(-1, keepdims=True)) @ v[:, head // group])
            cur = np.concatenate(heads, -1) @ w[p + "attn_output.weight"].T + w.get(p + "attn_output.bias", 0)
        if n_ff == 0:
            continue  # deci.cpp: `if (n_ff == 0) { continue; }` -- the attention output is dropped
        ffn_inp = cur + inp_sa if n_head > 0 else cur
        h = rms_norm(ffn_inp, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T + w.get(p + "ffn_gate.bias", 0)
        up = h @ w[p + "ffn_up.weight"].T + w.get(p + "ffn_up.bias", 0)
        ffn = (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T + w.get(p + "ffn_down.bias", 0)
        x = ffn + ffn_inp
    out = w.get("output.weight", w["token_embd.weight"])
    return rms_norm(x, w["output_norm.weight"], eps) @ out.T


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "llama-biases"])
def test_gguf_reads_back_and_computes_the_compact_model(tmp_path, family):
    compact = compact_model(family)
    structure = compact.config.l0_structure
    result = export_gguf(compact, tmp_path / "model.gguf")
    reader = gguf.GGUFReader(str(result.path))
    meta, w = fields(reader), tensors(reader)
    assert meta["general.architecture"] == "deci" and meta["general.file_type"] == 0
    assert meta["deci.embedding_length"] == structure["hidden_size"] < compact.config.hidden_size
    # Per-layer arrays: the compact shapes, with the zero stand-ins the module docstring describes.
    # A removed attention in layer 0 (llama.cpp takes the head size from layer 0) or with a kept output bias: one
    # zero head; any other removed attention: no heads.
    has_bias = getattr(compact.config, "attention_bias", False)
    zero_head = [
        layer["attention_heads"] == 0 and (i == 0 or (has_bias and layer["attention_output_bias"]))
        for i, layer in enumerate(structure["layers"])
    ]
    expected_heads = [1 if zero else layer["attention_heads"] for zero, layer in zip(zero_head, structure["layers"])]
    expected_ffn = [layer["intermediate_size"] or 1 for layer in structure["layers"]]  # never 0: see deci.cpp
    assert meta["deci.attention.head_count"] == expected_heads
    assert meta["deci.attention.head_count_kv"] == [
        1 if zero else layer["key_value_heads"] for zero, layer in zip(zero_head, structure["layers"])
    ]
    assert meta["deci.feed_forward_length"] == expected_ffn
    assert len(set(zip(expected_heads, expected_ffn))) > 1  # non-uniform
    assert not np.any(w["blk.0.attn_output.weight"]) and not np.any(w["blk.1.ffn_down.weight"])
    kept_biases = 0
    for i, layer in enumerate(compact.model.layers):  # a removed attention's kept output bias rides on its zero head
        bias = layer.self_attn.o_proj.bias
        if structure["layers"][i]["attention_heads"] == 0 and bias is not None:
            np.testing.assert_array_equal(w[f"blk.{i}.attn_output.bias"], bias.detach().numpy())
            kept_biases += 1
    assert kept_biases == (family == "llama-biases")
    # Tensor values: layout and rotary permutation undone give back the compact weights.
    attn = compact.model.layers[1].self_attn
    assert w["blk.1.attn_q.weight"].shape == tuple(attn.q_proj.weight.shape)
    kv_heads = meta["deci.attention.head_count_kv"][1]
    np.testing.assert_array_equal(
        unpermute(w["blk.1.attn_q.weight"], expected_heads[1]), attn.q_proj.weight.detach().numpy()
    )
    np.testing.assert_array_equal(unpermute(w["blk.1.attn_k.weight"], kv_heads), attn.k_proj.weight.detach().numpy())
    if attn.q_proj.bias is not None:  # qwen2
        np.testing.assert_array_equal(
            unpermute(w["blk.1.attn_q.bias"], expected_heads[1]), attn.q_proj.bias.detach().numpy()
        )
    np.testing.assert_array_equal(w["token_embd.weight"], compact.model.embed_tokens.weight.detach().numpy())
    assert ("output.weight" in w) == (not compact.config.tie_word_embeddings)
    # The model computed from the file by llama.cpp's rules equals transformers.
    ids = [5, 17, 99, 3, 42, 8, 64, 23, 77, 11, 2]
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(deci_forward(result.path, ids) - reference).max() <= 1e-4


def llama_cpp_llama3_rope_factors(rope: dict, head_dim: int) -> list[float]:
    """llama.cpp's ``convert_hf_to_gguf.py`` rule for ``rope_freqs.weight`` of a llama3-scaled model, transcribed."""
    base, factor = rope["rope_theta"], rope["factor"]
    low_freq_factor, high_freq_factor = rope["low_freq_factor"], rope["high_freq_factor"]
    old_context_len = rope["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
    rope_factors = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return rope_factors


# head_dim 8: wavelengths 2 pi x 10000^(0, 1/4, 1/2, 3/4) = 6.3, 63, 628, 6283 against 128 / 4 and 128 / 1, so
# llama3 keeps the first frequency, smooths the second and divides the last two by the factor
ROPE_PARAMETERS = {
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,
    },
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
}


@pytest.mark.parametrize("rope_type", sorted(ROPE_PARAMETERS))
def test_scaled_rope_is_written_as_llama_cpp_reads_it(tmp_path, rope_type):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    torch.manual_seed(0)
    rope = ROPE_PARAMETERS[rope_type]
    config = tiny_config(max_position_embeddings=512, rope_parameters=dict(rope))
    model = randomize_(tf.LlamaForCausalLM(config)).eval()
    head_dim = config.hidden_size // config.num_attention_heads
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    randomize_gates(model)
    compact = hf_l0.prune_model(model).eval()
    result = export_gguf(compact, tmp_path / "model.gguf")
    reader = gguf.GGUFReader(str(result.path))
    meta, w = fields(reader), tensors(reader)
    assert meta["deci.rope.freq_base"] == rope["rope_theta"]
    # transformers' own frequencies: the dense ones over the scaled ones are the factors llama.cpp divides by
    default = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
    scaled = ROPE_INIT_FUNCTIONS[rope_type](compact.config, "cpu")[0].double().numpy()
    if rope_type == "llama3":
        assert "deci.rope.scaling.type" not in meta
        factors = w["rope_freqs.weight"]
        assert factors.dtype == np.float32
        np.testing.assert_allclose(factors, llama_cpp_llama3_rope_factors(rope, head_dim), rtol=1e-6)
        np.testing.assert_allclose(factors, default / scaled, rtol=1e-6)
        assert factors[0] == 1.0 and factors[-1] == rope["factor"] and 1.0 < factors[1] < rope["factor"]
    else:
        assert "rope_freqs.weight" not in w
        assert meta["deci.rope.scaling.type"] == "linear" and meta["deci.rope.scaling.factor"] == rope["factor"]
        np.testing.assert_allclose(default / scaled, rope["factor"], rtol=1e-6)
    ids = [5, 17, 99, 3, 42, 8, 64, 23, 77, 11, 2, 60, 31, 90, 14, 50]
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(deci_forward(result.path, ids) - reference).max() <= 1e-4


@pytest.mark.parametrize(
    "config, theta",
    [
        (SimpleNamespace(), 10000.0),  # no rope_parameters attribute at all (configs from before transformers 5)
        (SimpleNamespace(rope_parameters=None, rope_theta=500000.0), 500000.0),
        (SimpleNamespace(rope_parameters={"rope_type": "default"}, rope_theta=500000.0), 500000.0),
        (SimpleNamespace(rope_parameters={"rope_theta": 1e6}, rope_theta=500000.0), 1e6),  # no rope_type: default
        (tf.LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": 1234.0}), 1234.0),
    ],
    ids=["nothing", "config-theta", "config-theta-default-type", "parameters-theta", "llama-config"],
)
def test_unscaled_rope_takes_theta_from_rope_parameters_then_the_config_then_10000(config, theta):
    assert _rope_metadata(config, 8) == ({"freq_base": theta}, None)


def test_linear_rope_scaling_is_written_with_its_factor():
    config = SimpleNamespace(rope_parameters={"rope_type": "linear", "rope_theta": 5e5, "factor": 4})
    assert _rope_metadata(config, 8) == ({"freq_base": 5e5, "scaling": ("linear", 4.0)}, None)


# What llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors) takes when a key is missing
LLAMA_CPP_LLAMA3_DEFAULTS = {
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


# head_dim 16: wavelengths 2 pi theta^(i / 8), i < 8. Defaults: ..., 1987 < 8192 / 4 <= 6283 <= 8192 < 19869.
# Explicit: 363 < 4096 / 8 <= 1405 <= 4096 / 2 < 5434 (and low != 1, so old_context * low would move the boundary).
@pytest.mark.parametrize(
    "params",
    [
        {"rope_type": "llama3"},
        {
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 32.0,
            "low_freq_factor": 2.0,
            "high_freq_factor": 8.0,
            "original_max_position_embeddings": 4096,
        },
    ],
    ids=["defaults", "explicit"],
)
def test_llama3_rope_factors_follow_llama_cpp_converter(params):
    head_dim = 16
    rope = {**LLAMA_CPP_LLAMA3_DEFAULTS, **params}
    expected = np.array(llama_cpp_llama3_rope_factors(rope, head_dim))
    smoothed = (expected > 1) & (expected < rope["factor"])
    assert (expected == 1).any() and smoothed.any() and (expected == rope["factor"]).any()  # all three regions
    keys, factors = _rope_metadata(SimpleNamespace(rope_parameters=dict(params)), head_dim)
    assert keys == {"freq_base": rope["rope_theta"]}
    assert factors.dtype == np.float32 and factors.shape == (head_dim // 2,)
    np.testing.assert_allclose(factors, expected, rtol=1e-6)


def test_unsupported_rope_type_is_refused_by_name():
    with pytest.raises(ValueError) as error:
        _rope_metadata(SimpleNamespace(rope_parameters={"rope_type": "yarn", "factor": 4.0}), 8)
    assert str(error.value) == "rope_type='yarn' has no GGUF export here (supported: default, linear, llama3)."


@pytest.mark.parametrize("window", [16, 4096, None])
def test_context_length_is_the_sliding_window_when_it_is_shorter(tmp_path, window):
    """deci has no sliding window: the file's context is at most the window, where both compute the same."""
    torch.manual_seed(0)
    config = tiny_config(tf.MistralConfig, num_hidden_layers=2, max_position_embeddings=128, sliding_window=window)
    model = randomize_(tf.MistralForCausalLM(config)).eval()
    export_gguf(model, tmp_path / "model.gguf")
    meta = fields(gguf.GGUFReader(str(tmp_path / "model.gguf")))
    expected = config.max_position_embeddings if window is None else min(window, config.max_position_embeddings)
    assert meta["deci.context_length"] == expected
    if window == 16:
        ids = list(range(3, 3 + window))  # a full window: the sliding mask hides nothing yet
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].double().numpy()
        assert np.abs(deci_forward(tmp_path / "model.gguf", ids) - reference).max() <= 1e-4


def test_f16_export_rounds_matrices_only(tmp_path):
    compact = compact_model("llama", closed_attention_layer=2)  # layer 2 loses attention: n_head 0, no tensors
    result = export_gguf(compact, tmp_path / "model-f16.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(result.path))
    meta, types = fields(reader), {t.name: t.tensor_type for t in reader.tensors}
    assert meta["general.file_type"] == 1 and meta["deci.attention.head_count"][2] == 0
    assert not any(name.startswith("blk.2.attn") for name in types)
    assert types["blk.1.attn_v.weight"] == gguf.GGMLQuantizationType.F16
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    w = tensors(reader)
    np.testing.assert_array_equal(
        w["blk.2.ffn_up.weight"], compact.model.layers[2].mlp.up_proj.weight.detach().half().numpy()
    )
    ids = [4, 9, 16, 25, 36, 49, 64, 81]
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(deci_forward(result.path, ids) - reference).max() <= 5e-2  # f16 weights


def test_attention_without_ffn_would_be_dropped_by_width_zero(tmp_path):
    """Why a removed FFN is written with width 1: deci's graph, given n_ff == 0, drops that layer's attention."""
    compact = compact_model("llama")
    path = tmp_path / "model.gguf"
    export_gguf(compact, path)
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "width0.gguf"), arch="deci")
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name == "deci.feed_forward_length":
            value[1] = 0  # layer 1 keeps attention and lost its FFN
        writer.add_key_value(name, value, field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for t in reader.tensors:
        if not t.name.startswith("blk.1.ffn"):
            writer.add_tensor(t.name, np.asarray(t.data))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    ids = [7, 1, 30, 2, 90]
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(deci_forward(path, ids) - reference).max() <= 1e-4
    assert np.abs(deci_forward(tmp_path / "width0.gguf", ids) - reference).max() > 1e-2


def write_tokenizer_source(path, vocab: int) -> None:
    """A small GGUF carrying a byte-level BPE tokenizer's metadata (what llama.cpp's converter writes)."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (vocab - 3))
    writer.add_token_merges(["t o", "to k", "Ġ t"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()


def test_tokenizer_is_copied_from_the_source_gguf(tmp_path):
    source = tmp_path / "source.gguf"
    write_tokenizer_source(source, vocab=101)
    result = export_gguf(compact_model("llama"), tmp_path / "model.gguf", tokenizer_gguf=source)
    assert result.tokenizer == str(source)
    copied, original = fields(gguf.GGUFReader(str(result.path))), fields(gguf.GGUFReader(str(source)))
    keys = sorted(k for k in original if k.startswith("tokenizer."))
    assert len(keys) == 9 and sorted(k for k in copied if k.startswith("tokenizer.")) == keys
    assert all(copied[k] == original[k] for k in keys)
    # the export's own metadata reader agrees with the gguf package's
    assert {k: v for k, (v, _, _) in read_gguf_metadata(source).items()} == {
        k: v for k, v in original.items() if not k.startswith("GGUF.")
    }
    write_tokenizer_source(source, vocab=50)
    with pytest.raises(ValueError, match="50 tokens but the model's vocabulary has 101"):
        export_gguf(make_model("llama"), tmp_path / "bad.gguf", tokenizer_gguf=source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "source.gguf"]


def gguf_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def gguf_entry(key: str, vtype: int, payload: bytes) -> bytes:
    """One metadata key-value pair as GGUF lays it out: key string, value type (uint32), value."""
    return gguf_string(key) + struct.pack("<I", vtype) + payload


def gguf_header(version: int = 3, entries: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, 0, entries)  # magic, version, tensor count, key-value count


def array_header(item_type: int, count: int) -> bytes:
    return struct.pack("<IQ", item_type, count)


def write_gguf(path: Path, *entries: bytes, version: int = 3) -> Path:
    path.write_bytes(gguf_header(version, len(entries)) + b"".join(entries))
    return path


def test_metadata_reader_returns_values_with_their_types(tmp_path):
    T = gguf.GGUFValueType
    path = write_gguf(
        tmp_path / "v2.gguf",
        gguf_entry("general.name", T.STRING, gguf_string("Modèle ✓")),
        gguf_entry("tokenizer.ggml.eos_token_id", T.UINT32, struct.pack("<I", 2**32 - 1)),
        gguf_entry("deci.offset", T.INT8, struct.pack("<b", -3)),
        gguf_entry("deci.flag", T.BOOL, struct.pack("<?", True)),
        gguf_entry("deci.scale", T.FLOAT64, struct.pack("<d", 0.1)),
        gguf_entry("tokenizer.ggml.ids", T.ARRAY, array_header(T.UINT32, 2) + struct.pack("<2I", 2**31 + 1, 7)),
        gguf_entry("tokenizer.ggml.tokens", T.ARRAY, array_header(T.STRING, 2) + gguf_string("a") + gguf_string("é")),
        version=2,  # older converters' version: read like 3
    )
    expected = {
        "general.name": ("Modèle ✓", T.STRING, None),
        "tokenizer.ggml.eos_token_id": (2**32 - 1, T.UINT32, None),
        "deci.offset": (-3, T.INT8, None),
        "deci.flag": (True, T.BOOL, None),
        "deci.scale": (0.1, T.FLOAT64, None),
        "tokenizer.ggml.ids": ([2**31 + 1, 7], T.ARRAY, T.UINT32),
        "tokenizer.ggml.tokens": (["a", "é"], T.ARRAY, T.STRING),
    }
    assert read_gguf_metadata(path) == expected
    assert read_gguf_metadata(path, prefix="tokenizer.") == {k: v for k, v in expected.items() if "tokenizer." in k}


UNREADABLE_GGUF = {  # file contents -> the whole message ({path}: the file)
    "empty": (b"", "{path} is not a GGUF file."),
    "cut-header": (b"GGUF" + struct.pack("<I", 3), "{path} is not a GGUF file."),
    "other-magic": (b"GGML" + struct.pack("<IQQ", 3, 0, 0), "{path} is not a GGUF file."),
    "version-1": (
        gguf_header(version=1),
        "{path}: GGUF version 1 (a big-endian or unknown file); this reads versions 2-3.",
    ),
    "version-top-bit": (  # read unsigned
        gguf_header(version=2**31 + 3),
        "{path}: GGUF version 2147483651 (a big-endian or unknown file); this reads versions 2-3.",
    ),
    "value-type-13": (
        gguf_header(entries=1) + gguf_entry("k", 13, b""),
        "{path}: unknown GGUF value type 13.",
    ),
    "value-type-max": (
        gguf_header(entries=1) + gguf_entry("k", 2**32 - 1, b""),
        "{path}: unknown GGUF value type 4294967295.",
    ),
    "item-type-top-bit": (
        gguf_header(entries=1) + gguf_entry("k", gguf.GGUFValueType.ARRAY, array_header(2**31 + 8, 1)),
        "{path}: unknown GGUF value type 2147483656.",
    ),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_GGUF))
def test_metadata_reader_refuses_what_it_cannot_read(tmp_path, case):
    content, message = UNREADABLE_GGUF[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_gguf_metadata(path)
    assert str(error.value) == message.format(path=path)


@pytest.mark.parametrize(
    "entry",
    [
        gguf_entry("k", gguf.GGUFValueType.STRING, struct.pack("<Q", 2**63 + 1) + b"rest"),  # string length
        gguf_entry(
            "k", gguf.GGUFValueType.ARRAY, array_header(gguf.GGUFValueType.STRING, 2**63 + 1) + gguf_string("a")
        ),
    ],
    ids=["string-length", "array-count"],
)
def test_metadata_reader_fails_on_lengths_of_2_63_and_more(tmp_path, entry):
    """Lengths and counts are unsigned: a corrupt one of 2**63 or more cannot be read (it is not taken as negative,
    which would read the rest of the file as the string, or an empty array)."""
    path = write_gguf(tmp_path / "corrupt.gguf", entry)
    with pytest.raises((OverflowError, struct.error)):
        read_gguf_metadata(path)


def test_tokenizer_fields_are_the_sources_tokenizer_keys_and_name_with_their_types(tmp_path):
    T = gguf.GGUFValueType
    tokens, scores = ["<s>", "</s>", "hé", "llo"], [0.0, -1.0, -2.5, -3.0]
    source = tmp_path / "source.gguf"
    writer = gguf.GGUFWriter(str(source), arch="llama")
    writer.add_name("Tiny source")
    writer.add_context_length(64)  # model metadata: not copied
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(0)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    copied = _tokenizer_fields(source, vocab_size=len(tokens))
    assert {key: (value, vtype, sub) for key, value, vtype, sub in copied} == {
        "general.name": ("Tiny source", T.STRING, None),
        "tokenizer.ggml.model": ("llama", T.STRING, None),
        "tokenizer.ggml.tokens": (tokens, T.ARRAY, T.STRING),
        "tokenizer.ggml.scores": (scores, T.ARRAY, T.FLOAT32),
        "tokenizer.ggml.bos_token_id": (0, T.UINT32, None),
    }
    assert all(isinstance(vtype, T) and (sub is None or isinstance(sub, T)) for _, _, vtype, sub in copied)


def test_tokenizer_source_without_tokens_or_of_another_vocabulary_is_refused(tmp_path):
    T = gguf.GGUFValueType
    no_tokens = write_gguf(tmp_path / "no-tokens.gguf", gguf_entry("general.name", T.STRING, gguf_string("x")))
    with pytest.raises(ValueError) as error:
        _tokenizer_fields(no_tokens, vocab_size=5)
    assert str(error.value) == f"{no_tokens} has no tokenizer.ggml.tokens: it carries no tokenizer to copy."
    tokens = array_header(T.STRING, 4) + b"".join(gguf_string(t) for t in "abcd")
    four = write_gguf(tmp_path / "four.gguf", gguf_entry("tokenizer.ggml.tokens", T.ARRAY, tokens))
    with pytest.raises(ValueError) as error:
        _tokenizer_fields(four, vocab_size=5)
    assert str(error.value) == (
        f"{four} has 4 tokens but the model's vocabulary has 5 rows: pass the GGUF file the model was loaded from."
    )


@pytest.mark.parametrize(
    "ids, written",
    [
        ({"bos_token_id": 0, "eos_token_id": 6, "pad_token_id": 7}, {"bos": 0, "eos": 6}),
        # no bos_token_id attribute at all; a list of eos ids (Llama 3 configs) is not a single id
        ({"eos_token_id": [1, 2], "pad_token_id": 6}, {"padding": 6}),
    ],
    ids=["range-ends", "missing-and-list"],
)
def test_placeholder_tokenizer_writes_only_special_ids_inside_the_vocabulary(tmp_path, ids, written):
    vocab = 7
    path = tmp_path / "placeholder.gguf"
    writer = gguf.GGUFWriter(str(path), arch="deci")
    _placeholder_tokenizer(writer, SimpleNamespace(vocab_size=vocab, **ids))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    meta = fields(gguf.GGUFReader(str(path)))
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == [f"<id {i}>" for i in range(vocab)]
    assert meta["tokenizer.ggml.scores"] == [0.0] * vocab
    assert meta["tokenizer.ggml.token_type"] == [gguf.TokenType.NORMAL] * vocab
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert {k: v for k, v in meta.items() if k.endswith("_token_id")} == {
        f"tokenizer.ggml.{name}_token_id": value for name, value in written.items()
    }


def test_unsupported_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Llama family"):
        export_gguf(make_model("gpt2"), tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="f16"):
        export_gguf(make_model("llama"), tmp_path / "m.gguf", dtype="q4")
    model = make_model("llama")
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    with pytest.raises(ValueError, match="prune_model"):
        export_gguf(model, tmp_path / "m.gguf")
    assert not any(tmp_path.iterdir())


def bare_causal_lm() -> torch.nn.Module:
    """A module with an LM head whose config names no model type."""
    model = torch.nn.Module()
    model.config, model.lm_head = SimpleNamespace(), torch.nn.Linear(2, 2)
    return model


def gated_llama() -> torch.nn.Module:
    model = make_model("llama")
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    return model


def gelu_llama() -> torch.nn.Module:
    model = make_model("llama")
    model.config.hidden_act = "gelu"
    return model


REFUSED_MODELS = {
    "gated": (
        gated_llama,
        "the model still carries L0 gates: call hf_l0.prune_model(model) first and export the compact model it "
        "returns.",
    ),
    "gpt2": (
        lambda: make_model("gpt2"),
        "GGUF export supports causal LMs of the Llama family (llama, mistral, qwen2), loaded with "
        "AutoModelForCausalLM; got GPT2LMHeadModel (model_type='gpt2'). Export encoders and other families with "
        "hf_l0.export_onnx.",
    ),
    "no-model-type": (
        bare_causal_lm,
        "GGUF export supports causal LMs of the Llama family (llama, mistral, qwen2), loaded with "
        "AutoModelForCausalLM; got Module (model_type=None). Export encoders and other families with "
        "hf_l0.export_onnx.",
    ),
    "gelu": (gelu_llama, "hidden_act='gelu': llama.cpp's deci architecture computes a SiLU-gated FFN only."),
}


@pytest.mark.parametrize("case", sorted(REFUSED_MODELS))
def test_refused_models_get_the_reason_and_the_fix(tmp_path, case):
    build, message = REFUSED_MODELS[case]
    with pytest.raises(ValueError) as error:
        export_gguf(build(), tmp_path / "m.gguf")
    assert str(error.value) == message
    assert not any(tmp_path.iterdir())


def test_explicit_head_dim_sets_head_counts_and_key_length(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=2, head_dim=16)
    model = tf.LlamaForCausalLM(config).eval()
    assert config.head_dim != config.hidden_size // config.num_attention_heads
    assert gguf_layers(model) == [GgufLayer(6, 2, 37)] * 2  # and without pad_to, no padding (37 is odd)
    export_gguf(model, tmp_path / "model.gguf")
    meta = fields(gguf.GGUFReader(str(tmp_path / "model.gguf")))
    assert meta["deci.attention.key_length"] == meta["deci.rope.dimension_count"] == 16
    ids = [5, 17, 99, 3, 42, 8]
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(deci_forward(tmp_path / "model.gguf", ids) - reference).max() <= 1e-4


QUANTIZED = ("q8_0", "q5_0", "q4_0", "q4_1")
BLOCK = 32  # gguf's block length along a row for every quantized type here


def llama_hidden64(seed: int = 0):
    """A compact Llama whose hidden size (64, unpruned) and query-head widths (2 x 16 per KV group) are whole blocks:
    only its FFN widths need padding, the one padding q4_1's offset blocks keep exact."""
    torch.manual_seed(seed)
    config = tf.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    config._attn_implementation = "eager"
    model = randomize_(tf.LlamaForCausalLM(config), seed).eval()
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    randomize_gates(model, seed=seed)
    return hf_l0.prune_model(model).eval()


def with_large_eps(compact, eps: float = 0.5):
    """``compact`` with a large RMSNorm epsilon: a norm over the padded hidden axis that kept the unscaled epsilon
    would then differ visibly (with 1e-6 the difference hides under float rounding)."""
    compact.config.rms_norm_eps = eps
    for module in compact.modules():
        if hasattr(module, "variance_epsilon"):
            module.variance_epsilon = eps
    return compact


def quantized_model(dtype: str):
    """Seed 1: a KV group of layer 1 gains a zero head (6 query heads, 2 KV heads -> 8)."""
    return llama_hidden64() if dtype == "q4_1" else with_large_eps(compact_model("llama-biases", seed=1))


def matrix_weights(reader) -> int:
    return sum(int(np.prod(t.shape)) for t in reader.tensors if len(t.shape) == 2)


@pytest.mark.parametrize("family, seed", [("llama", 1), ("llama-biases", 0), ("qwen2", 1)])
def test_zero_padding_to_blocks_computes_the_compact_model_exactly(tmp_path, family, seed):
    """f32 padded to multiples of 32: zero hidden dimensions, query heads and FFN neurons change nothing (the norm's
    epsilon and weights absorb the longer hidden axis), and the padding reported is what the file holds."""
    compact = with_large_eps(compact_model(family, seed=seed))
    structure = compact.config.l0_structure
    plain = export_gguf(compact, tmp_path / "plain.gguf")
    result = export_gguf(compact, tmp_path / "padded.gguf", pad_to=BLOCK)
    reader = gguf.GGUFReader(str(result.path))
    meta = fields(reader)
    hd = meta["deci.attention.key_length"]
    heads, kv, ffn = (
        meta[k] for k in ("deci.attention.head_count", "deci.attention.head_count_kv", "deci.feed_forward_length")
    )
    assert meta["deci.embedding_length"] % BLOCK == 0 and result.hidden == meta["deci.embedding_length"]
    assert all(h * hd % BLOCK == 0 and h % k == 0 for h, k in zip(heads, kv) if h) and all(f % BLOCK == 0 for f in ffn)
    assert result.pad_hidden == meta["deci.embedding_length"] - structure["hidden_size"] > 0
    assert [layer.pad_heads for layer in result.layers] == [h - layer.heads for h, layer in zip(heads, plain.layers)]
    assert [layer.pad_ffn for layer in result.layers] == [f - layer.ffn for f, layer in zip(ffn, plain.layers)]
    assert result.padding["heads"] > 0 and result.padding["ffn"] > 0
    if seed == 1:  # zero heads go inside KV groups: llama.cpp pairs query head h with KV head h // (heads / kv)
        assert any(layer.pad_heads and layer.kv_heads > 1 for layer in result.layers)
    assert result.matrix_weights == matrix_weights(reader)
    assert result.padding_weights == matrix_weights(reader) - matrix_weights(gguf.GGUFReader(str(plain.path)))
    assert plain.padding == {"hidden": 0, "heads": 0, "ffn": 0, "weights": 0}
    ids = [5, 17, 99, 3, 42, 8, 64, 23, 77, 11, 2]
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(deci_forward(result.path, ids) - reference).max() <= 1e-4


def block_error_bound(reference: np.ndarray, qtype) -> np.ndarray:
    """Per-weight bound on |dequantized - reference| for gguf-py's quantizers, from each 32-block's range: half a step
    of rounding (a whole step for q4_0 / q5_0, whose scale maps the block's largest magnitude to -8 / -16, so the
    opposite extreme clips at +7 / +15 steps), plus the float16 rounding of the scale times the largest level (and,
    for q4_1, of the offset)."""
    blocks = reference.astype(np.float64).reshape(-1, BLOCK)
    lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    amax = np.maximum(-lo, hi)
    half = 2.0**-11  # float16's relative rounding; 2**-24: its absolute rounding of subnormal scales
    rounding, step, levels, offset = {
        gguf.GGMLQuantizationType.Q8_0: (0.5, amax / 127, 127, 0),
        gguf.GGMLQuantizationType.Q5_0: (1.0, amax / 16, 16, 0),
        gguf.GGMLQuantizationType.Q4_0: (1.0, amax / 8, 8, 0),
        gguf.GGMLQuantizationType.Q4_1: (0.5, (hi - lo) / 15, 15, np.abs(lo) * half + 2.0**-24),
    }[qtype]
    bound = step * (rounding + levels * half) + levels * 2.0**-24 + offset + 4 * np.finfo(np.float32).eps * amax
    return np.broadcast_to(bound, blocks.shape).reshape(reference.shape)


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_quantized_matrices_are_within_their_types_error_bound(tmp_path, dtype):
    """Every matrix is stored in the quantized type (norms and biases stay f32) and dequantizes to the padded f32
    export within the type's per-block bound; padding in the symmetric types comes back exactly 0."""
    compact = quantized_model(dtype)
    padded = tensors(gguf.GGUFReader(str(export_gguf(compact, tmp_path / "f32.gguf", pad_to=BLOCK).path)))
    reader = gguf.GGUFReader(str(export_gguf(compact, tmp_path / "q.gguf", dtype=dtype).path))
    qtype = gguf.GGMLQuantizationType[dtype.upper()]
    assert fields(reader)["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"]
    quantized = tensors(reader)
    assert quantized.keys() == padded.keys()
    for t in reader.tensors:
        reference, got = padded[t.name], quantized[t.name]
        assert got.shape == reference.shape, t.name
        if reference.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(got, reference)
            continue
        assert t.tensor_type == qtype, t.name
        assert (np.abs(got - reference) <= block_error_bound(reference, qtype)).all(), t.name
        if dtype != "q4_1":
            assert not got[reference == 0].any(), t.name  # zero padding and zero stand-ins stay exactly 0
    assert Path(tmp_path / "q.gguf").stat().st_size < 0.5 * Path(tmp_path / "f32.gguf").stat().st_size


def file_model(compact, path):
    """A copy of ``compact`` holding the file's matrices (dequantized; padding and rotary permutation removed): the
    model the quantized file describes, in transformers. Real query head j of a layer with g real heads per KV group
    sits in slot j // g * (heads / kv) + j % g, the slots llama.cpp pairs with KV head j // g."""
    reader = gguf.GGUFReader(str(path))
    meta, w = fields(reader), {k: torch.tensor(v) for k, v in tensors(reader).items()}
    model = copy.deepcopy(compact)
    n = compact.model.embed_tokens.weight.shape[1]
    hd = meta["deci.attention.key_length"]

    def put(module, weight):
        with torch.no_grad():
            module.weight.copy_(weight)

    put(model.model.embed_tokens, w["token_embd.weight"][:, :n])
    if "output.weight" in w:
        put(model.lm_head, w["output.weight"][:, :n])
    for i, layer in enumerate(model.model.layers):
        p, attn, mlp = f"blk.{i}.", layer.self_attn, layer.mlp
        if not isinstance(attn, RemovedAttention):
            heads, kv = meta["deci.attention.head_count"][i], meta["deci.attention.head_count_kv"][i]
            real = attn.q_proj.out_features // hd
            group = real // kv
            keep = [j // group * (heads // kv) + j % group for j in range(real)]
            q = torch.from_numpy(unpermute(w[p + "attn_q.weight"].numpy(), heads))
            put(attn.q_proj, q.reshape(heads, hd, -1)[keep, :, :n].reshape(real * hd, n))
            put(attn.k_proj, torch.from_numpy(unpermute(w[p + "attn_k.weight"][:, :n].numpy(), kv)))
            put(attn.v_proj, w[p + "attn_v.weight"][:, :n])
            put(attn.o_proj, w[p + "attn_output.weight"].reshape(-1, heads, hd)[:n, keep].reshape(n, real * hd))
        if not isinstance(mlp, RemovedMLP):
            f = mlp.up_proj.out_features
            put(mlp.gate_proj, w[p + "ffn_gate.weight"][:f, :n])
            put(mlp.up_proj, w[p + "ffn_up.weight"][:f, :n])
            put(mlp.down_proj, w[p + "ffn_down.weight"][:n, :f])
    return model


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_quantized_file_computes_the_model_with_its_rounded_weights(tmp_path, dtype):
    """The deci graph on the quantized, padded file equals transformers running the compact model with the file's
    rounded weights put back: padding adds no error beyond the rounding of the weights themselves."""
    compact = quantized_model(dtype)
    result = export_gguf(compact, tmp_path / "q.gguf", dtype=dtype)
    assert result.padding["ffn"] > 0 and (result.padding["hidden"] > 0) == (dtype != "q4_1")
    ids = [5, 17, 99, 3, 42, 8, 64, 23, 77, 11, 2, 60, 31, 95, 14, 50]
    with torch.no_grad():
        rounded = file_model(compact, result.path)(torch.tensor([ids])).logits[0].double().numpy()
        reference = compact(torch.tensor([ids])).logits[0].double().numpy()
    got = deci_forward(result.path, ids)
    assert np.abs(got - rounded).max() <= 1e-4
    assert np.abs(got - reference).max() > 1e-4  # the weights were rounded: the two references differ
    if dtype == "q8_0":
        assert (got.argmax(-1) == reference.argmax(-1)).mean() >= 0.95


def test_quantized_export_refuses_inexact_padding_and_bad_blocks(tmp_path):
    compact = compact_model("llama")
    with pytest.raises(ValueError, match="q4_0, q5_0 or q8_0") as error:
        export_gguf(compact, tmp_path / "m.gguf", dtype="q4_1")
    assert f"hidden size {compact.config.l0_structure['hidden_size']} -> " in str(error.value)
    with pytest.raises(ValueError, match="multiple of its block size 32"):
        export_gguf(compact, tmp_path / "m.gguf", dtype="q8_0", pad_to=48)
    with pytest.raises(ValueError, match="q4_0"):
        export_gguf(compact, tmp_path / "m.gguf", dtype="q3_k")
    assert not any(tmp_path.iterdir())


def test_offset_type_refusal_lists_every_padding_next_to_real_weights():
    layers = [
        GgufLayer(8, 2, 64, pad_heads=2),
        GgufLayer(4, 4, 32, zero_attention=True, pad_heads=3),  # a zero head's padding is all zeros: fine
        GgufLayer(4, 2, 64),
        GgufLayer(12, 3, 64, pad_heads=3),
    ]
    with pytest.raises(ValueError) as error:
        _check_offset_type_padding("q4_1", None, layers, 48, 64, 8)
    assert str(error.value) == (
        "dtype='q4_1' stores each block with an offset, so zero padding next to real weights would dequantize to "
        "nonzero values; this model would need it (hidden size 48 -> 64; layer 0: 6 query heads x 8 -> 8 heads; "
        "layer 3: 9 query heads x 8 -> 12 heads). Choose q4_0, q5_0 or q8_0 (their blocks store 0 exactly), or prune "
        "to widths that are multiples of 32."
    )
    assert _check_offset_type_padding("q4_1", None, layers[1:3], 64, 64, 8) is None


def llama_with_kept_output_biases():
    """A Llama with biases whose layer-0 attention and layer-1 FFN lost every unit but kept their layer gates open:
    their stand-ins output the kept output biases."""
    model = llama_with_biases()
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    gates = hf_l0.get_gates(model)
    with torch.no_grad():
        for gate in gates.gates.values():
            gate.log_alpha.fill_(10.0)
        gates.heads.log_alpha[0] = -10.0
        gates.ffn.log_alpha[1] = -10.0
    compact = hf_l0.prune_model(model).eval()
    layers = compact.config.l0_structure["layers"]
    assert layers[0]["attention_heads"] == 0 and layers[0]["attention_output_bias"]
    assert layers[1]["intermediate_size"] == 0 and layers[1]["ffn_output_bias"]
    return compact


def test_removed_sublayers_keep_their_output_biases_unquantized(tmp_path):
    compact = llama_with_kept_output_biases()
    reader = gguf.GGUFReader(str(export_gguf(compact, tmp_path / "q8.gguf", dtype="q8_0").path))
    types, w = {t.name: t.tensor_type for t in reader.tensors}, tensors(reader)
    assert all((t.tensor_type == gguf.GGMLQuantizationType.F32) == (len(t.shape) == 1) for t in reader.tensors)
    hidden = compact.config.hidden_size
    assert w["token_embd.weight"].shape[1] > hidden  # padded to the block: the biases get zero tails
    kept = {
        "blk.0.attn_output.bias": compact.model.layers[0].self_attn.o_proj.bias,
        "blk.1.ffn_down.bias": compact.model.layers[1].mlp.down_proj.bias,
    }
    for name, bias in kept.items():
        assert types[name] == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(w[name][:hidden], bias.detach().numpy())
        assert not w[name][hidden:].any()
    # unpadded f32: the deci graph, biases included, computes the compact model
    path = export_gguf(compact, tmp_path / "f32.gguf").path
    ids = [5, 17, 99, 3, 42, 8]
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(deci_forward(path, ids) - reference).max() <= 1e-4


def test_bfloat16_model_is_written_in_float32_with_exactly_scaled_norms(tmp_path):
    model = llama_with_biases().to(torch.bfloat16)
    result = export_gguf(model, tmp_path / "bf16.gguf", pad_to=BLOCK)
    reader = gguf.GGUFReader(str(result.path))
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    w, hidden, kv = tensors(reader), model.config.hidden_size, model.config.num_key_value_heads
    assert result.pad_hidden > 0
    # sqrt(n / n') times a bfloat16 weight is not a bfloat16: the scaled norm must be computed and kept in float32
    scaled = model.model.norm.weight.detach().float().numpy() * math.sqrt(hidden / result.hidden)
    np.testing.assert_allclose(w["output_norm.weight"], np.pad(scaled, (0, result.pad_hidden)), rtol=1e-6)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    # K / V biases reach the writer as the model's own bfloat16 tensors (no padding copies them to float32)
    np.testing.assert_array_equal(unpermute(w["blk.0.attn_k.bias"], kv), attn.k_proj.bias.detach().float().numpy())
    np.testing.assert_array_equal(w["blk.0.attn_v.bias"], attn.v_proj.bias.detach().float().numpy())
    ffn = mlp.up_proj.out_features
    np.testing.assert_array_equal(w["blk.0.ffn_up.weight"][:ffn, :hidden], mlp.up_proj.weight.detach().float().numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_padding_builds_float32_tensors_from_half_precision_weights(dtype):
    padding = _Padding(hidden=6, padded_hidden=8, head_dim=2)
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    matrix = padding.matrix(weight, rows=5)
    assert matrix.dtype == torch.float32 and matrix.shape == (5, 8)
    assert torch.equal(matrix[:4, :6], weight.float()) and not matrix[4:].any() and not matrix[:, 6:].any()
    vector = padding.vector(weight[0])
    assert vector.dtype == torch.float32 and torch.equal(vector, torch.cat([weight[0].float(), torch.zeros(2)]))
    heads = padding.heads(weight, torch.tensor([0, 2]), padded_heads=3)  # 2 heads of 2 rows -> slots 0 and 2 of 3
    assert heads.dtype == torch.float32
    assert torch.equal(heads, torch.cat([weight[:2].float(), torch.zeros(2, 6), weight[2:].float()]))


@pytest.mark.parametrize(
    "closed_attention_layer, dtype, tol",
    [(0, "f32", 1e-4), (2, "f32", 1e-4), (0, "f16", 1e-2)],
    ids=["layer0-zero-head", "layer2-no-heads", "f16"],
)
def test_llama_cpp_runs_the_export_like_transformers(tmp_path, closed_attention_layer, dtype, tol):
    """Opt-in: needs llama-cpp-python, which compiles llama.cpp (README, Deployment); skipped with the reason when
    it is not installed (the numpy model of the deci graph above still checks the file)."""
    try:
        import llama_cpp
    except ImportError:
        pytest.skip(
            "llama-cpp-python is not installed (opt-in: pip install llama-cpp-python); the llama.cpp "
            "parity check did not run"
        )
    compact = compact_model("llama", closed_attention_layer=closed_attention_layer)
    path = export_gguf(compact, tmp_path / "model.gguf", dtype=dtype).path
    ids = [5, 17, 99, 3, 42, 8, 64, 23, 77, 11, 2, 60, 31, 95, 14, 50]
    f32 = llama_cpp.GGML_TYPE_F32  # an f32 KV cache: llama.cpp's default f16 cache would blur the f32 comparison
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=32, n_batch=32, n_threads=1, logits_all=True, verbose=False, type_k=f32, type_v=f32
    )
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - reference).max() <= tol
    if dtype == "f32":  # f16 rounding may flip near-ties of a random model's logits
        assert (got.argmax(-1) == reference.argmax(-1)).all()


@pytest.mark.parametrize("dtype", ["q8_0", "q5_0", "q4_0"])
def test_llama_cpp_runs_the_quantized_export_like_the_f32_compact(tmp_path, dtype):
    """Opt-in (llama-cpp-python, see above): llama.cpp loads every padded quantized file; at q8_0 its top-1 token
    agrees with the f32 compact model (transformers) on at least 95% of positions."""
    try:
        import llama_cpp
    except ImportError:
        pytest.skip(
            "llama-cpp-python is not installed (opt-in: pip install llama-cpp-python); the llama.cpp "
            "check of the quantized files did not run"
        )
    compact = compact_model("llama-biases", seed=1)
    result = export_gguf(compact, tmp_path / f"model-{dtype}.gguf", dtype=dtype)
    assert result.padding["hidden"] > 0 and result.padding["heads"] > 0 and result.padding["ffn"] > 0
    ids = [(7 * i + 3) % compact.config.vocab_size for i in range(48)]
    llm = llama_cpp.Llama(
        model_path=str(result.path), n_ctx=64, n_batch=64, n_threads=1, logits_all=True, verbose=False
    )
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].numpy()
    assert got.shape == reference.shape and np.isfinite(got).all()
    if dtype == "q8_0":
        assert (got.argmax(-1) == reference.argmax(-1)).mean() >= 0.95


def test_the_file_is_named_typed_and_reported_as_written(tmp_path):
    source = tmp_path / "source.gguf"
    write_tokenizer_source(source, vocab=101)
    writer = gguf.GGUFWriter(str(tmp_path / "named.gguf"), arch="llama")  # the same tokenizer, with a model name
    for key, (value, vtype, sub_type) in read_gguf_metadata(source).items():
        if key.startswith("tokenizer."):
            writer.add_key_value(key, value, gguf.GGUFValueType(vtype), sub_type and gguf.GGUFValueType(sub_type))
    writer.add_name("SmolLM2 135M")
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    model = compact_model("llama")
    cases = [
        ({}, "hf-l0 compact llama", "placeholder"),
        ({"tokenizer_gguf": source}, "hf-l0 compact llama", str(source)),
        ({"tokenizer_gguf": tmp_path / "named.gguf"}, "SmolLM2 135M (hf-l0 compact)", str(tmp_path / "named.gguf")),
        ({"tokenizer_gguf": tmp_path / "named.gguf", "name": "mine"}, "mine", str(tmp_path / "named.gguf")),
    ]
    for i, (options, name, tokenizer) in enumerate(cases):
        result = export_gguf(model, tmp_path / f"model{i}.gguf", dtype="f16", **options)
        meta = fields(gguf.GGUFReader(str(result.path)))
        assert (meta["general.name"], meta["general.type"]) == (name, "model")
        assert (result.dtype, result.tokenizer) == ("f16", tokenizer)


def test_copied_tokenizer_arrays_keep_their_item_types(tmp_path):
    source = tmp_path / "source.gguf"
    writer = gguf.GGUFWriter(str(source), arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(101)])
    writer.add_key_value("tokenizer.ggml.scores", [0.5] * 101, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT64)
    writer.add_key_value("tokenizer.ggml.ids", list(range(101)), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT16)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    export_gguf(compact_model("llama"), tmp_path / "model.gguf", tokenizer_gguf=source)
    copied = read_gguf_metadata(tmp_path / "model.gguf", "tokenizer.")
    assert copied["tokenizer.ggml.scores"][2] == gguf.GGUFValueType.FLOAT64
    assert copied["tokenizer.ggml.ids"][2] == gguf.GGUFValueType.UINT16
    assert copied == read_gguf_metadata(source, "tokenizer.")


def test_the_file_is_written_beside_the_target_and_replaced_atomically(tmp_path, monkeypatch):
    import os

    from hf_l0.deploy import gguf_export

    replaced = []
    real_replace = os.replace

    def replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(gguf_export.os, "replace", replace)
    target = tmp_path / "new" / "folder" / "model.gguf"
    export_gguf(compact_model("llama"), target)
    ((tmp, dst),) = replaced
    assert dst == target and tmp.parent == target.parent
    assert tmp.name.startswith(".model.gguf.") and tmp.name.endswith(".tmp")
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]
    before = target.read_bytes()

    def fail(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(compact_model("llama", seed=1), target)
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]


def test_padding_is_logged_with_what_it_added(tmp_path, caplog):
    import logging

    compact = llama_hidden64()
    with caplog.at_level(logging.INFO, logger="hf_l0.deploy.gguf_export"):
        result = export_gguf(compact, tmp_path / "model.gguf", dtype="q8_0")
    added = result.padding
    assert added["ffn"] > 0
    share = 100 * result.padding_weights / result.matrix_weights
    assert [r.getMessage() for r in caplog.records if r.name == "hf_l0.deploy.gguf_export"] == [
        f"{tmp_path / 'model.gguf'}: zero padding to multiples of 32 for q8_0: {added['hidden']} hidden dimensions, "
        f"{added['heads']} query heads, {added['ffn']} FFN neurons ({share:.1f}% of the matrix weights)"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_l0.deploy.gguf_export"):
        export_gguf(compact, tmp_path / "f32.gguf")
    assert not caplog.records  # nothing padded, nothing logged


def test_bad_matrix_types_and_paddings_are_refused_by_name(tmp_path):
    model = compact_model("llama")
    cases = [
        (
            {"dtype": "q4_k"},
            "dtype='q4_k': choose one of f32, f16, q8_0, q5_0, q4_0, q4_1 (the quantized types are written with "
            "gguf-py; for K-quants, quantize the f16 file with llama-quantize).",
        ),
        (
            {"dtype": "q8_0", "pad_to": 16},
            "pad_to=16: q8_0 needs a positive multiple of its block size 32 (the row length of every quantized "
            "matrix must be one).",
        ),
        (
            {"dtype": "q8_0", "pad_to": 32.0},
            "pad_to=32.0: q8_0 needs a positive multiple of its block size 32 (the row length of every quantized "
            "matrix must be one).",
        ),
    ]
    for options, message in cases:
        with pytest.raises(ValueError) as refused:
            export_gguf(model, tmp_path / "m.gguf", **options)
        assert str(refused.value) == message
    model.config.head_dim = 7  # the attention shapes do not matter: the check comes first
    with pytest.raises(ValueError) as refused:
        export_gguf(model, tmp_path / "m.gguf")
    assert str(refused.value) == "head_dim=7 is odd: RoPE needs pairs of dimensions."
    assert not any(tmp_path.iterdir())


def test_a_config_without_hidden_act_is_silu():
    from hf_l0.deploy.gguf_export import _check_model

    model = bare_causal_lm()
    model.config.model_type = "llama"  # and no hidden_act: Llama's default, SiLU
    assert _check_model(model) is None


def test_a_disabled_sliding_window_keeps_the_context(tmp_path):
    model = make_model("llama")
    model.config.sliding_window, model.config.use_sliding_window = 16, False  # Qwen2: a window that is off
    export_gguf(model, tmp_path / "m.gguf")
    assert fields(gguf.GGUFReader(str(tmp_path / "m.gguf")))["deci.context_length"] == (
        model.config.max_position_embeddings
    )


def test_an_offset_type_export_names_its_type_and_head_width_when_padding_would_mix(tmp_path):
    compact = compact_model("llama-biases", seed=1)  # hidden 48 and a KV group of layer 1 padded with a zero head
    head_dim = compact.config.hidden_size // compact.config.num_attention_heads
    with pytest.raises(ValueError) as refused:
        export_gguf(compact, tmp_path / "m.gguf", dtype="q4_1")
    message = str(refused.value)
    assert message.startswith("dtype='q4_1' stores each block with an offset") and f" x {head_dim} -> " in message
    assert not any(tmp_path.iterdir())


def test_rope_factors_and_norms_stay_float32_in_an_f16_export_of_a_bf16_model(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=2, rope_parameters=ROPE_PARAMETERS["llama3"])
    model = randomize_(tf.LlamaForCausalLM(config)).eval().to(torch.bfloat16)
    result = export_gguf(model, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(result.path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["rope_freqs.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(
        tensors(reader)["output_norm.weight"], model.model.norm.weight.detach().float().numpy()
    )
