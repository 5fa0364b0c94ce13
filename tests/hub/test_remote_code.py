"""Remote-code directories: the written python files are hf-l0's portable modules byte for byte (imports
flattened), hf_l0 loads them without running their code, a fresh process without hf_l0 loads them through
transformers, and the written classes load strictly."""

import ast
import copy
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from importlib import import_module
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import TASK_MODELS, compact_model, make_inputs, model_output
from helpers import NO_HF_L0_PRELUDE, UNIFORM, directory_code_only, max_diff
from safetensors.torch import load_file, save_file

import hf_l0
from hf_l0 import L0Config
from hf_l0.hub.remote_code import PORTABLE_MODULES

TOL = 1e-5


# -- the shape logic shared with the written modeling file -------------------------------------------------------------


@pytest.mark.parametrize("family, auto_class", TASK_MODELS)
def test_compact_module_rebuilds_every_family_and_head(family, auto_class):
    model = compact_model(family, auto_class)
    rebuilt = hf_l0.build_compact_model(type(model), copy.deepcopy(model.config))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    inputs = make_inputs()
    assert torch.equal(model_output(rebuilt.eval(), inputs), model_output(model, inputs))


@pytest.mark.parametrize("family, auto_class", TASK_MODELS)
def test_auto_classes_load_every_family_and_head_with_hf_l0_imported(tmp_path, monkeypatch, family, auto_class):
    """With hf_l0 imported, plain Auto classes (no trust_remote_code, no prompt) build hf-l0's own compact classes;
    a booby-trapped modeling file in the directory never runs."""
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail(f"transformers prompted: {args}"))
    model = compact_model(family, auto_class)
    out = hf_l0.save_pretrained(model, tmp_path / "m", model_card=False)
    assert json.loads((out / "config.json").read_text())["model_type"] == f"hf_l0_{family}"
    (out / "modeling_hf_l0.py").write_text("raise RuntimeError('directory code was executed')\n")
    config = tf.AutoConfig.from_pretrained(out)
    assert config.model_type == f"hf_l0_{family}" and type(config).__module__ == "hf_l0.hub.auto_classes"
    loaded = getattr(tf, auto_class).from_pretrained(out).eval()
    assert type(loaded).__module__ == "hf_l0.hub.auto_classes" and isinstance(loaded, type(model))
    inputs = make_inputs()
    assert max_diff(model_output(loaded, inputs), model_output(model, inputs), inputs) <= TOL
    again = hf_l0.save_pretrained(loaded, tmp_path / "again", model_card=False)  # saved like the pruned model
    assert json.loads((again / "config.json").read_text()) == json.loads((out / "config.json").read_text())


def test_the_tokenizer_of_a_compact_model_loads_without_a_prompt(tmp_path, monkeypatch, minilm_dir):
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail(f"transformers prompted: {args}"))
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir)
    out = hf_l0.save_pretrained(compact_model("llama", "AutoModelForCausalLM"), tmp_path / "m", tokenizer)
    assert "auto_map" in json.loads((out / "config.json").read_text())  # remote code beside it
    loaded = tf.AutoTokenizer.from_pretrained(out)
    assert loaded("a compact model")["input_ids"] == tokenizer("a compact model")["input_ids"]


def adapter_modules() -> list[str]:
    return [f"hf_l0.arch.{info.name}" for info in pkgutil.iter_modules(hf_l0.arch.__path__) if info.name != "base"]


def portable_violations(source: str, module: str) -> list[str]:
    """The imports of ``module`` (module-level or local) that break the portable-set rule: anything but the standard
    library, torch, transformers and :data:`hf_l0.hub.remote_code.PORTABLE_MODULES`."""
    allowed = {"torch", "transformers", *sys.stdlib_module_names}
    package = module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            targets = [base] if node.module else [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module]
        else:
            continue
        for target in targets:
            root = target.split(".")[0]
            if (target not in PORTABLE_MODULES) if root == "hf_l0" else (root not in allowed):
                found.append(f"{module} line {node.lineno} imports {target}")
    return found


