import copy

import pytest
import torch
import transformers as tf
from conftest import CONFIGS, DECODERS, ENCODERS, TASK_MODELS, make_inputs, make_model, model_output
from helpers import randomize_, randomize_gates

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model, unpatch_model

TOL = 1e-5


def closed_fraction(model) -> dict[str, float]:
    return {name: (value == 0).float().mean().item() for name, value in hf_l0.get_gates(model).deterministic().items()}


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def all_outputs(model, inputs) -> list[torch.Tensor]:
    """Every hidden state and the final output: logits alone can hide a discrepancy inside the network."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    final = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return [*out.hidden_states, final]


@pytest.mark.parametrize("family, auto_class", TASK_MODELS)
@pytest.mark.parametrize("hidden", [False, True], ids=["no-hidden", "hidden"])
def test_pruned_equals_gated(family, auto_class, hidden):
    model = make_model(family, auto_class)
    inputs = make_inputs()
    patch_model(model, L0Config(hidden=hidden, layers=True))
    randomize_gates(model)
    shares = closed_fraction(model)
    for name in ("heads", "ffn") + (("hidden",) if hidden else ()):
        assert 0.15 < shares[name] < 0.9, (name, shares)
    gated = all_outputs(model, inputs)
    full, kept = hf_l0.full_size(model).total, hf_l0.deterministic_size(model).total
    dense_params = params(model) - params(hf_l0.get_gates(model))
    keep = hf_l0.get_gates(model).deterministic()["hidden"] != 0 if hidden else None

    prune_model(model)
    assert not hf_l0.is_patched(model)
    assert not any("log_alpha" in name for name, _ in model.named_parameters())
    pruned = all_outputs(model, inputs)
    mask = inputs["attention_mask"].bool()
    assert len(gated) == len(pruned)
    for a, b in zip(gated, pruned):
        if keep is not None and a.shape[-1] == keep.numel() and b.shape[-1] == int(keep.sum()):
            assert (a[..., ~keep] == 0).all()  # pruned hidden dimensions are exactly zero in the gated model
            a = a[..., keep]
        diff = (a - b).abs()[mask] if a.dim() == 3 else (a - b).abs()
        assert diff.max().item() <= TOL
    # the deterministic size is exactly the parameter count of the compact model
    assert dense_params - params(model) == int(full.item() - kept.item())
    assert params(model) < dense_params


@pytest.mark.parametrize("family, auto_class", TASK_MODELS)
def test_all_gates_open_prunes_to_the_original(family, auto_class):
    model = make_model(family, auto_class)
    inputs = make_inputs()
    reference = model_output(model, inputs)
    dense_params = params(model)
    patch_model(model, L0Config(hidden=True, layers=True))
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.fill_(10.0)
    prune_model(model.eval())
    assert params(model) == dense_params
    assert torch.allclose(model_output(model, inputs), reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ENCODERS + DECODERS)
def test_unpatch_restores_outputs_bitwise(family):
    auto_class = "AutoModelForSequenceClassification" if family in ENCODERS else "AutoModelForCausalLM"
    model = make_model(family, auto_class)
    inputs = make_inputs()
    reference = model_output(model, inputs)
    modules_before = [(name, type(m)) for name, m in model.named_modules()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    patch_model(model, L0Config(hidden=True, layers=True))
    randomize_gates(model)
    assert not torch.equal(model_output(model, inputs), reference)
    unpatch_model(model)
    assert torch.equal(model_output(model, inputs), reference)
    assert [(name, type(m)) for name, m in model.named_modules()] == modules_before
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_generate_identical_after_pruning(family, attn):
    model = make_model(family, "AutoModelForCausalLM", attn=attn)
    prompt = make_inputs(batch=1, length=5)["input_ids"]
    patch_model(model, L0Config(hidden=True, layers=True))
    randomize_gates(model, closed_attention_layer=0)  # layer 0 loses its attention: exercises the cache stand-in
    model.eval()
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    gated = model.generate(prompt, **kwargs)
    gated_no_cache = model.generate(prompt, use_cache=False, **kwargs)
    prune_model(model)
    pruned = model.generate(prompt, **kwargs)
    assert torch.equal(gated, gated_no_cache)
    assert torch.equal(gated, pruned)
    assert pruned.shape[1] == prompt.shape[1] + 12


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_sdpa_and_eager_agree_when_gated(family):
    auto_class = "AutoModelForSequenceClassification" if family == "bert" else "AutoModelForCausalLM"
    outputs = []
    for attn in ("eager", "sdpa"):
        model = make_model(family, auto_class, attn=attn)
        patch_model(model, L0Config(hidden=True, layers=True))
        randomize_gates(model)
        outputs.append(model_output(model.eval(), make_inputs()))
    mask = make_inputs()["attention_mask"].bool()
    a, b = outputs
    assert ((a - b).abs()[mask] if a.dim() == 3 else (a - b).abs()).max() <= TOL


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_tied_embeddings_stay_tied(family):
    model = make_model(family, "AutoModelForCausalLM")
    patch_model(model, L0Config(hidden=True, layers=True))
    assert model.lm_head.weight is model.get_input_embeddings().weight
    randomize_gates(model)
    prune_model(model.eval())
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.in_features == model.get_input_embeddings().embedding_dim


def test_gqa_gate_covers_a_kv_group():
    model = make_model("llama")
    patch_model(model, L0Config(layers=True))
    gates = hf_l0.get_gates(model)
    assert gates.heads.log_alpha.shape == (3, 2)  # 6 query heads, 2 KV heads -> 2 groups
    with torch.no_grad():
        gates.heads.log_alpha.fill_(10.0)
        gates.heads.log_alpha[1, 0] = -10.0
    prune_model(model.eval())
    attn = model.model.layers[1].self_attn
    assert attn.k_proj.out_features == attn.head_dim == attn.v_proj.out_features
    assert attn.q_proj.out_features == 3 * attn.head_dim == attn.o_proj.in_features
    assert model.config.l0_structure["layers"][1]["attention_heads"] == 3
    assert model.config.l0_structure["layers"][1]["key_value_heads"] == 1


def test_expected_size_is_differentiable_and_bounded():
    model = make_model("llama")
    patch_model(model, L0Config(hidden=True, layers=True))
    expected = hf_l0.expected_size(model)
    full = hf_l0.full_size(model)
    assert 0 < expected.total.item() < full.total.item()
    sparsity = hf_l0.expected_sparsity(model)
    sparsity.backward()
    for gate in hf_l0.get_gates(model).gates.values():
        assert gate.log_alpha.grad is not None and (gate.log_alpha.grad <= 0).all()
    assert 0.0 < sparsity.item() < 0.2  # gates start nearly open (droprate_init=0.01)


@pytest.mark.parametrize(
    "family, auto_class",
    [
        ("bert", "AutoModelForSequenceClassification"),
        ("gpt2", "AutoModelForCausalLM"),
        ("llama", "AutoModelForCausalLM"),
    ],
)
def test_compact_model_rebuilds_from_config(family, auto_class):
    model = make_model(family, auto_class)
    patch_model(model, L0Config(hidden=True, layers=True))
    randomize_gates(model)
    prune_model(model.eval())
    config = copy.deepcopy(model.config)
    rebuilt = hf_l0.build_compact_model(type(model), config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    inputs = make_inputs()
    assert torch.equal(model_output(rebuilt, inputs), model_output(model, inputs))


def test_gates_follow_the_mode_of_the_model_they_join():
    model = make_model("bert", "AutoModelForSequenceClassification")  # already in eval mode
    patch_model(model, L0Config(layers=True))
    assert not hf_l0.get_gates(model).heads.training
    inputs = make_inputs()
    assert torch.equal(model_output(model, inputs), model_output(model, inputs))
    model.train()
    assert hf_l0.get_gates(model).heads.training


def test_gate_modules_are_visible_in_named_modules():
    model = make_model("bert", "AutoModelForSequenceClassification")
    patch_model(model, L0Config(hidden=True, layers=True))
    gates = {name: m for name, m in model.named_modules() if isinstance(m, hf_l0.HardConcreteGate)}
    assert set(gates) == {f"l0_gates.{n}" for n in ("heads", "ffn", "attention_layers", "ffn_layers", "hidden")}
    assert all(isinstance(m.log_alpha, torch.nn.Parameter) for m in gates.values())


def test_training_mode_samples_and_backprop_reaches_gates():
    model = make_model("gpt2")
    patch_model(model, L0Config(hidden=True, droprate_init=0.5, layers=True))
    model.train()
    inputs = make_inputs()
    torch.manual_seed(0)
    for _ in range(4):  # a gate clamped at exactly 0 or 1 in one sample passes no gradient in that sample
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
    for gate in hf_l0.get_gates(model).gates.values():
        assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0


def test_uniform_target_keeps_exact_counts_per_layer():
    model = make_model("llama")
    patch_model(
        model, L0Config(target_heads=1, target_intermediate_size=20, hidden=True, target_hidden_size=40, layers=False)
    )
    randomize_gates(model)
    prune_model(model.eval())
    structure = model.config.l0_structure
    assert structure["hidden_size"] == 40
    assert {layer["key_value_heads"] for layer in structure["layers"]} == {1}
    assert {layer["intermediate_size"] for layer in structure["layers"]} == {20}


# -- bad input ---------------------------------------------------------------------------------------------------------


def test_unsupported_model_type_lists_supported_ones():
    model = tf.T5ForConditionalGeneration(
        tf.T5Config(vocab_size=50, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    )
    with pytest.raises(ValueError, match=r"no adapter for model_type='t5'.*bert.*gpt2.*llama.*qwen2"):
        patch_model(model, L0Config(layers=True))


def test_patching_twice_is_refused():
    model = make_model("bert", "AutoModel")
    patch_model(model, L0Config(layers=True))
    with pytest.raises(ValueError, match="already patched"):
        patch_model(model, L0Config(layers=True))


def test_prune_unpatched_model_is_refused():
    with pytest.raises(ValueError, match="no L0 gates.*patch_model"):
        prune_model(make_model("gpt2"))


def test_patching_a_pruned_model_is_refused():
    model = make_model("gpt2")
    patch_model(model, L0Config(layers=True))
    randomize_gates(model)
    prune_model(model.eval())
    with pytest.raises(ValueError, match="already pruned"):
        patch_model(model, L0Config(layers=True))


def test_target_larger_than_model_is_refused():
    with pytest.raises(ValueError, match="target_heads=9 exceeds"):
        patch_model(make_model("llama"), L0Config(target_heads=9, layers=False))


def test_hidden_gates_on_unsupported_head_are_refused():
    model = make_model("bert", "AutoModelForMaskedLM")
    with pytest.raises(ValueError, match="hidden-dimension gates are not supported on BertForMaskedLM"):
        patch_model(model, L0Config(hidden=True, layers=True))
    patch_model(model, L0Config(hidden=False, layers=True))  # heads / FFN / layers work on any head


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="L0Config"):
        patch_model(make_model("gpt2"), {"heads": True})


def saved_activation_bytes(model, inputs) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs)
    return sum(storages.values())


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gates_keep_almost_no_extra_activations_for_backward(family, attn):
    """Head, neuron and layer gates add at most one hidden-size activation per layer to what training keeps for
    backward (where attention's output and the output projection's input shared a buffer); plain ``x * z`` products
    would add four (FFN width + attention width + two sublayer outputs)."""
    auto_class = "AutoModelForMaskedLM" if family == "bert" else "AutoModelForCausalLM"
    model = make_model(family, auto_class, attn=attn).train()
    inputs = make_inputs(batch=4, length=32)
    dense = saved_activation_bytes(model, inputs)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    extra = saved_activation_bytes(model, inputs) - dense
    config = model.config
    tokens, layers = inputs["input_ids"].numel(), config.num_hidden_layers
    gate_bytes = 64 * sum(p.numel() for p in hf_l0.get_gates(model).parameters())  # samples, noise: a few copies
    assert 0 <= extra <= layers * tokens * config.hidden_size * 4 + gate_bytes, (extra, dense)


def test_pruned_copy_leaves_the_gated_model_gated_and_equals_pruning_it():
    from hf_l0.pruning.prune import pruned_copy

    model = hf_l0.patch_model(make_model("llama"), hf_l0.L0Config(hidden=True, layers=True))
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.normal_(0.0, 3.0)
    reference = hf_l0.prune_model(copy.deepcopy(model).eval())
    compact = pruned_copy(model)
    assert hf_l0.is_patched(model) and not hf_l0.is_patched(compact)
    assert compact.config.l0_structure == reference.config.l0_structure
    for (name, a), (_, b) in zip(compact.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


# -- identity layers leave decoders ------------------------------------------------------------------------------------
def shut_layers(model, layers) -> None:
    """Both sublayers of each of ``layers`` removed: the attention by its units, the FFN by its layer gate."""
    gates = hf_l0.get_gates(model)
    with torch.no_grad():
        for i in layers:
            gates.heads.log_alpha[i] = -10.0
            gates.ffn_layers.log_alpha[i] = -10.0
            gates.attention_layers.log_alpha[i] = 10.0  # open: the bias survives unless the units take it (no bias)


def gated_decoder(family: str, closed_layers, **config_fields):
    config = CONFIGS[family]()
    config = type(config).from_dict({**config.to_dict(), **config_fields})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = randomize_(tf.AutoModelForCausalLM.from_config(config))
    patch_model(model, L0Config(hidden=True, layers=True))
    randomize_gates(model)
    gates = hf_l0.get_gates(model)
    with torch.no_grad():  # every other layer keeps both sublayers (random widths, one unit at least)
        for gate in (gates.heads, gates.ffn):
            gate.log_alpha[:, 0] = 10.0
        gates.attention_layers.log_alpha.fill_(10.0)
        gates.ffn_layers.log_alpha.fill_(10.0)
    shut_layers(model, closed_layers)
    if family == "gpt2":  # GPT-2's output projections have biases: only the layer gates take them
        with torch.no_grad():
            hf_l0.get_gates(model).attention_layers.log_alpha[list(closed_layers)] = -10.0
    return model.eval()


@pytest.mark.parametrize(
    "family, config_fields",
    [
        ("llama", {}),
        ("gpt2", {}),
        # sliding-window layers: the cache and the masks read config.layer_types per layer
        (
            "qwen2",
            {
                "use_sliding_window": True,
                "sliding_window": 4,
                "layer_types": ["full_attention", "sliding_attention", "full_attention"],
            },
        ),
    ],
    ids=["llama", "gpt2", "qwen2-sliding"],
)
def test_a_layer_with_both_sublayers_removed_leaves_a_decoder(family, config_fields, tmp_path):
    model = gated_decoder(family, closed_layers=[0], **config_fields)
    inputs, prompt = make_inputs(length=11), make_inputs(batch=1, length=5)["input_ids"]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    gated_outputs, gated_tokens = model_output(model, inputs), model.generate(prompt, **kwargs)
    layer_types = getattr(model.config, "layer_types", None)
    prune_model(model)
    assert len(hf_l0.arch.get_adapter(model).layers()) == model.config.num_hidden_layers == 2
    assert model.config.l0_structure["dropped_layers"] == [0] and len(model.config.l0_structure["layers"]) == 2
    if layer_types is not None:
        assert model.config.layer_types == layer_types[1:]
    mask = inputs["attention_mask"].bool()
    assert (model_output(model, inputs) - gated_outputs).abs()[mask].max() <= TOL
    # layer 0 is gone: the cache must be renumbered, or generate() loses the sequence length
    assert torch.equal(model.generate(prompt, **kwargs), gated_tokens)
    rebuilt = hf_l0.build_compact_model(type(model), copy.deepcopy(model.config))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(model_output(rebuilt.eval(), inputs), model_output(model, inputs))
    hf_l0.save_pretrained(model, tmp_path)  # its card lists layers by their original index
    rows = (tmp_path / "README.md").read_text().split("## Kept structure")[1]
    assert "| 0 | 0/" in rows and "layer dropped |" in rows and "| 2 | " in rows and "| 3 | " not in rows
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert loaded.config.num_hidden_layers == 2
    assert (model_output(loaded, inputs) - gated_outputs).abs()[mask].max() <= TOL


@pytest.mark.parametrize(
    "family, config_fields",
    [("bert", {}), ("gpt2", {"scale_attn_by_inverse_layer_idx": True}), ("llama", {})],
    ids=["bert-post-norm", "gpt2-scale-by-layer-index", "llama-drop_empty_layers=False"],
)
def test_layers_stay_where_dropping_would_change_the_outputs_or_is_turned_off(family, config_fields):
    if family == "bert":
        model = make_model("bert", "AutoModelForSequenceClassification")
        patch_model(model, L0Config(layers=True))
        randomize_gates(model)
        shut_layers(model, [0])
        with torch.no_grad():
            hf_l0.get_gates(model).attention_layers.log_alpha[0] = -10.0
        model.eval()
    else:
        model = gated_decoder(family, closed_layers=[0], **config_fields)
    inputs = make_inputs()
    gated = model_output(model, inputs)
    prune_model(model, drop_empty_layers=family != "llama")
    assert len(hf_l0.arch.get_adapter(model).layers()) == 3 and "dropped_layers" not in model.config.l0_structure
    mask = inputs["attention_mask"].bool()
    diff = (model_output(model, inputs) - gated).abs()
    assert (diff[mask] if diff.dim() == 3 else diff).max() <= TOL


def test_a_decoder_with_every_layer_removed_keeps_one():
    model = gated_decoder("llama", closed_layers=[0, 1, 2])
    inputs, prompt = make_inputs(), make_inputs(batch=1, length=5)["input_ids"]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    gated, gated_tokens = model_output(model, inputs), model.generate(prompt, **kwargs)
    prune_model(model)
    assert model.config.num_hidden_layers == 1 and model.config.l0_structure["dropped_layers"] == [1, 2]
    assert (model_output(model, inputs) - gated).abs()[inputs["attention_mask"].bool()].max() <= TOL
    assert torch.equal(model.generate(prompt, **kwargs), gated_tokens)
