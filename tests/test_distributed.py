"""L0Trainer under two processes (accelerate, gloo on the CPU) against one process with the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent / "distributed_l0.py"


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_processes_keep_ranks_identical_and_match_one_process(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    run([sys.executable, str(SCRIPT), str(single), "8"])
    # `accelerate launch --cpu` starts one process unless MPI is set up; --multi_gpu runs torchrun, and the script's
    # use_cpu=True makes accelerate pick the gloo backend.
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(double), "4"])
    result = json.loads((double / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 12
    assert result["max_rank_diff"] <= 1e-6  # gates and multipliers agree on every rank after every step
    one, two = load_file(single / "final_gates.safetensors"), load_file(double / "final_gates.safetensors")
    assert set(one) == set(two)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4), (name, (one[name] - two[name]).abs().max())
    assert one["lambda_1"].abs().item() > 0  # training really moved the multipliers
