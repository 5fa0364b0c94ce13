"""Compact models on the paths users take: the model's own ``save_pretrained`` / ``push_to_hub``,
``Trainer.save_model``, every supported head through its ``AutoModelFor*`` class with ``trust_remote_code=True``, and
``pipeline(...)``, all loaded in one fresh Python process where hf_l0 cannot be imported."""

import copy
import gc
import inspect
import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import CONFIGS, ENCODERS, make_inputs, make_model, tiny_tokenizer
from helpers import NO_HF_L0_PRELUDE, RecordingHubApi, randomize_gates, use_hub_api
from safetensors.torch import save_file

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model
from hf_l0.hub.own_methods import has_compact_methods

TOL = 1e-5

# Every head of the README's supported table, per family (hidden-dimension pruning and removed sublayers in each).
ENCODER_HEADS = (
    "AutoModel",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
)
DECODER_HEADS = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
)
MATRIX = [(family, head) for family in CONFIGS for head in (ENCODER_HEADS if family in ENCODERS else DECODER_HEADS)]
# Masked LM heads are supported for every structure but the hidden dimension (their transform has its own norm).
MASKED_LM = [(family, "AutoModelForMaskedLM") for family in ENCODERS]

# Which saved directories get a tokenizer and a pipeline run (task per directory). transformers 5 removed the
# question-answering pipeline; QA heads load through AutoModelForQuestionAnswering in the matrix.
PIPELINES = {
    "bert-AutoModelForSequenceClassification": "text-classification",
    "llama-AutoModelForSequenceClassification": "text-classification",
    "roberta-AutoModelForTokenClassification": "token-classification",
    "qwen2-AutoModelForTokenClassification": "token-classification",
    "electra-AutoModelForMaskedLM": "fill-mask",
    "mistral-AutoModel": "feature-extraction",
    "gpt2-AutoModelForCausalLM": "text-generation",
    "llama-AutoModelForCausalLM": "text-generation",
    "trainer-qwen2": "text-classification",
}


def case_name(family, head):
    return f"{family}-{head}"


def pipeline_result(pipe, task):
    """The pipeline's answer on a fixed input, as JSON data (run here and, by source, in the fresh process)."""
    if task == "fill-mask":
        out = pipe("w5 w7 [MASK] w11 w13")
    elif task == "text-generation":
        out = pipe("w5 w7 w9", max_new_tokens=6, do_sample=False)
    else:
        out = pipe("w5 w7 w9 w11 w13")
    return json.loads(json.dumps(out, default=float))


def compact(family, head, config=None, seed=0, gated_diff=None):
    """A pruned tiny model; with a dict ``gated_diff``, records max |gated eval output - compact output| in it."""
    model = make_model(family, head, seed=seed)
    patch_model(model, config or L0Config(hidden=head != "AutoModelForMaskedLM", layers=True))
    randomize_gates(model, seed=seed)
    inputs = head_inputs(head)
    gated = outputs(model, inputs) if gated_diff is not None else None
    kept = hf_l0.get_gates(model).deterministic().get("hidden", torch.ones(1)).nonzero().squeeze(-1)
    model = prune_model(model.eval())
    if gated is not None:  # hidden states of a base model: compared on the kept dimensions
        gated_diff["max"] = max(
            masked_diff(a, b if a.shape == b.shape else b[..., kept], inputs)
            for a, b in zip(outputs(model, inputs).values(), gated.values())
        )
    return model


def masked_diff(a, b, inputs):
    diff = (a - b).abs()
    mask = inputs["attention_mask"].bool()
    return (diff[mask] if diff.shape[:2] == mask.shape else diff).max().item()


def head_inputs(head):
    if head == "AutoModelForMultipleChoice":  # [batch, choices, length]
        return {k: v.reshape(2, 2, -1) for k, v in make_inputs(batch=4).items()}
    return make_inputs()


def outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


