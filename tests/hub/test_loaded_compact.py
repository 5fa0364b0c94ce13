"""The public API on a compact model however it was loaded: ``hf_l0.from_pretrained``, transformers' remote code
(``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)``) or, for a native export, stock transformers
alone. Each function gives the result it gives on the model hf-l0 pruned, or refuses with the reason."""

from __future__ import annotations

import copy
import json

import pytest
import transformers as tf
from conftest import compact_model, make_inputs, model_output
from helpers import UNIFORM, directory_code_only, max_diff

import hf_l0
from hf_l0 import L0Config

TOL = 1e-5


def _written_code(directory):
    with directory_code_only():  # the directory's modeling_hf_l0.py, as where hf-l0 is not installed
        return tf.AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)


LOADERS = {
    "hf_l0": lambda d: hf_l0.from_pretrained(d),
    "remote_code": _written_code,
    "registered": lambda d: tf.AutoModelForCausalLM.from_pretrained(d),  # hf-l0's classes, registered at import
    "stock": lambda d: tf.AutoModelForCausalLM.from_pretrained(d),
}
CASES = [
    ("remote", "hf_l0"),
    ("remote", "remote_code"),
    ("remote", "registered"),
    ("native", "hf_l0"),
    ("native", "stock"),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    models = {
        "remote": compact_model("llama", "AutoModelForCausalLM"),  # removed sublayers: remote code
        "native": compact_model("llama", "AutoModelForCausalLM", L0Config(**UNIFORM)),
    }
    return {kind: (model, hf_l0.save_pretrained(model, root / kind)) for kind, model in models.items()}


def _own_save(model, directory):
    """``model.save_pretrained(directory)``, the model's own method, as Trainer.save_model calls it."""
    model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("kind, loader", CASES)
def test_a_loaded_compact_model_saves_again_and_loads_both_ways(saved, tmp_path, kind, loader):
    original, directory = saved[kind]
    loaded = LOADERS[loader](directory)
    inputs = make_inputs()
    expected = model_output(original, inputs)
    for how, out in (
        ("save_pretrained", hf_l0.save_pretrained(loaded, tmp_path / "again")),
        ("upload folder", hf_l0.hub.CompactModelUpload(loaded).save_pretrained(tmp_path / "upload")),
        ("own method", _own_save(loaded, tmp_path / "own")),
    ):
        config = json.loads((out / "config.json").read_text())
        first = json.loads((directory / "config.json").read_text())
        assert config["model_type"] == first["model_type"] and config.get("auto_map") == first.get("auto_map"), how
        assert config["architectures"] == first["architectures"], how
        assert sorted(p.name for p in out.glob("*.py")) == sorted(p.name for p in directory.glob("*.py")), how
        assert max_diff(model_output(hf_l0.from_pretrained(out), inputs), expected, inputs) <= TOL, how
        again = LOADERS["remote_code" if kind == "remote" else "stock"](out)
        assert max_diff(model_output(again, inputs), expected, inputs) <= TOL, how


@pytest.mark.parametrize("kind, loader", CASES)
def test_a_loaded_compact_model_counts_exports_and_refuses_like_the_pruned_one(saved, tmp_path, kind, loader):
    original, directory = saved[kind]
    loaded = LOADERS[loader](directory)
    assert hf_l0.compact_flops(loaded, 16) == hf_l0.compact_flops(original, 16)
    assert hf_l0.export_plan(loaded).native == hf_l0.export_plan(original).native
    for refuse in (
        lambda model: hf_l0.patch_model(model, L0Config()),
        lambda model: hf_l0.magnitude_prune(model, 0.3),
    ):
        with pytest.raises(ValueError, match="already pruned"):
            refuse(copy.deepcopy(loaded))
    pytest.importorskip("gguf")
    hf_l0.export_gguf(original, tmp_path / "original.gguf")
    hf_l0.export_gguf(loaded, tmp_path / "loaded.gguf")
    assert (tmp_path / "loaded.gguf").read_bytes() == (tmp_path / "original.gguf").read_bytes()


def test_a_compact_config_is_never_written_with_the_stock_model_type(saved, tmp_path):
    import pickle

    model, directory = saved["remote"]
    inputs = make_inputs()
    assert model.config.model_type == "llama" and model.config.to_dict()["model_type"] == "llama"  # in memory
    out = tmp_path / "config-alone"
    model.config.save_pretrained(out)  # the config alone, then the weights beside it by the stock method
    type(model).save_pretrained(model, out)
    written = {
        "save_pretrained": json.loads((out / "config.json").read_text()),
        "to_json_file": (model.config.to_json_file(tmp_path / "c.json"), json.loads((tmp_path / "c.json").read_text()))[
            1
        ],
        "pickled": json.loads(pickle.loads(pickle.dumps(model.config)).to_json_string()),
        "copied": json.loads(copy.deepcopy(model.config).to_json_string(use_diff=False)),
    }
    assert {how: data["model_type"] for how, data in written.items()} == dict.fromkeys(written, "hf_l0_llama")
    with directory_code_only(), pytest.raises(ValueError, match="hf_l0_llama"):
        tf.AutoModelForCausalLM.from_pretrained(out)  # without hf-l0: refused, never the dense model
    registered = tf.AutoModelForCausalLM.from_pretrained(out)  # with hf-l0 imported: its own compact class
    assert max_diff(model_output(registered, inputs), model_output(model, inputs), inputs) <= TOL
    assert max_diff(model_output(hf_l0.from_pretrained(out), inputs), model_output(model, inputs), inputs) <= TOL
    # a native export's config is the stock one, and stays so when written again
    native = LOADERS["stock"](saved["native"][1])
    native.config.save_pretrained(tmp_path / "native")
    assert json.loads((tmp_path / "native" / "config.json").read_text())["model_type"] == "llama"
