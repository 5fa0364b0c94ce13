"""The strict loader against corrupted and hostile directories: every one is refused with an error that names the
problem (file and tensor, or config field), and no code from the directory runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import compact_model, make_inputs, make_model, model_output
from helpers import directory_code_only
from safetensors.torch import load_file, save_file

import hf_l0

MARKER = "directory_code_ran.txt"
# Planted in every directory: importing it would leave a marker file next to the weights.
PLANTED = f"open(__file__.rsplit('/', 1)[0] + '/{MARKER}', 'w').write('ran')\n"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    llama = compact_model("llama", "AutoModelForCausalLM")
    gpt2 = make_model("gpt2")
    dirs = {
        "compact": hf_l0.save_pretrained(llama, root / "compact", model_card=False),
        "sharded": hf_l0.save_pretrained(llama, root / "sharded", model_card=False, max_shard_size="20KB"),
        "dense": hf_l0.save_pretrained(gpt2, root / "dense", model_card=False),
    }
    return dirs, {"compact": llama, "sharded": llama, "dense": gpt2}


def pristine_copy(tmp_path: Path, sources, kind: str, name: str = "d") -> Path:
    """A copy of the ``kind`` source directory ("compact", "sharded" or "dense") to corrupt, at ``tmp_path / name``."""
    d = tmp_path / name
    shutil.copytree(sources[0][kind], d, symlinks=True)
    return d


def weights(d: Path) -> Path:
    return d / "model.safetensors"


def edit_config(d: Path, **changes) -> None:
    path = d / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        data[key] = value
    path.write_text(json.dumps(data))


def edit_structure(d: Path, change) -> None:
    path = d / "config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_tensor(d: Path, name: str, change) -> None:
    state = load_file(weights(d))
    state[name] = change(state[name])
    save_file(state, weights(d), metadata={"format": "pt"})


def edit_state(d: Path, change) -> None:
    state = load_file(weights(d))
    change(state)
    save_file(state, weights(d), metadata={"format": "pt"})


def edit_index(d: Path, change) -> None:
    path = d / "model.safetensors.index.json"
    data = json.loads(path.read_text())
    change(data["weight_map"])
    path.write_text(json.dumps(data))


def first_shard_tensor(d: Path) -> tuple[str, str]:
    weight_map = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    return next(iter(weight_map.items()))


def move_shard_out(d: Path, how: str) -> None:
    _, shard = first_shard_tensor(d)
    outside = d.parent / f"outside_{d.name}.safetensors"
    shutil.copy(d / shard, outside)
    if how == "relative":
        edit_index(d, lambda m: m.update({k: f"../{outside.name}" for k, v in m.items() if v == shard}))
    elif how == "absolute":
        edit_index(d, lambda m: m.update({k: str(outside) for k, v in m.items() if v == shard}))
    else:  # a symbolic link inside the directory that leads out
        (d / shard).unlink()
        os.symlink(outside, d / shard)


def corrupt_header(d: Path, change) -> None:
    data = weights(d).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    weights(d).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def pickle_only(d: Path) -> None:
    weights(d).unlink()
    torch.save({"weights": torch.zeros(2)}, d / "pytorch_model.bin")


K = "model.layers.1.self_attn.k_proj.weight"
UP = "model.embed_tokens.weight"
W = r".*model\.safetensors"
# (id, source directory, corruption, expected error type, regex the message must match)
CASES = [
    (
        "truncated-tail",
        "compact",
        lambda d: weights(d).write_bytes(weights(d).read_bytes()[:-100]),
        ValueError,
        rf"{W}: truncated safetensors file: tensor '.*'",
    ),
    (
        "truncated-header",
        "compact",
        lambda d: weights(d).write_bytes(weights(d).read_bytes()[:5]),
        ValueError,
        rf"{W}: truncated safetensors file \(5 bytes",
    ),
    (
        "header-not-json",
        "compact",
        lambda d: weights(d).write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\0" * 16),
        ValueError,
        rf"{W}: corrupt safetensors header",
    ),
    (
        "header-offsets-lie",
        "compact",
        lambda d: corrupt_header(d, lambda h: h[K].update(shape=[1])),
        ValueError,
        rf"{W}: corrupt safetensors header: tensor '{K}' .* do not hold its bytes",
    ),
    (
        "header-unknown-dtype",
        "compact",
        lambda d: corrupt_header(d, lambda h: h[K].update(dtype="PICKLE")),
        ValueError,
        rf"{W}: corrupt safetensors header: tensor '{K}'",
    ),
    (
        "int8-where-fp32",
        "compact",
        lambda d: edit_tensor(d, K, lambda t: t.to(torch.int8)),
        ValueError,
        rf"tensor '{K}' in {W} has dtype I8 but .*config\.json declares F32",
    ),
    (
        "fp16-where-fp32",
        "compact",
        lambda d: edit_tensor(d, UP, lambda t: t.half()),
        ValueError,
        rf"tensor '{UP}' in {W} has dtype F16 but .*config\.json declares F32",
    ),
    (
        "wrong-shape",
        "compact",
        lambda d: edit_tensor(d, K, lambda t: t[:, :-1].contiguous()),
        ValueError,
        rf"tensor '{K}' in {W} has shape .* but .*config\.json .* builds",
    ),
    (
        "extra-tensor",
        "compact",
        lambda d: edit_state(d, lambda s: s.update({"model.evil.weight": torch.zeros(3)})),
        ValueError,
        rf"unexpected tensor 'model\.evil\.weight' in {W}",
    ),
    (
        "missing-tensor",
        "compact",
        lambda d: edit_state(d, lambda s: s.pop(K)),
        ValueError,
        rf"missing tensor '{K}' \(expected in {W}\)",
    ),
    (
        "index-traversal",
        "sharded",
        lambda d: move_shard_out(d, "relative"),
        ValueError,
        r"index\.json \(tensor '.*'\) names weights file '\.\./outside_.*', which is outside",
    ),
    (
        "index-absolute",
        "sharded",
        lambda d: move_shard_out(d, "absolute"),
        ValueError,
        r"index\.json \(tensor '.*'\) names weights file '/.*outside_.*', which is outside",
    ),
    (
        "symlink-out",
        "sharded",
        lambda d: move_shard_out(d, "symlink"),
        ValueError,
        r"model-.*\.safetensors \(from .*index\.json.*\) is a symbolic link to .*outside_.*: refused",
    ),
    (
        "index-wrong-shard",
        "sharded",
        lambda d: edit_index(d, lambda m: m.update({next(iter(m)): sorted(set(m.values()))[-1]})),
        ValueError,
        r"lists tensor '.*' in .*model-.*\.safetensors, which does not contain it",
    ),
    (
        "negative-heads",
        "dense",
        lambda d: edit_config(d, n_head=-4),
        ValueError,
        r"config\.json: (n_head|num_attention_heads)=-4 must be a positive int",
    ),
    (
        "huge-layers",
        "compact",
        lambda d: edit_config(d, num_hidden_layers=10**9),
        ValueError,
        r"config\.json: num_hidden_layers=1000000000 must be a positive int of at most \d+ \(the tensor count of the "
        r"saved weights\)\.$",
    ),
    (
        "huge-hidden",
        "dense",
        lambda d: edit_config(d, n_embd=2**40),
        ValueError,
        r"config\.json: (n_embd|hidden_size)=1099511627776 must be a positive int of at most \d+ \(the element count "
        r"of the saved weights\)\.$",
    ),
    (
        "string-heads",
        "compact",
        lambda d: edit_config(d, num_key_value_heads="2"),
        ValueError,
        r"config\.json: .*num_key_value_heads",
    ),
    (
        "layers-wrong-length",
        "compact",
        lambda d: edit_structure(d, lambda c: c["l0_structure"]["layers"].pop()),
        ValueError,
        r"config\.l0_structure describes 2 layers but the config builds 3",
    ),
    (
        "structure-not-dict",
        "compact",
        lambda d: edit_config(d, l0_structure=[1, 2, 3]),
        ValueError,
        r"config\.json: l0_structure must be an object, got list",
    ),
    (
        "structure-too-wide",
        "compact",
        lambda d: edit_structure(d, lambda c: c["l0_structure"]["layers"][0].update(intermediate_size=10**6)),
        ValueError,
        r"l0_structure\.layers\[0\]\.intermediate_size=1000000 must be an int in \[0, 37\]",
    ),
    (
        "architectures-trainer",
        "dense",
        lambda d: edit_config(d, architectures=["Trainer"]),
        ValueError,
        r"config\.json: architectures names 'Trainer', which is not a transformers model class of the 'gpt2' family "
        r"\(its config_class must be GPT2Config\); fix architectures or pass model_class=\.$",
    ),
    (
        "architectures-other-family",
        "dense",
        lambda d: edit_config(d, architectures=["BertModel"]),
        ValueError,
        r"architectures names 'BertModel', which is not a transformers model class of the 'gpt2' family",
    ),
    (
        "base-architectures-trainer",
        "compact",
        lambda d: edit_structure(d, lambda c: c["l0_export"].update(base_architectures=["Trainer"])),
        ValueError,
        r"architectures names 'Trainer', which is not a transformers model class of the 'llama' family",
    ),
    (
        "architectures-not-list",
        "dense",
        lambda d: edit_config(d, architectures="GPT2LMHeadModel"),
        ValueError,
        r"architectures='GPT2LMHeadModel' must be a list of class names",
    ),
    (
        "architectures-unknown",
        "dense",
        lambda d: edit_config(d, architectures=["NoSuchModelForAnything"]),
        ValueError,
        r"architectures names 'NoSuchModelForAnything', which is not a transformers model class of the 'gpt2' family",
    ),
    (
        "architectures-empty",
        "dense",
        lambda d: edit_config(d, architectures=[]),
        ValueError,
        r"config\.json: architectures=\[\] names no transformers class; pass model_class=\.$",
    ),
    (
        "layers-above-tensor-count",  # far below the element count: the layer limit is the tensor count
        "dense",
        lambda d: edit_config(d, n_layer=1000),
        ValueError,
        r"config\.json: (n_layer|num_hidden_layers)=1000 must be a positive int of at most \d+ \(the tensor count",
    ),
    (
        "zero-layers",
        "dense",
        lambda d: edit_config(d, n_layer=0),
        ValueError,
        r"config\.json: (n_layer|num_hidden_layers)=0 must be a positive int",
    ),
    (
        "bool-width",  # embedding_size is no GPT2Config field: the config class does not check it, hf-l0 does
        "dense",
        lambda d: edit_config(d, embedding_size=True),
        ValueError,
        r"config\.json: embedding_size=True must be a positive int",
    ),
    (
        "float-width",
        "dense",
        lambda d: edit_config(d, embedding_size=2.0),
        ValueError,
        r"config\.json: embedding_size=2\.0 must be a positive int",
    ),
    (
        "config-missing",
        "dense",
        lambda d: (d / "config.json").unlink(),
        FileNotFoundError,
        r"config\.json is missing\.$",
    ),
    (
        "config-a-list",
        "dense",
        lambda d: (d / "config.json").write_text("[1]"),
        ValueError,
        r"config\.json: not a transformers config \(a JSON object with a model_type string\)\.$",
    ),
    (
        "model-type-not-a-string",
        "dense",
        lambda d: edit_config(d, model_type=3),
        ValueError,
        r"config\.json: not a transformers config \(a JSON object with a model_type string\)\.$",
    ),
    (
        "export-not-an-object",
        "dense",
        lambda d: edit_config(d, l0_export=[1]),
        ValueError,
        r"config\.json: l0_export must be an object, got list\.$",
    ),
    (
        "heads-do-not-divide-the-width",  # the config class accepts it; building the model does not
        "dense",
        lambda d: edit_config(d, n_head=5),
        ValueError,
        r"config\.json: GPT2LMHeadModel cannot be built from these values: `embed_dim` must be divisible by num_heads",
    ),
    ("pickle-bin-only", "dense", pickle_only, FileNotFoundError, r"pickled weights are never loaded"),
    (
        "config-not-json",
        "dense",
        lambda d: (d / "config.json").write_text("{'model_type': 'gpt2'"),
        ValueError,
        r"config\.json: not valid JSON",
    ),
    (
        "unknown-model-type",
        "dense",
        lambda d: edit_config(d, model_type="evil"),
        ValueError,
        r"model_type 'evil' is not a transformers model type",
    ),
    (
        "dtype-not-float",
        "dense",
        lambda d: edit_config(d, dtype="int8"),
        ValueError,
        r"config\.json: dtype 'int8' is not a floating-point torch dtype",
    ),
]


@pytest.mark.parametrize("name, source, corrupt, error, message", CASES, ids=[c[0] for c in CASES])
def test_corrupted_directory_is_refused_and_runs_nothing(tmp_path, sources, name, source, corrupt, error, message):
    d = pristine_copy(tmp_path, sources, source, name)
    for planted in ("modeling_hf_l0.py", "hf_l0_hub_remote.py", "hf_l0_hub_checkpoint.py", "__init__.py"):
        (d / planted).write_text(PLANTED)
    corrupt(d)
    with pytest.raises(error, match=message):
        hf_l0.from_pretrained(d)
    assert not (d / MARKER).exists()


def test_fuzz_cases_cover_the_list():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("source", ["compact", "dense"])
def test_pristine_copies_load(tmp_path, sources, source):
    """The corruptions above are the only reason for the refusals: untouched copies load and compute the same."""
    d = pristine_copy(tmp_path, sources, source, source)
    inputs = make_inputs()
    reference = model_output(sources[1][source], inputs)
    assert torch.allclose(model_output(hf_l0.from_pretrained(d), inputs), reference, atol=1e-6)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("trust_remote_code", [None, True])
def test_transformers_with_hf_l0_imported_runs_nothing_from_the_directory(
    tmp_path, sources, monkeypatch, trust_remote_code
):
    """hf-l0's registered classes load the compact model (even with trust_remote_code=True: local classes win)."""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    d = pristine_copy(tmp_path, sources, "compact", "planted")
    (d / "modeling_hf_l0.py").write_text(PLANTED)
    loaded = tf.AutoModelForCausalLM.from_pretrained(d, trust_remote_code=trust_remote_code)
    assert not (d / MARKER).exists()
    inputs = make_inputs()
    assert torch.allclose(model_output(loaded, inputs), model_output(sources[1]["compact"], inputs), atol=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_transformers_without_hf_l0_and_trust_remote_code_runs_nothing(tmp_path, sources, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    d = pristine_copy(tmp_path, sources, "compact", "planted")
    (d / "modeling_hf_l0.py").write_text(PLANTED)
    with directory_code_only(), pytest.raises(ValueError, match="trust_remote_code"):
        tf.AutoModelForCausalLM.from_pretrained(d)
    assert not (d / MARKER).exists()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("classes", ["written", "registered"])
@pytest.mark.parametrize("name", ["int8-where-fp32", "index-traversal", "missing-tensor", "extra-tensor"])
def test_auto_classes_refuse_the_same(tmp_path, sources, monkeypatch, name, classes):
    """The written classes (trust_remote_code, hf-l0 absent) and hf-l0's registered ones run the same checks
    (hf_l0.hub.checkpoint.check_weights)."""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    _, source, corrupt, error, message = next(c for c in CASES if c[0] == name)
    d = pristine_copy(tmp_path, sources, source, name)
    corrupt(d)
    context = directory_code_only() if classes == "written" else contextlib.nullcontext()
    with context, pytest.raises(error, match=message):
        tf.AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True)


def test_explicit_dtype_still_checks_the_file(tmp_path, sources):
    d = pristine_copy(tmp_path, sources, "dense")
    assert hf_l0.from_pretrained(d, dtype=torch.bfloat16).transformer.wte.weight.dtype == torch.bfloat16
    edit_tensor(d, "transformer.wte.weight", lambda t: t.to(torch.int8))
    with pytest.raises(ValueError, match=r"'transformer\.wte\.weight' .* has dtype I8"):
        hf_l0.from_pretrained(d, dtype=torch.bfloat16)


def test_family_check_accepts_every_head_of_the_family():
    config = make_model("gpt2").config
    for cls in (tf.GPT2LMHeadModel, tf.GPT2Model, tf.GPT2ForSequenceClassification):
        config.architectures = [cls.__name__]
        assert hf_l0.hub.load._model_class(config, None) is cls
    assert hf_l0.hub.load._model_class(config, tf.AutoModel) is tf.GPT2Model
    with pytest.raises(ValueError, match=r"^config\.json: architectures names 'Trainer'"):  # the default place named
        config.architectures = ["Trainer"]
        hf_l0.hub.load._model_class(config, None)


def test_model_class_may_be_a_model_class_or_an_auto_class_of_the_family(tmp_path, sources):
    d = sources[0]["dense"]
    assert type(hf_l0.from_pretrained(d, model_class=tf.GPT2LMHeadModel)) is tf.GPT2LMHeadModel  # not an Auto class
    with pytest.raises(ValueError, match=r"^AutoModelForMaskedLM has no model class for GPT2Config\.$"):
        hf_l0.from_pretrained(d, model_class=tf.AutoModelForMaskedLM)

    class TupleAuto:  # an Auto mapping may hold several classes for one config (funnel's): the first is taken
        _model_mapping = {tf.GPT2Config: (tf.GPT2LMHeadModel, tf.GPT2Model)}

    loaded = hf_l0.from_pretrained(d, model_class=TupleAuto)
    assert type(loaded) is tf.GPT2LMHeadModel
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sources[1]["dense"].state_dict().items())