def test_portable_modules_import_only_torch_transformers_stdlib_and_each_other():
    modules = [*PORTABLE_MODULES, *adapter_modules()]
    assert {"hf_l0.arch.bert", "hf_l0.arch.gpt2", "hf_l0.arch.llama"} <= set(modules)
    violations = [v for m in modules for v in portable_violations(Path(import_module(m).__file__).read_text(), m)]
    assert violations == []


@pytest.mark.parametrize(
    "line, target",
    [
        ("from ..gates.patch import get_gates", "hf_l0.gates.patch"),
        ("from .llama import LlamaAdapter", "hf_l0.arch.llama"),
        ("import numpy", "numpy"),
        ("from safetensors import safe_open", "safetensors"),
        ("from hf_l0 import prune_model", "hf_l0"),
    ],
)
def test_portable_rule_check_flags_other_imports(line, target):
    source = f"import torch\nfrom .base import ArchAdapter\n\n\ndef f():\n    {line}\n"
    assert portable_violations(source, "hf_l0.arch.foo") == [f"hf_l0.arch.foo line 6 imports {target}"]


FLAT = {
    "hf_l0.pruning.slicing": "hf_l0_pruning_slicing",
    "hf_l0.arch.base": "hf_l0_arch_base",
    "hf_l0.pruning.stand_ins": "hf_l0_pruning_stand_ins",
}


def test_flatten_imports_rewrites_only_hf_l0_import_lines():
    source = textwrap.dedent('''\
        """Docstring: from .base import nothing."""
        from __future__ import annotations

        import torch
        from torch import nn

        from ..pruning.slicing import out_features
        from .base import (ArchAdapter,
                           register_adapter)
        from hf_l0.pruning.stand_ins import RemovedMLP  # absolute


        def lazy():
            from ..pruning.stand_ins import ConstantProjection
            return ConstantProjection
        ''')
    flat = hf_l0.hub.flatten_imports(source, "hf_l0.arch.foo", FLAT)
    changed = [(a, b) for a, b in zip(source.splitlines(), flat.splitlines()) if a != b]
    assert len(flat.splitlines()) == len(source.splitlines())
    assert changed == [
        ("from ..pruning.slicing import out_features", "from .hf_l0_pruning_slicing import out_features"),
        ("from .base import (ArchAdapter,", "from .hf_l0_arch_base import (ArchAdapter,"),
        (
            "from hf_l0.pruning.stand_ins import RemovedMLP  # absolute",
            "from .hf_l0_pruning_stand_ins import RemovedMLP  # absolute",
        ),
        (
            "    from ..pruning.stand_ins import ConstantProjection",
            "    from .hf_l0_pruning_stand_ins import ConstantProjection",
        ),
    ]
    assert hf_l0.hub.flat_module_name("hf_l0.arch.foo") == "hf_l0_arch_foo"


@pytest.mark.parametrize(
    "line, error",
    [
        ("from ..gates.patch import get_gates", "imports hf_l0.gates.patch, which remote-code directories do not hold"),
        ("from .gpt2 import GPT2Adapter", "imports hf_l0.arch.gpt2"),
        ("from . import base", "cannot be flattened"),
        ("import hf_l0.pruning.slicing", "cannot be flattened"),
        ("from hf_l0 import ArchAdapter", "imports hf_l0, which"),
    ],
)
def test_flatten_imports_fails_loudly_on_unknown_imports(line, error):
    with pytest.raises(ValueError, match=error):
        hf_l0.hub.flatten_imports(f"import torch\n\n{line}\n", "hf_l0.arch.foo", FLAT)


