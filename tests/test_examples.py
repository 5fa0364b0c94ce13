"""The examples run end to end (a few steps) and produce what they promise."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_l0.hub import from_pretrained

pytestmark = pytest.mark.slow  # subprocesses on the real MiniLM

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], **kwargs) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_custom_training_loop_example(tmp_path):
    out = run(["examples/custom_training_loop.py", "--steps", "4", "--output_dir", str(tmp_path)])
    assert "step 4:" in out and "saved to" in out
    model = from_pretrained(tmp_path)
    assert model.config.l0_structure["layers"]
    logits = model(**{"input_ids": torch.tensor([[101, 2307, 3185, 102]])}).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_quickstart_example_reports_exact_pruning():
    out = run(["examples/quickstart.py", "--repeats", "1"])
    diff = float(out.split("max |gated - pruned| logits: ")[1].split()[0])
    assert diff <= 1e-5
    assert "fewer)" in out and "speedup" in out
