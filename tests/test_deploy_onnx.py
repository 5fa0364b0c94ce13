"""ONNX export of compact models through transformers' exporter: ONNX Runtime equals PyTorch on other batch sizes
and lengths than exported, greedy generation with the KV-cache graphs equals generate(), int8 stays close."""

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import make_model
from helpers import randomize_, randomize_gates

import hf_l0
from hf_l0.deploy.onnx import OnnxGenerator, check_onnx, example_inputs, export_onnx

onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
pytest.importorskip("onnxscript", reason="the deploy extra is not installed: pip install -e '.[deploy]'")

TOL = 1e-4


def compact_model(family: str, auto_class: str):
    """A compact model with non-uniform layers, hidden pruning, and removed sublayers (attention of layer 0, FFN of
    layer 1)."""
    model = make_model(family, auto_class)
    hf_l0.patch_model(model, hf_l0.L0Config(hidden=True, layers=True))
    randomize_gates(model)
    compact = hf_l0.prune_model(model).eval()
    layers = compact.config.l0_structure["layers"]
    assert layers[0]["attention_heads"] == 0 and layers[1]["intermediate_size"] == 0
    assert len({(layer["attention_heads"], layer["intermediate_size"]) for layer in layers}) > 1  # non-uniform
    return compact


@pytest.mark.parametrize(
    "family, auto_class",
    [
        ("bert", "AutoModelForSequenceClassification"),
        ("roberta", "AutoModel"),
        ("llama", "AutoModelForCausalLM"),
        ("gpt2", "AutoModelForCausalLM"),
    ],
)
def test_onnx_runtime_equals_pytorch_on_new_shapes(tmp_path, family, auto_class):
    compact = compact_model(family, auto_class)
    result = export_onnx(compact, tmp_path / "model.onnx")
    assert result.path.is_file() and result.max_abs_diff <= TOL
    graph = onnx.load(str(result.path)).graph
    axes = [[d.dim_param for d in value.type.tensor_type.shape.dim] for value in graph.input]
    assert all(len(dims) == 2 and all(dims) for dims in axes)  # batch and sequence axes are symbolic ...
    assert len({dims[0] for dims in axes}) == len({dims[1] for dims in axes}) == 1  # ... and shared by every input
    assert [value.name for value in graph.input] == result.input_names
    assert not compact.training
    for batch, length in ((1, 5), (4, 21)):  # neither the traced (2 x 8) nor the checked (3 x 13) shape
        inputs = example_inputs(compact, result.input_names, batch, length, seed=batch)
        assert check_onnx(result.path, compact, inputs, result.output_name) <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary files left behind


def test_compact_onnx_is_smaller_than_dense(tmp_path):
    dense = make_model("llama", "AutoModelForCausalLM")
    export_onnx(dense, tmp_path / "dense.onnx", check=False)
    export_onnx(compact_model("llama", "AutoModelForCausalLM"), tmp_path / "compact.onnx", check=False)
    assert (tmp_path / "compact.onnx").stat().st_size < 0.8 * (tmp_path / "dense.onnx").stat().st_size


def test_gated_model_and_bad_path_are_refused(tmp_path):
    model = make_model("bert", "AutoModel")
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(model, tmp_path / "model.bin")
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    with pytest.raises(ValueError, match="prune_model"):
        export_onnx(model, tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    compact = compact_model("bert", "AutoModel")
    import hf_l0.deploy.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "onnx_outputs", lambda *args, **kwargs: (np.ones(3), np.zeros(3)))
    with pytest.raises(AssertionError, match="differs from PyTorch"):
        export_onnx(compact, tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())
    assert not compact.training  # the model's mode is restored on failure too
    compact.train()
    export_onnx(compact, tmp_path / "model.onnx", check=False)
    assert compact.training and (tmp_path / "model.onnx").is_file()


