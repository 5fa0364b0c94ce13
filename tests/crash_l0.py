"""A small L0Trainer run that tests/test_resume.py kills with SIGKILL and resumes.

    python tests/crash_l0.py OUT_DIR KILL_AT_STEP   # SIGKILL itself when global_step reaches KILL_AT_STEP
    python tests/crash_l0.py OUT_DIR 0              # no kill (resumes from OUT_DIR's last checkpoint if any)

The run (``build_trainer``) is also built in-process by the test, so both set-ups are the same code.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
import transformers as tf
from datasets import Dataset

from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

VOCAB, STEPS, SAVE_STEPS, WARMUP, FINAL_PHASE = 101, 12, 5, 6, 0.25  # final phase: steps 9..11; checkpoints 5, 10


def dataset(n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, 12), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": (ids[:, 0] % 3).tolist()}
    )


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def build_trainer(out_dir: str, callbacks: list | None = None) -> L0Trainer:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    model = tf.BertForSequenceClassification(config)  # dropout 0.1 on: its RNG stream must be restored too
    args = L0TrainingArguments(
        output_dir=out_dir,
        target_sparsity=0.5,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=STEPS,
        sparsity_warmup_steps=WARMUP,
        sparsity_final_phase_ratio=FINAL_PHASE,
        recovery_ratio=0.0,  # the whole run searches: the kills land in the warm-up and in the final phase
        gate_learning_rate=0.1,
        lagrangian_learning_rate=0.1,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        logging_steps=4,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        l0_structures="heads,ffn",
        seed=0,
        data_seed=0,
    )
    return L0Trainer(
        model=model,
        args=args,
        train_dataset=dataset(128, 0),
        eval_dataset=dataset(32, 1),
        compute_metrics=accuracy,
        callbacks=callbacks,
    )


class KillAt(tf.TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a crash


def main() -> None:
    out_dir, kill_at = sys.argv[1], int(sys.argv[2])
    trainer = build_trainer(out_dir, [KillAt(kill_at)] if kill_at else None)
    has_checkpoint = os.path.isdir(out_dir) and any(n.startswith("checkpoint-") for n in os.listdir(out_dir))
    trainer.train(resume_from_checkpoint=True if has_checkpoint else None)


if __name__ == "__main__":
    main()
