"""ONNX export of compact models: ONNX Runtime equals PyTorch on other batch sizes and lengths than exported."""

import pytest
from conftest import make_model
from helpers import randomize_gates

import hf_l0
from hf_l0.deploy.onnx import check_onnx, example_inputs, export_onnx

onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install -e '.[deploy]'")

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
    for value in graph.input:  # batch and sequence axes are symbolic
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
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

    monkeypatch.setattr(onnx_export, "check_onnx", lambda *args, **kwargs: 1.0)
    with pytest.raises(AssertionError, match="differs from PyTorch"):
        export_onnx(compact, tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())
    assert not compact.training  # the model's mode is restored on failure too
    compact.train()
    export_onnx(compact, tmp_path / "model.onnx", check=False)
    assert compact.training and (tmp_path / "model.onnx").is_file()


def test_onnx_speed_benchmark_quick(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import common, onnx_speed

    onnx_speed.main(["--quick", "--threads", "1", "--output_dir", str(tmp_path)])
    data = json.loads((tmp_path / "onnx_speed.json").read_text())
    assert data["quick"] is True and common.finite_numbers(data) and "QUICK" in (tmp_path / "onnx_speed.md").read_text()
    assert {row["batch_size"] for row in data["latency"]} == {1, 32}
    for row in data["latency"]:
        assert row["max_abs_diff_dense"] <= TOL and row["max_abs_diff_compact"] <= TOL
        assert row["dense_ms"] > 0 and row["compact_ms"] > 0 and row["flops_speedup"] > 1
    assert data["parameters"]["compact"] < data["parameters"]["dense"]