FRESH_SCRIPT = NO_HF_L0_PRELUDE + textwrap.dedent("""
    import torch
    import transformers as tf
    from safetensors.torch import load_file

    tf.logging.set_verbosity_error()
    torch.set_num_threads(1)


    def max_diff(model, ref):
        inputs = {k[3:]: v for k, v in ref.items() if k.startswith("in.")}
        with torch.no_grad():
            out = model(**inputs)
        mask = inputs["attention_mask"].bool()
        worst = 0.0
        for key, want in ref.items():
            if key.startswith("out."):
                diff = (out[key[4:]] - want).abs()
                if diff.shape[:2] == mask.shape:
                    diff = diff[mask]  # padded positions: not compared
                worst = max(worst, diff.max().item())
        return worst


    PIPELINE_RESULT

    results = {}
    for case in json.load(open(sys.argv[1])):
        r = results[case["name"]] = {}
        try:
            auto = getattr(tf, case["auto_class"])
            kwargs = {} if case["native"] else {"trust_remote_code": True}
            ref = load_file(case["reference"])
            model = auto.from_pretrained(case["dir"], **kwargs).eval()
            r["class"] = type(model).__name__
            r["max_diff"] = max_diff(model, ref)
            r["modules"] = sorted({type(m).__module__.split(".")[0] for m in model.modules()})
            if case.get("resave"):  # transformers' own custom-code save of the remote-code model, loaded again
                with tempfile.TemporaryDirectory() as tmp:
                    model.save_pretrained(tmp)
                    r["resaved_max_diff"] = max_diff(auto.from_pretrained(tmp, **kwargs).eval(), ref)
            if case.get("without_trust"):
                try:
                    auto.from_pretrained(case["dir"])
                    r["without_trust"] = "loaded"
                except Exception as err:
                    r["without_trust"] = type(err).__name__
            if case.get("pipeline"):
                pipe = tf.pipeline(case["pipeline"], model=case["dir"], trust_remote_code=True)
                r["pipeline_class"] = type(pipe.model).__name__
                r["pipeline"] = pipeline_result(pipe, case["pipeline"])
        except Exception as err:  # one broken case must not hide the others' results
            r["error"] = f"{type(err).__name__}: {err}"[:2000]
    json.dump(results, open(sys.argv[2], "w"))
""").replace("PIPELINE_RESULT", textwrap.dedent(inspect.getsource(pipeline_result)))


