"""The ``hf-l0`` command: every subcommand's --help, and the commands that need no training run end to end on tiny
models (the prune commands run in test_scripts.py through the same code)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import compact_model, make_inputs, model_output

import hf_l0
from hf_l0.cli import build_parser, main

SUBCOMMANDS = ("prune-classifier", "prune-clm", "latency-table", "export-onnx", "export-gguf", "inspect")


def test_the_console_script_and_python_m_are_the_same_command():
    assert shutil.which("hf-l0"), "the hf-l0 console script is not installed (pyproject [project.scripts])"
    for command in (["hf-l0"], [sys.executable, "-m", "hf_l0"]):
        out = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and all(name in out.stdout for name in SUBCOMMANDS), out.stderr


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower() and len(out) > 200
    if command.startswith("prune-"):  # the script's own parser: the L0 flags
        assert "--target_sparsity" in out and "--target_speedup" in out and "--recovery_ratio" in out


def test_the_parser_knows_exactly_these_subcommands():
    actions = [a for a in build_parser()._actions if a.dest == "command"]
    assert set(actions[0].choices) == set(SUBCOMMANDS)


def test_inspect_reads_the_structure_from_the_files(tmp_path, capsys):
    compact = compact_model("llama", "AutoModelForCausalLM")
    hf_l0.save_pretrained(compact, tmp_path / "c")
    assert main(["inspect", str(tmp_path / "c"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    structure = compact.config.l0_structure
    assert info["compact"] and info["model_type"] == "hf_l0_llama" and info["export"] == "remote code"
    assert [layer["ffn"] for layer in info["layers"]] == [layer["intermediate_size"] for layer in structure["layers"]]
    assert info["parameters"] == compact.num_parameters()
    assert main(["inspect", str(tmp_path / "c")]) == 0
    assert "layers (heads / KV heads / FFN neurons)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="has no config.json"):
        main(["inspect", str(tmp_path)])


def test_export_onnx_writes_a_file_that_onnx_runtime_runs_like_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    compact = compact_model("bert", "AutoModelForSequenceClassification")
    hf_l0.save_pretrained(compact, tmp_path / "c")
    assert main(["export-onnx", str(tmp_path / "c"), str(tmp_path / "m.onnx")]) == 0
    inputs = make_inputs()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs() if i.name in inputs}
    feed.update(
        {i.name: torch.zeros_like(inputs["input_ids"]).numpy() for i in session.get_inputs() if i.name not in feed}
    )
    out = session.run(None, feed)[0]
    assert abs(torch.from_numpy(out) - model_output(compact.eval(), inputs)).max().item() < 1e-4
