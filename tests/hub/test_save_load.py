"""Saving and loading: dense and tied models, refusal of gated models, atomic saves, strict loading of
corrupt or contradicting weights."""

import json
import os
import struct
import warnings

import pytest
import torch
from conftest import compact_model, make_inputs, make_model, model_output
from helpers import max_diff
from safetensors.torch import load_file, save_file

import hf_l0
from hf_l0 import L0Config, patch_model

TOL = 1e-5


# -- round trips -------------------------------------------------------------------------------------------------------


def test_tied_embeddings_saved_once_and_loaded_tied(tmp_path):
    model = compact_model("llama", "AutoModelForCausalLM")
    hf_l0.save_pretrained(model, tmp_path / "m")
    names = set(load_file(tmp_path / "m" / "model.safetensors"))
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    loaded = hf_l0.from_pretrained(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_dense_model_round_trip(tmp_path):
    model = make_model("gpt2")
    hf_l0.save_pretrained(model, tmp_path / "d")
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config and "l0_structure" not in config
    inputs = make_inputs()
    assert (
        max_diff(model_output(hf_l0.from_pretrained(tmp_path / "d"), inputs), model_output(model, inputs), inputs)
        <= TOL
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_compact_model_round_trip_keeps_dtype_and_logits(tmp_path, dtype):
    model = compact_model("llama", "AutoModelForCausalLM").to(dtype)
    hf_l0.save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == str(dtype).removeprefix("torch.")
    loaded = hf_l0.from_pretrained(tmp_path / "m")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    loaded.config._attn_implementation = model.config._attn_implementation  # the same kernel (not saved)
    inputs = make_inputs()
    with torch.no_grad():
        expected, got = model(**inputs).logits, loaded(**inputs).logits
    assert got.dtype == dtype and torch.equal(got, expected)  # the same weights in the same dtype: bit for bit


def test_patched_model_is_not_saved(tmp_path):
    model = make_model("gpt2")
    patch_model(model, L0Config(layers=True))
    with pytest.raises(
        ValueError,
        match=r"^the model still carries L0 gates: call hf_l0\.prune_model\(model\) before saving it as a compact "
        r"model \(or save the gates with L0Config / the trainer's checkpoints\)\.$",
    ):
        hf_l0.save_pretrained(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_only_the_main_process_writes(tmp_path):
    model = compact_model("gpt2", "AutoModelForCausalLM")
    assert hf_l0.save_pretrained(model, str(tmp_path / "m"), is_main_process=False) == tmp_path / "m"
    assert not (tmp_path / "m").exists()
    assert (hf_l0.save_pretrained(model, tmp_path / "m", is_main_process=True) / "model.safetensors").is_file()


def test_native_false_on_a_dense_model_writes_the_stock_save(tmp_path):
    model = make_model("gpt2")
    out = hf_l0.save_pretrained(model, tmp_path / "m", native=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config and not list(out.glob("*.py"))


# -- atomic saves -----------------------------------------------------------------------------------------------------


def test_interrupted_save_leaves_previous_save_intact(tmp_path):
    target = tmp_path / "m"
    first = compact_model("gpt2", "AutoModelForCausalLM", seed=0)
    hf_l0.save_pretrained(first, target)
    (target / "trainer_state.json").write_text("{}")  # a file the save does not own
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    class ExplodingTokenizer:
        def save_pretrained(self, directory):
            raise KeyboardInterrupt  # interrupted after the weights were written

    second = compact_model("gpt2", "AutoModelForCausalLM", seed=1)
    with pytest.raises(KeyboardInterrupt):
        hf_l0.save_pretrained(second, target, ExplodingTokenizer())
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directory left behind
    inputs = make_inputs()
    assert max_diff(model_output(hf_l0.from_pretrained(target), inputs), model_output(first, inputs), inputs) <= TOL

    # a completed save replaces the weights (stale shards go), keeps foreign files
    hf_l0.save_pretrained(second, target, max_shard_size="20KB")
    hf_l0.save_pretrained(second, target)
    names = sorted(p.name for p in target.iterdir())
    assert "trainer_state.json" in names and "model.safetensors" in names
    assert not any(n.startswith("model-0") or n.endswith(".index.json") for n in names)
    assert max_diff(model_output(hf_l0.from_pretrained(target), inputs), model_output(second, inputs), inputs) <= TOL


# -- strict loading ---------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_llama(tmp_path):
    model = compact_model("llama", "AutoModelForCausalLM")
    return hf_l0.save_pretrained(model, tmp_path / "m")


def test_truncated_weights_name_file_and_tensor(saved_llama):
    weights = saved_llama / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated safetensors file: tensor '.*'"):
        hf_l0.from_pretrained(saved_llama)
    weights.write_bytes(data[:5])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated"):
        hf_l0.from_pretrained(saved_llama)


def test_missing_and_unexpected_tensors_are_errors(saved_llama):
    weights = saved_llama / "model.safetensors"
    state = load_file(weights)
    name = "model.layers.1.self_attn.k_proj.weight"
    full = dict(state)
    state.pop(name)
    save_file(state, weights)
    with pytest.raises(ValueError, match=rf"missing tensor '{name}'"):
        hf_l0.from_pretrained(saved_llama)
    full["model.layers.1.extra.weight"] = torch.zeros(2)
    save_file(full, weights)
    with pytest.raises(ValueError, match=r"unexpected tensor 'model.layers.1.extra.weight' in .*model.safetensors"):
        hf_l0.from_pretrained(saved_llama)


def test_structure_contradicting_weights_is_an_error(saved_llama):
    path = saved_llama / "config.json"
    config = json.loads(path.read_text())
    layer = next(i for i, layer in enumerate(config["l0_structure"]["layers"]) if layer["intermediate_size"] > 1)
    config["l0_structure"]["layers"][layer]["intermediate_size"] -= 1
    path.write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=rf"tensor 'model.layers.{layer}.mlp.up_proj.weight' in .*model.safetensors "
        r"has shape .* but .*config.json",
    ):
        hf_l0.from_pretrained(saved_llama)
    config["l0_structure"]["layers"][layer]["intermediate_size"] = 10_000
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"layers\[{layer}\].intermediate_size=10000 must be an int in \[0, 37\]"):
        hf_l0.from_pretrained(saved_llama)


def test_compact_directory_without_structure_is_refused(saved_llama):
    path = saved_llama / "config.json"
    config = json.loads(path.read_text())
    config.pop("l0_structure")
    path.write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"config\.json: model_type 'hf_l0_llama' but no l0_structure: the structure of this compact "
        r"model is unknown\.$",
    ):
        hf_l0.from_pretrained(saved_llama)


def test_a_pending_save_that_cannot_be_finished_loads_with_a_warning_at_the_callers_line(saved_llama, monkeypatch):
    def read_only(directory):  # what finish_interrupted_save meets in a directory it may not write
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hf_l0.hub.save, "finish_interrupted_save", read_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf_l0.from_pretrained(saved_llama)  # nothing pending: no warning
    (saved_llama / (hf_l0.hub.save.COMMIT_PREFIX + "abc123")).mkdir()
    with pytest.warns(UserWarning) as caught:
        model = hf_l0.from_pretrained(saved_llama)
    assert len(caught) == 1
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds a frame between the caller and the module
        assert caught[0].filename == __file__  # stacklevel: the line that called from_pretrained
    assert str(caught[0].message) == (
        f"{saved_llama}: a save interrupted by a crash (.hf_l0-commit-abc123) could not be finished ([Errno 13] "
        "Permission denied); the directory may mix two models. Save the model there again."
    )
    assert model.config.l0_structure == json.loads((saved_llama / "config.json").read_text())["l0_structure"]


def test_sharded_index_problems_are_errors(tmp_path):
    model = compact_model("gpt2", "AutoModelForCausalLM")
    out = hf_l0.save_pretrained(model, tmp_path / "m", max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (out / shard).rename(out / "moved.safetensors")
    with pytest.raises(ValueError, match=rf"lists tensor '.*' in .*{shard}, which is missing"):
        hf_l0.from_pretrained(out)


def test_pickled_weights_are_never_loaded(tmp_path):
    model = make_model("gpt2")
    (tmp_path / "m").mkdir()
    model.config.save_pretrained(tmp_path / "m")
    torch.save({}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled weights are never loaded"):
        hf_l0.from_pretrained(tmp_path / "m")


def test_safetensors_header_check_names_tensor(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(8)}, path)
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + header_len + 20])
    with pytest.raises(ValueError, match=r"tensor 'b'"):
        hf_l0.hub.checkpoint.read_safetensors_header(str(path))