def test_a_layer_count_equal_to_the_tensor_count_passes_the_size_check(tmp_path, sources):
    d = pristine_copy(tmp_path, sources, "dense")
    tensors = len(load_file(weights(d)))
    edit_config(d, n_layer=tensors)  # the bound itself is allowed: the strict weight check refuses it, by name
    with pytest.raises(ValueError, match=r"missing tensor 'transformer\.h\.\d+\."):
        hf_l0.from_pretrained(d)


def test_a_config_the_config_class_refuses_is_reported_with_its_reason_on_one_line(tmp_path, sources):
    d = pristine_copy(tmp_path, sources, "dense")
    edit_config(d, n_head=2.0)
    with pytest.raises(Exception) as refused:  # huggingface_hub's StrictDataclassFieldValidationError
        tf.GPT2Config(n_head=2.0)
    reason = " ".join(str(refused.value).split())
    assert "\n" in str(refused.value)  # the config class's own message spans lines; the loader's is one line
    with pytest.raises(ValueError) as caught:
        hf_l0.from_pretrained(d)
    assert str(caught.value) == f"{d / 'config.json'}: the GPT2Config refuses these values: {reason}"


def test_the_loaded_config_names_its_directory_and_drops_the_files_remote_code_and_version(tmp_path, sources):
    d = pristine_copy(tmp_path, sources, "compact")
    saved = json.loads((d / "config.json").read_text())
    assert saved["auto_map"]  # a remote-code save
    edit_config(d, transformers_version="1.0.0")
    config = hf_l0.from_pretrained(d).config
    assert config.name_or_path == str(d)
    assert getattr(config, "auto_map", None) is None  # the loaded model is of a stock class
    assert getattr(config, "transformers_version", None) != "1.0.0"


