"""Crash and resume: an L0Trainer run killed with SIGKILL mid-warmup and mid-final-phase, resumed with
``resume_from_checkpoint=True``, ends bitwise equal to the uninterrupted run; an interrupted ``save_model`` leaves the
previous output loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

import hf_l0
from hf_l0 import get_gates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_l0 import FINAL_PHASE, SAVE_STEPS, STEPS, WARMUP, build_trainer  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "crash_l0.py"


def final_state(trainer) -> dict[str, torch.Tensor]:
    state = {f"gate.{k}": v.clone() for k, v in get_gates(trainer.model).state_dict().items()}
    state.update({f"controller.{k}": v.clone() for k, v in trainer.controller.state_dict().items()})
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_accuracy", "eval_deterministic_sparsity", "eval_expected_sparsity"):
        state[key] = torch.tensor(metrics[key], dtype=torch.float64)
    return state


def crash(out_dir: Path, kill_at: int) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(hf_l0.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out_dir), str(kill_at)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == -signal.SIGKILL, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_kill_9_mid_warmup_and_mid_final_phase_then_resume_is_bitwise(tmp_path):
    reference = build_trainer(str(tmp_path / "uninterrupted"))
    reference.train()
    expected = final_state(reference)

    out = tmp_path / "crashed"
    crash(out, kill_at=SAVE_STEPS + 2)  # killed in the warmup (steps 0..5), after checkpoint-5
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{SAVE_STEPS}"] and SAVE_STEPS < WARMUP
    crash(out, kill_at=2 * SAVE_STEPS + 1)  # resumed from checkpoint-5, killed in the final phase after checkpoint-10
    assert (out / f"checkpoint-{2 * SAVE_STEPS}").is_dir()
    resumed = build_trainer(str(out))
    assert max(WARMUP, (1 - FINAL_PHASE) * STEPS) <= 2 * SAVE_STEPS < STEPS  # checkpoint-10 is in the final phase
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == STEPS
    got = final_state(resumed)
    assert set(got) == set(expected)
    for key in expected:  # bitwise: gates, lambda_1, lambda_2, the calibration offset, sparsity and eval metrics
        assert torch.equal(got[key], expected[key]), (key, (got[key] - expected[key]).abs().max())
    assert expected["controller.lambda_1"].item() != 0.0 and expected["controller.integral"].item() != 0.0


def test_interrupted_save_model_leaves_previous_output_loadable(tmp_path, monkeypatch):
    trainer = build_trainer(str(tmp_path / "run"))
    trainer.args.max_steps = 2
    trainer.args.sparsity_warmup_steps = trainer.controller.warmup_steps = 1  # a warm-up shorter than the run
    trainer.args.save_strategy = "no"
    trainer.train()
    out = tmp_path / "model"
    trainer.save_model(str(out))
    first = hf_l0.from_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    original = tf.PreTrainedModel.save_pretrained

    def crash_while_writing(self, directory, *args, **kwargs):
        original(self, directory, *args, **kwargs)
        weights = Path(directory) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # half written
        raise OSError("No space left on device")

    trainer.train()  # the gates move on: the next save would differ
    trainer._compact = None
    monkeypatch.setattr(tf.PreTrainedModel, "save_pretrained", crash_while_writing)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model(str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]  # no half-written sibling left
    again = hf_l0.from_pretrained(out)
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