def run_fresh_process(workdir: Path, cases: list[dict]) -> dict:
    (workdir / "cases.json").write_text(json.dumps(cases))
    (workdir / "fresh.py").write_text(FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_MODULES_CACHE=str(workdir / "hf_modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # -I: no cwd, no PYTHONPATH, no user site; the blocker in the script covers an installed hf_l0
    done = subprocess.run(
        [sys.executable, "-I", str(workdir / "fresh.py"), str(workdir / "cases.json"), str(workdir / "results.json")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


def _write_case(cases, refs, root, name, model, head, *, native=False, **flags):
    inputs = head_inputs(head)
    refs[name] = (model, inputs)
    tensors = {
        **{f"in.{k}": v for k, v in inputs.items()},
        **{f"out.{k}": v for k, v in outputs(model, inputs).items()},
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, root / f"{name}.ref.safetensors")
    cases.append(
        {
            "name": name,
            "dir": str(root / name),
            "auto_class": head,
            "native": native,
            "reference": str(root / f"{name}.ref.safetensors"),
            **flags,
        }
    )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Writes every directory through the model's own methods, then loads them all in one fresh process."""
    root = tmp_path_factory.mktemp("own_save")
    cases, refs, info = [], {}, {"pipelines": {}}
    tokenizers = {True: tiny_tokenizer(True), False: tiny_tokenizer(False)}
    for family, head in MATRIX + MASKED_LM:
        name = case_name(family, head)
        info[name] = {}
        model = compact(family, head, gated_diff=info[name])
        model.save_pretrained(root / name)  # the transformers method every user and tutorial calls
        flags = {"resave": name == "llama-AutoModelForSequenceClassification"}
        if name in PIPELINES:
            tokenizers[family in ENCODERS].save_pretrained(root / name)
            flags["pipeline"] = PIPELINES[name]
        _write_case(cases, refs, root, name, model, head, **flags)

    # native shapes through the own method: a stock config, loaded without remote code
    for name, family, head, config in (
        (
            "native-llama",
            "llama",
            "AutoModelForCausalLM",
            L0Config(target_heads=1, target_intermediate_size=20, layers=False),
        ),
        (
            "native-bert",
            "bert",
            "AutoModelForSequenceClassification",
            L0Config(heads=False, target_intermediate_size=20, layers=False),
        ),
    ):
        model = compact(family, head, config)
        model.save_pretrained(root / name)
        _write_case(cases, refs, root, name, model, head, native=True)

    # only whole sublayers removed: the shape a stock config would silently refill with random weights
    model = compact("llama", "AutoModelForCausalLM", L0Config(heads=False, ffn=False, layers=True))
    model.save_pretrained(root / "layers-only-llama")
    _write_case(cases, refs, root, "layers-only-llama", model, "AutoModelForCausalLM", without_trust=True)

    # the model's own push_to_hub (the Hub client replaced): the uploaded files, written out, are the directory
    with pytest.MonkeyPatch.context() as mp:
        api = use_hub_api(mp, RecordingHubApi())
        model = compact("gpt2", "AutoModelForSequenceClassification", seed=1)
        info["push_return"] = model.push_to_hub("me/gpt2-l0", private=True)
    info["push_calls"] = api.calls
    (root / "pushed-gpt2").mkdir()
    for path, data in api.calls["files"].items():
        (root / "pushed-gpt2" / path).write_bytes(data)
    _write_case(cases, refs, root, "pushed-gpt2", model, "AutoModelForSequenceClassification")

    # Trainer.save_model (calls model.save_pretrained, then saves the tokenizer)
    model = compact("qwen2", "AutoModelForSequenceClassification", seed=2)
    args = tf.TrainingArguments(output_dir=str(root / "trainer-qwen2"), report_to="none", use_cpu=True)
    tf.Trainer(model=model, args=args, processing_class=tokenizers[False]).save_model()
    _write_case(
        cases,
        refs,
        root,
        "trainer-qwen2",
        model,
        "AutoModelForSequenceClassification",
        pipeline=PIPELINES["trainer-qwen2"],
    )

    # a compact model loaded by hf_l0.from_pretrained saves the same way again
    model = hf_l0.from_pretrained(root / case_name("mistral", "AutoModelForTokenClassification"))
    model.save_pretrained(root / "reloaded-mistral")
    _write_case(cases, refs, root, "reloaded-mistral", model, "AutoModelForTokenClassification")

    for case in cases:
        if case.get("pipeline"):
            model, _ = refs[case["name"]]
            tokenizer = tokenizers[model.config.model_type in ENCODERS]
            pipe = tf.pipeline(case["pipeline"], model=model, tokenizer=tokenizer)
            info["pipelines"][case["name"]] = pipeline_result(pipe, case["pipeline"])
    results = run_fresh_process(root, cases)
    return root, refs, results, info


def assert_close(got, want, where):
    if isinstance(want, float):
        assert math.isclose(got, want, abs_tol=TOL), (where, got, want)
    elif isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


def check_remote_case(results, name):
    r = results[name]
    assert "error" not in r, (name, r.get("error"))
    print(f"{name}: {r['class']} max |diff| {r['max_diff']:.2e}")
    assert r["max_diff"] <= TOL, (name, r)
    assert r["class"].startswith("L0"), r  # the saved remote-code class, never the dense stock one
    assert "hf_l0" not in r["modules"]


@pytest.mark.parametrize("family, head", MATRIX + MASKED_LM)
def test_every_head_and_family_loads_without_hf_l0(fresh, family, head):
    """compact.save_pretrained -> AutoModelFor*.from_pretrained(d, trust_remote_code=True) in a process without
    hf_l0 equals the compact model; every case has removed sublayers, all but masked LM pruned hidden dims."""
    root, refs, results, info = fresh
    name = case_name(family, head)
    model, _ = refs[name]
    assert info[name]["max"] <= TOL, info[name]  # the compact model computes what the gated model computed
    structure = model.config.l0_structure
    assert any(layer["key_value_heads"] == 0 for layer in structure["layers"])
    assert any(layer["intermediate_size"] == 0 for layer in structure["layers"])
    if head != "AutoModelForMaskedLM":
        assert structure["hidden_size"] < CONFIGS[family]().hidden_size
    config = json.loads((root / name / "config.json").read_text())
    assert config["model_type"] == f"hf_l0_{family}" and head in config["auto_map"]
    check_remote_case(results, name)


def test_generic_heads_resave_with_transformers_custom_code(fresh):
    """A loaded remote-code model saved by transformers (custom_object_save of the modeling files) loads again."""
    _, _, results, _ = fresh
    r = results[case_name("llama", "AutoModelForSequenceClassification")]
    assert r["resaved_max_diff"] <= TOL, r


def test_native_shapes_save_stock_configs(fresh):
    root, _, results, _ = fresh
    for name, cls in (("native-llama", "LlamaForCausalLM"), ("native-bert", "BertForSequenceClassification")):
        config = json.loads((root / name / "config.json").read_text())
        assert config["model_type"] == name.split("-")[1] and "auto_map" not in config
        assert not (root / name / "modeling_hf_l0.py").exists()
        r = results[name]
        assert "error" not in r and r["class"] == cls and r["max_diff"] <= TOL, r


def test_removed_sublayers_never_load_into_the_dense_class(fresh):
    root, _, results, _ = fresh
    check_remote_case(results, "layers-only-llama")
    assert json.loads((root / "layers-only-llama" / "config.json").read_text())["model_type"] == "hf_l0_llama"
    # stock transformers refuses (no prompt in a subprocess without stdin) instead of refilling randomly
    assert results["layers-only-llama"]["without_trust"] in ("ValueError", "EOFError")


def test_own_push_to_hub_uploads_the_compact_export(fresh):
    _, _, results, info = fresh
    calls = info["push_calls"]
    assert info["push_return"] == "commit-url"
    assert calls["create_repo"] == ("me/gpt2-l0", {"private": True, "token": None, "exist_ok": True})
    assert {"config.json", "model.safetensors", "modeling_hf_l0.py", "README.md", "l0_structure.png"} <= set(
        calls["files"]
    )
    assert 'from_pretrained("me/gpt2-l0", trust_remote_code=True)' in calls["files"]["README.md"].decode()
    check_remote_case(results, "pushed-gpt2")


def test_trainer_save_model_and_reloaded_models(fresh):
    root, _, results, _ = fresh
    assert (root / "trainer-qwen2" / "tokenizer.json").exists()
    check_remote_case(results, "trainer-qwen2")
    check_remote_case(results, "reloaded-mistral")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipelines_without_hf_l0(fresh, name):
    _, _, results, info = fresh
    r = results[name]
    assert "error" not in r, r.get("error")
    assert r["pipeline_class"].startswith("L0")
    want = info["pipelines"][name]
    print(name, PIPELINES[name], json.dumps(r["pipeline"])[:200])
    assert_close(r["pipeline"], want, name)


# -- in-process behaviour of the routed methods ----------------------------------------------------------------------


def test_own_methods_follow_copies_and_free_with_the_model(tmp_path):
    model = compact("llama", "AutoModelForCausalLM")
    assert has_compact_methods(model)
    assert next(iter(inspect.signature(model.save_pretrained).parameters)) == "save_directory"
    clone = copy.deepcopy(model)
    assert clone.save_pretrained.__self__ is clone and clone.push_to_hub.__self__ is clone
    buffer = io.BytesIO()
    torch.save(model, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.save_pretrained.__self__ is loaded
    ref = weakref.ref(loaded)
    gc.disable()  # freed by reference counting alone: the routed methods hold the model weakly
    try:
        del loaded
        assert ref() is None
    finally:
        gc.enable()
    # the stock method is still reachable (what hf_l0.save_pretrained builds on); the config it writes names the
    # compact model type, so stock transformers refuses it instead of building the dense model
    type(clone).save_pretrained(clone, tmp_path / "stock")
    assert json.loads((tmp_path / "stock" / "config.json").read_text())["model_type"] == "hf_l0_llama"
    assert clone.config.model_type == "llama" and type(loaded_config := copy.deepcopy(clone.config)) is type(
        clone.config
    )
    assert loaded_config.to_dict()["model_type"] == "llama"
    assert not has_compact_methods(make_model("llama"))


def test_own_save_pretrained_options(tmp_path, monkeypatch):
    model = compact("bert", "AutoModelForSequenceClassification")
    tokenizer = tiny_tokenizer(True)
    assert model.save_pretrained(tmp_path / "other", is_main_process=False) is None
    assert not (tmp_path / "other").exists()  # only the main process writes
    out = model.save_pretrained(tmp_path / "m", tokenizer=tokenizer, max_shard_size="20KB")
    names = {p.name for p in out.iterdir()}
    assert "README.md" not in names and "model.safetensors.index.json" in names and "tokenizer.json" in names
    loaded = hf_l0.from_pretrained(out)
    inputs = make_inputs()
    assert (outputs(loaded, inputs)["logits"] - outputs(model, inputs)["logits"]).abs().max().item() <= TOL

    api = use_hub_api(monkeypatch, RecordingHubApi())
    model.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="me/bert-l0", commit_message="v1")
    assert api.calls["create_repo"][0] == "me/bert-l0" and api.calls["commit"][1]["commit_message"] == "v1"
    uploaded = set(api.calls["files"])
    assert uploaded == {p.name for p in (tmp_path / "pushed").iterdir()} and "README.md" in uploaded
    assert json.loads(api.calls["files"]["config.json"])["model_type"] == "hf_l0_bert"