def test_one_mismatch_report_for_files_at_hand_and_in_the_hub_cache():
    """hf_l0's loader and the written classes (which see only transformers' loading info for a Hub repo) report
    mismatches through the same function, in the same words."""
    info = {"missing_keys": {"b.weight"}, "unexpected_keys": set(), "mismatched_keys": {("a.weight", (3, 4), (2, 4))}}
    problems = hf_l0.hub.checkpoint.loading_info_problems(info)
    assert problems == ["missing tensor 'b.weight'", "tensor 'a.weight' has shape (3, 4) but the model builds (2, 4)"]
    with pytest.raises(
        ValueError,
        match=r"^me/repo: the weights do not match config.json \(l0_structure\): "
        r"missing tensor 'b.weight'; tensor 'a.weight' has shape",
    ):
        hf_l0.hub.checkpoint.raise_on_mismatch("me/repo", "config.json (l0_structure)", problems)
    hf_l0.hub.checkpoint.raise_on_mismatch("me/repo", "config.json", [])  # nothing to report: no error
    with pytest.raises(ValueError, match=r"missing tensor 't19'; \.\.\. 5 more$"):
        hf_l0.hub.checkpoint.raise_on_mismatch("d", "config.json", [f"missing tensor 't{i}'" for i in range(25)])