@pytest.fixture
def fake_hub(monkeypatch, sources):
    """snapshot_download stand-in: records its calls and answers with the saved dense directory."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(sources[0]["dense"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_hub_repo_id_downloads_no_code(fake_hub, sources):
    model = hf_l0.from_pretrained("me/tiny-gpt2")
    assert fake_hub == [("me/tiny-gpt2", {"allow_patterns": ["*.json", "*.safetensors", "*.txt", "*.model", "*.md"]})]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sources[1]["dense"].state_dict().items())


@pytest.mark.parametrize("name", ["nothing-here", "a/b/c", "owner/file"])
def test_a_path_that_is_neither_a_directory_nor_a_repo_id_is_refused(tmp_path, monkeypatch, fake_hub, name):
    monkeypatch.chdir(tmp_path)
    if name == "owner/file":  # an existing file is never taken for a repo id
        (tmp_path / "owner").mkdir()
        (tmp_path / "owner" / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match=rf"^{name} is not a directory \(nor a Hub repo id 'owner/name'\)\.$"):
        hf_l0.from_pretrained(name)
    assert fake_hub == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["Trainer"]}, "architectures names 'Trainer'"),
        ({"n_head": 5}, "GPT2LMHeadModel cannot be built"),
        ({"n_layer": 1000}, "num_hidden_layers=1000 must be a positive int"),
    ],
)
def test_config_errors_name_the_file_by_its_whole_path(tmp_path, sources, change, message):
    d = pristine_copy(tmp_path, sources, "dense")
    edit_config(d, **change)
    with pytest.raises(ValueError) as caught:
        hf_l0.from_pretrained(d)
    assert str(caught.value).startswith(f"{d / 'config.json'}: {message}")


def test_a_config_without_dtype_loads_in_float32_and_a_legacy_torch_dtype_is_read(tmp_path, sources):
    d = pristine_copy(tmp_path, sources, "dense")
    edit_structure(d, lambda c: c.pop("dtype", None))
    model = hf_l0.from_pretrained(d)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    edit_state(d, lambda s: s.update({k: v.to(torch.bfloat16) for k, v in s.items()}))
    edit_config(d, torch_dtype="bfloat16")  # a config.json written before transformers named it dtype
    model = hf_l0.from_pretrained(d)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
