"""L0Trainer under two processes (accelerate, gloo on the CPU: DDP, and FSDP2 with a sharded checkpoint) against one
process with the same global batch, with a recovery stage (the gates freeze at step 9 of 12; the resumes from
checkpoint-6 cross the switch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent / "distributed_l0.py"


ROOT = str(Path(__file__).resolve().parents[1])


def run(cmd: list[str], **env: str) -> None:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), **env}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def launch_two(out: Path, **env: str) -> None:
    # `accelerate launch --cpu` starts one process unless MPI is set up; --multi_gpu runs torchrun, and the script's
    # use_cpu=True makes accelerate pick the gloo backend.
    run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(SCRIPT),
            str(out),
            "4",
        ],
        **env,
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run([sys.executable, str(SCRIPT), str(out), "8"])
    return out


@pytest.mark.slow
def test_two_processes_keep_ranks_identical_match_one_process_and_resume(tmp_path, single):
    double, resumed = tmp_path / "double", tmp_path / "resumed"
    launch_two(double, L0_SAVE_STEPS="6")
    result = json.loads((double / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 12 and result["frozen_step"] == 9
    assert result["max_rank_diff"] <= 1e-6  # gates and multipliers agree on every rank after every step
    one, two = load_file(single / "final_gates.safetensors"), load_file(double / "final_gates.safetensors")
    assert set(one) == set(two)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4), (name, (one[name] - two[name]).abs().max())
    assert one["lambda_1"].abs().item() > 0  # training really moved the multipliers
    # killed after checkpoint-6 and resumed under DDP: the run ends where the uninterrupted one ended
    launch_two(resumed, L0_RESUME=str(double / "run" / "checkpoint-6"))
    three = load_file(resumed / "final_gates.safetensors")
    for name in two:
        assert torch.allclose(two[name], three[name], atol=1e-6, rtol=0), (name, (two[name] - three[name]).abs().max())


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process_and_resume_from_sharded_checkpoint(tmp_path, single):
    """FSDP2 (fully_shard per decoder layer + the root, which holds the gates) over gloo on the CPU. accelerate only
    turns FSDP on for accelerator devices, so the script keeps the plugin on the CPU (L0_FSDP_FORCE, test only)."""
    fsdp, resumed = tmp_path / "fsdp", tmp_path / "resumed"
    launch_two(fsdp, L0_FSDP="1", L0_FSDP_FORCE="1", L0_SAVE_STEPS="6")
    result = json.loads((fsdp / "result.json").read_text())
    assert result == {**result, "world_size": 2, "steps": 12, "fsdp": True, "frozen_step": 9}
    assert result["max_rank_diff"] <= 1e-6
    checkpoint = fsdp / "run" / "checkpoint-6"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and not (checkpoint / "model.safetensors").exists()
    one, two = load_file(single / "final_gates.safetensors"), load_file(fsdp / "final_gates.safetensors")
    assert set(one) == set(two)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4, rtol=0), (name, (one[name] - two[name]).abs().max())
    # the compact model (gathered from the shards) has the single-process structure and weights
    configs = [json.loads((d / "compact" / "config.json").read_text()) for d in (single, fsdp)]
    assert configs[0]["l0_structure"] == configs[1]["l0_structure"]
    a, b = load_file(single / "compact" / "model.safetensors"), load_file(fsdp / "compact" / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        assert a[name].shape == b[name].shape and torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name
    # resuming from the sharded checkpoint ends where the uninterrupted FSDP run ended
    launch_two(resumed, L0_FSDP="1", L0_FSDP_FORCE="1", L0_RESUME=str(checkpoint))
    three = load_file(resumed / "final_gates.safetensors")
    for name in two:
        assert torch.allclose(two[name], three[name], atol=1e-6, rtol=0), (name, (two[name] - three[name]).abs().max())