def test_the_saved_generation_config_is_loaded_and_may_be_absent(tmp_path):
    model = compact_model("gpt2", "AutoModelForCausalLM")
    model.generation_config.max_length = 7
    model.generation_config.repetition_penalty = 1.3
    out = hf_l0.save_pretrained(model, tmp_path / "m")
    loaded = hf_l0.from_pretrained(out)
    assert (loaded.generation_config.max_length, loaded.generation_config.repetition_penalty) == (7, 1.3)
    (out / "generation_config.json").unlink()  # e.g. a repository that never had one
    loaded = hf_l0.from_pretrained(out)
    assert loaded.generation_config.repetition_penalty is None  # unset: generate() uses its default
    encoder = compact_model("bert", "AutoModelForSequenceClassification")
    out = hf_l0.save_pretrained(encoder, tmp_path / "e")
    # ignored: a classifier generates nothing
    (out / "generation_config.json").write_text(json.dumps({"max_length": 7}))
    assert not hasattr(hf_l0.from_pretrained(out), "generation_config")


class FakeQuantizer:
    """What transformers leaves on a model as ``hf_quantizer``, reduced to what hf-l0 reads (its method); a stock save
    that met it would fail (it has none of a real quantizer's methods)."""

    def __init__(self, method) -> None:
        self.quantization_config = type("QuantizationConfig", (), {"quant_method": method})()


class Method:  # transformers' QuantizationMethod is an enum: its value is the name
    value = "GGUF"


def test_a_model_loaded_from_gguf_saves_as_a_float_checkpoint_and_keeps_its_quantizer(tmp_path):
    model = compact_model("llama", "AutoModelForCausalLM")
    assert hf_l0.hub.gguf_quantizer(model) is None
    for method in ("bitsandbytes", None):
        model.hf_quantizer = FakeQuantizer(method)
        assert hf_l0.hub.gguf_quantizer(model) is None  # other quantizations are not GGUF
    for method in ("gguf", Method()):
        quantizer = model.hf_quantizer = FakeQuantizer(method)
        assert hf_l0.hub.gguf_quantizer(model) is quantizer
    model.is_quantized = True
    model.config.quantization_config = {"quant_method": "gguf"}
    out = hf_l0.save_pretrained(model, tmp_path / "m")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert model.hf_quantizer is quantizer and model.is_quantized  # put back after the save
    assert model.config.quantization_config == {"quant_method": "gguf"}
    inputs = make_inputs()
    assert max_diff(model_output(hf_l0.from_pretrained(out), inputs), model_output(model, inputs), inputs) <= TOL


def test_tied_groups_name_the_parameters_that_share_one_tensor():
    tied = compact_model("llama", "AutoModelForCausalLM")
    assert hf_l0.hub.tied_groups(tied) == [{"model.embed_tokens.weight", "lm_head.weight"}]
    tied.lm_head.weight = torch.nn.Parameter(tied.lm_head.weight.detach().clone())  # untied
    assert hf_l0.hub.tied_groups(tied) == []