def generating_llama():
    """A compact Llama with removed sublayers (attention of layer 0, FFN of layer 1) whose greedy tokens vary: untied
    embeddings and wide random weights (a tiny model with the default init repeats one token, which would hide a
    wrong cache or position)."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=101,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    config._attn_implementation = "eager"
    model = randomize_(tf.LlamaForCausalLM(config), 0).eval()
    hf_l0.patch_model(model, hf_l0.L0Config(hidden=True, layers=True))
    randomize_gates(model)
    compact = hf_l0.prune_model(model).eval()
    layers = compact.config.l0_structure["layers"]
    assert layers[0]["attention_heads"] == 0 and layers[1]["intermediate_size"] == 0
    return compact


def test_onnx_runtime_generates_the_same_greedy_tokens_with_the_kv_cache(tmp_path):
    compact = generating_llama()
    result = export_onnx(compact, tmp_path / "generation", generation=True)
    assert result.components == ["prefill", "decode"] and result.max_abs_diff <= TOL  # checked on its own prompts
    assert {"prefill.onnx", "decode.onnx", "export.json", "config.json"} <= {p.name for p in result.path.iterdir()}
    decode = onnx.load(str(result.path / "decode.onnx"), load_external_data=False).graph
    assert any("cache" in value.name for value in decode.input)  # the decode step reads the KV cache ...
    assert [d.dim_value for d in decode.input[0].type.tensor_type.shape.dim][1] == 1  # ... and one new token
    # New prompts, lengths and padding (rows of 11, 8 and 5 tokens, left-padded), 16 tokens.
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, compact.config.vocab_size, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = attention_mask[2, :6] = 0
    input_ids[attention_mask == 0] = compact.config.pad_token_id
    expected = compact.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=16, do_sample=False)
    got = OnnxGenerator(result.path).generate(input_ids, attention_mask, max_new_tokens=16)
    assert torch.equal(got, expected)
    assert all(len(set(row)) > 4 for row in expected[:, 11:].tolist())  # tokens vary: the cache matters
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generation"]  # no temporary files left behind


def test_generation_export_keeps_the_kv_cache_when_the_generation_config_turns_it_off(tmp_path):
    """A model that went through a Trainer can carry ``use_cache=False`` in its generation config: the export still
    traces ``generate()`` with the KV cache (a decode graph without it expects the whole sequence, not one token), and
    leaves the model's own generation config as it was."""
    compact = generating_llama()
    compact.generation_config.use_cache = False
    result = export_onnx(compact, tmp_path / "generation", generation=True)
    assert compact.generation_config.use_cache is False
    decode = onnx.load(str(result.path / "decode.onnx"), load_external_data=False).graph
    assert any("cache" in value.name for value in decode.input)
    input_ids = torch.randint(3, compact.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    expected = compact.generate(input_ids=input_ids, max_new_tokens=12, do_sample=False, use_cache=True)
    assert torch.equal(OnnxGenerator(result.path).generate(input_ids, max_new_tokens=12), expected)


def onnx_runs(path, inputs, runs: int = 6) -> np.ndarray:
    """The logits of ``runs`` runs of one ONNX Runtime session on the same inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: value.numpy() for name, value in inputs.items()}
    return np.stack([session.run(["logits"], feed)[0] for _ in range(runs)])


def test_int8_quantization_is_one_option_away_and_stays_close(tmp_path):
    """int8 through the exporter's ONNX Runtime quantizer, with the empty products of removed encoder sublayers kept
    in fp32: the ecosystem's quantizer alone turns them into MatMulInteger with an inner dimension of 0, whose output
    ONNX Runtime leaves unwritten, and the logits change from run to run."""
    import onnx_ir
    from transformers.exporters import ExportFormat, OnnxRuntimeDynamicConfig, OnnxRuntimeQuantizer

    from hf_l0.deploy.onnx import empty_weight_matmuls

    compact = compact_model("bert", "AutoModelForSequenceClassification")  # attention of layer 0 removed
    fp32 = export_onnx(compact, tmp_path / "fp32.onnx")
    int8 = export_onnx(compact, tmp_path / "int8.onnx", quantize="int8")
    empty = empty_weight_matmuls(onnx_ir.load(str(fp32.path)))
    assert empty  # the removed attention's output projection has 0 inputs
    int8_nodes = {node.name: node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(int8_nodes.values())
    assert all(int8_nodes[name] == "MatMul" for name in empty)  # kept fp32
    assert int8.quantize == "int8" and int8.path.stat().st_size < fp32.path.stat().st_size
    # Close and repeatable: on new inputs (a padded batch), every run gives the same logits, every row keeps its
    # class, and the logits move by a small share of their spread.
    inputs = example_inputs(compact, int8.input_names, batch=16, length=21, seed=3)
    with torch.no_grad():
        reference = compact(**inputs).logits.numpy()
    spread = reference.max() - reference.min()
    runs = onnx_runs(int8.path, inputs)
    assert np.ptp(runs, axis=0).max() == 0
    assert fp32.max_abs_diff <= TOL < np.abs(runs[0] - reference).max() <= 0.05 * spread
    assert int8.max_abs_diff <= 0.05 * spread  # the export's own check (batch 3 x length 13)
    assert (runs[0].argmax(-1) == reference.argmax(-1)).all()
    # The ecosystem's quantizer on the same fp32 graph, nothing excluded: the unwritten outputs show.
    plain = OnnxRuntimeQuantizer(OnnxRuntimeDynamicConfig()).quantize(
        onnx_ir.load(str(fp32.path)), {}, ExportFormat.ONNX
    )
    onnx_ir.save(plain, str(tmp_path / "plain.onnx"))
    empty_int8 = [
        node for node in plain.graph if node.op_type == "MatMulInteger" and 0 in tuple(node.inputs[1].const_value.shape)
    ]
    assert len(empty_int8) == len(empty)
    assert np.ptp(onnx_runs(tmp_path / "plain.onnx", inputs), axis=0).max() > 1e-3


def test_bad_export_options_are_refused(tmp_path):
    encoder = make_model("bert", "AutoModelForSequenceClassification")
    with pytest.raises(ValueError, match="causal LM"):
        export_onnx(encoder, tmp_path / "encoder", generation=True)
    with pytest.raises(ValueError, match="writes a directory"):
        export_onnx(make_model("llama"), tmp_path / "model.onnx", generation=True)
    with pytest.raises(ValueError, match="int8"):
        export_onnx(encoder, tmp_path / "model.onnx", quantize="int4")
    assert not any(tmp_path.iterdir())