@pytest.mark.parametrize(
    "family, auto_class",
    [
        ("bert", "AutoModelForSequenceClassification"),
        ("gpt2", "AutoModelForCausalLM"),
        ("qwen2", "AutoModelForCausalLM"),
    ],
)
def test_remote_code_files_are_the_hf_l0_sources(tmp_path, family, auto_class):
    """Every written python file but the generated modeling_hf_l0.py is an hf_l0 source, byte for byte except the
    module names of its hf_l0 imports; transformers' loader finds all of them and nothing else."""
    from transformers.dynamic_module_utils import check_imports, get_imports, get_relative_import_files

    model = compact_model(family, auto_class)
    out = hf_l0.save_pretrained(model, tmp_path / "m", model_card=False)
    adapter_module = type(hf_l0.get_adapter(model)).__module__
    modules = {hf_l0.hub.flat_module_name(m) + ".py": m for m in (*PORTABLE_MODULES, adapter_module)}
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


@pytest.mark.parametrize(
    "family, auto_class",
    [
        ("bert", "AutoModelForSequenceClassification"),
        ("roberta", "AutoModelForTokenClassification"),
        ("gpt2", "AutoModelForCausalLM"),
        ("llama", "AutoModelForCausalLM"),
        ("qwen2", "AutoModelForCausalLM"),
    ],
)
def test_remote_code_directory_layout_and_safe_load(tmp_path, family, auto_class):
    model = compact_model(family, auto_class)
    inputs = make_inputs()
    reference = model_output(model, inputs)
    out = hf_l0.save_pretrained(model, tmp_path / "m", max_shard_size="20KB")
    files = set(os.listdir(out))
    assert {
        "config.json",
        "model.safetensors.index.json",
        "modeling_hf_l0.py",
        "README.md",
        "l0_structure.png",
    } <= files
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


# -- a fresh Python process without hf_l0 --------------------------------------------------------------------------

FRESH_SCRIPT = NO_HF_L0_PRELUDE + textwrap.dedent("""
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
            tok = tf.AutoTokenizer.from_pretrained(d, **kwargs)  # the flag the card shows
            r["tokens"] = tok("hello world")["input_ids"]
        if not case["native"]:
            try:
                getattr(tf, auto).from_pretrained(d)
                r["without_trust"] = "loaded"
            except Exception as err:
                r["without_trust"] = type(err).__name__
        results[case["name"]] = r
    json.dump(results, open(sys.argv[2], "w"))
""")


def run_fresh_process(tmp_path, cases):
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "fresh.py").write_text(FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            str(tmp_path / "fresh.py"),
            str(tmp_path / "cases.json"),
            str(tmp_path / "results.json"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


def test_fresh_process_without_hf_l0_loads_every_family(tmp_path, minilm_dir):
    cases, expected_tokens = [], None
    specs = [
        ("bert", "AutoModelForSequenceClassification", None),
        ("gpt2", "AutoModelForCausalLM", None),
        ("llama", "AutoModelForCausalLM", None),
        ("mistral", "AutoModelForCausalLM", None),
        ("llama-native", "AutoModelForCausalLM", L0Config(**UNIFORM)),
    ]
    for name, auto, config in specs:
        family = name.split("-")[0]
        model = compact_model(family, auto, config)
        inputs = make_inputs()
        tensors = {"output": model_output(model, inputs), **inputs}
        if auto == "AutoModelForCausalLM":
            tensors["generated"] = model.generate(
                inputs["input_ids"][:1, :5], max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
            )
        tokenizer = None
        if family == "bert":
            tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir)
            expected_tokens = tokenizer("hello world")["input_ids"]
        hf_l0.save_pretrained(model, tmp_path / name, tokenizer, max_shard_size="20KB" if family == "gpt2" else None)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / f"{name}.ref.safetensors")
        native = hf_l0.export_plan(model).native
        assert native == (config is not None)
        cases.append(
            {
                "name": name,
                "dir": str(tmp_path / name),
                "auto_class": auto,
                "native": native,
                "reference": str(tmp_path / f"{name}.ref.safetensors"),
                "tokenizer": tokenizer is not None,
            }
        )
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


# -- strict loading through the written classes ----------------------------------------------------------------------


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
    with directory_code_only(), pytest.raises(ValueError, match=rf"missing tensor '{name}'"):
        tf.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
