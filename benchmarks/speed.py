#!/usr/bin/env python
"""Speed: CPU inference latency of the compact models against the ideal speedup from counted FLOPs, and the cost of
the gates during training (step time and peak memory of `L0Trainer` against a plain `Trainer`).

Inference: the dense fine-tuned MiniLM and the compact models that ``accuracy_sparsity.py`` saved, batch 1 and 32 at
sequence length 128 (real reviews padded to 128), dense and compact taking turns forward by forward in this process;
medians. Training, on the same model and the same batches: step times of both trainers in alternating rounds of this
process, and peak resident memory of each in fresh subprocesses (so it belongs to that trainer alone).

    python benchmarks/speed.py                    # ~12 min on 2 CPU cores, after accuracy_sparsity.py
    python benchmarks/speed.py --quick --output_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks.common import Run, benchmark_parser, goal, markdown_table, set_threads, training_arguments  # noqa: E402
from hf_l0.cost.measure import forward_flops, latency_speedup  # noqa: E402
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.pruning.baselines import magnitude_prune  # noqa: E402
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments  # noqa: E402

SEQ_LEN = 128
TRAIN_SEQ_LEN = 64  # the accuracy benchmark's training shape
SPEEDUP_GOAL, STEP_GOAL, MEMORY_GOAL = 0.9, 1.10, 1.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random BERT, magnitude-pruned; a few repeats")
    p.add_argument("--models_dir", default=None, help="dense/ and hf_l0-<target>/ (default: <output_dir>/models)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes per model and round")
    p.add_argument("--rounds", type=int, default=5, help="repeats x rounds forwards per model, taking turns")
    p.add_argument("--train_steps", type=int, default=12, help="steps per training subprocess (2 are warmup)")
    p.add_argument("--train_rounds", type=int, default=5, help="alternating step-time rounds per trainer")
    p.add_argument("--memory_rounds", type=int, default=2, help="peak-memory subprocesses per trainer")
    p.add_argument("--train_batch_size", type=int, default=32)
    p.add_argument("--worker", choices=["trainer", "l0_trainer"], help=argparse.SUPPRESS)  # internal
    return p.parse_args(argv)


def tiny_bert(vocab_size: int, seed: int) -> tf.BertForSequenceClassification:
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
    )
    return tf.BertForSequenceClassification(config).eval()


def review_batch(tokenizer: Any, batch_size: int, length: int, split: str = "test") -> dict[str, torch.Tensor]:
    texts = data.rotten_tomatoes()[split]["text"][:batch_size]
    return dict(tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"))


# -- training cost: one trainer per subprocess ------------------------------------------------------------------------
class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def proc_status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def training_setup(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The model to train (MiniLM with a new 2-label head, or a tiny BERT with --quick), its batches and settings."""
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    if args.quick:
        model = tiny_bert(tokenizer.vocab_size, args.seed).train()
    else:
        model = tf.AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2)
    reviews = data.rotten_tomatoes()["train"].select(range(args.train_steps * args.train_batch_size))
    train = reviews.map(
        lambda b: {
            **tokenizer(b["text"], padding="max_length", truncation=True, max_length=TRAIN_SEQ_LEN),
            "labels": b["label"],
        },
        batched=True,
        remove_columns=reviews.column_names,
    )
    settings = training_arguments(
        "/tmp/hf_l0_speed_worker",
        max_steps=args.train_steps,
        seed=args.seed,
        per_device_train_batch_size=args.train_batch_size,
        logging_steps=10_000,
    )
    return model, train, settings


def make_trainer(
    kind: str, model: torch.nn.Module, train: Any, settings: dict[str, Any], timer: StepTimer
) -> tf.Trainer:
    if kind == "l0_trainer":
        return L0Trainer(
            model=model,
            args=L0TrainingArguments(**settings, target_sparsity=0.75),
            train_dataset=train,
            callbacks=[timer],
        )
    return tf.Trainer(model=model, args=tf.TrainingArguments(**settings), train_dataset=train, callbacks=[timer])


def train_worker(args: argparse.Namespace) -> None:
    """Train ``args.train_steps`` steps with one trainer; print its peak memory as JSON (last stdout line)."""
    model, train, settings = training_setup(args)
    trainer = make_trainer(args.worker, model, train, settings, StepTimer())
    before = proc_status_mib("VmRSS")
    trainer.train()
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak across fork + exec into ru_maxrss.
    print(json.dumps({"peak_rss_mib": proc_status_mib("VmHWM"), "rss_before_train_mib": before}))


# glibc raises its mmap threshold after the first large free, then keeps freed activation buffers on the heap: peak
# RSS then differs by ~80 MiB between identical runs. A fixed threshold returns them, so RSS follows live memory.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def step_times(args: argparse.Namespace) -> dict[str, list[float]]:
    """Steps of both trainers in this one process, in alternating rounds (fresh copies of the same model each round),
    so that the machine's drifts hit both alike; the first two steps of every round are warmup."""
    base, train, settings = training_setup(args)
    times: dict[str, list[float]] = {"trainer": [], "l0_trainer": []}
    for round_idx in range(args.train_rounds):
        for kind in sorted(times, reverse=bool(round_idx % 2)):  # each goes first in every other round
            timer = StepTimer()
            make_trainer(kind, copy.deepcopy(base), train, settings, timer).train()
            times[kind] += timer.times[2:] or timer.times
    return times


def peak_memory(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Peak RSS of each trainer in fresh subprocesses (so it belongs to that trainer alone), with :data:`MEMORY_ENV`."""
    runs: dict[str, list[dict]] = {"trainer": [], "l0_trainer": []}
    command = (
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--train_steps",
            str(args.train_steps),
            "--train_batch_size",
            str(args.train_batch_size),
            "--seed",
            str(args.seed),
        ]
        + (["--quick"] if args.quick else [])
        + ([] if args.threads is None else ["--threads", str(args.threads)])
    )
    for _ in range(args.memory_rounds):
        for kind in runs:
            out = subprocess.run(
                command + ["--worker", kind],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, **MEMORY_ENV},
            )
            if out.returncode != 0:
                raise RuntimeError(f"training worker {kind} failed:\n{out.stderr[-3000:]}")
            runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def training_cost(args: argparse.Namespace) -> dict[str, Any]:
    times, memory = step_times(args), peak_memory(args)
    summary: dict[str, Any] = {
        "batch_size": args.train_batch_size,
        "seq_len": TRAIN_SEQ_LEN,
        "steps_per_run": args.train_steps,
        "rounds": args.train_rounds,
        "memory_rounds": args.memory_rounds,
        "memory_env": MEMORY_ENV,
        "l0_trainer_settings": "target_sparsity 0.75, heads+ffn+layers gates, no teacher",
    }
    for kind in times:
        summary[kind] = {
            "step_seconds": statistics.median(times[kind]),
            "step_times": times[kind],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in memory[kind]),
            "rss_before_train_mib": statistics.median(r["rss_before_train_mib"] for r in memory[kind]),
            "memory_runs": memory[kind],
        }
        summary[kind]["train_increase_mib"] = summary[kind]["peak_rss_mib"] - summary[kind]["rss_before_train_mib"]
    summary["step_time_ratio"] = summary["l0_trainer"]["step_seconds"] / summary["trainer"]["step_seconds"]
    summary["peak_memory_ratio"] = summary["l0_trainer"]["peak_rss_mib"] / summary["trainer"]["peak_rss_mib"]
    summary["train_increase_ratio"] = (
        summary["l0_trainer"]["train_increase_mib"] / summary["trainer"]["train_increase_mib"]
    )
    return summary


# -- inference latency --------------------------------------------------------------------------------------------
def load_models(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, torch.nn.Module], Any]:
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    if args.quick:
        dense = tiny_bert(tokenizer.vocab_size, args.seed)
        compact = magnitude_prune(tiny_bert(tokenizer.vocab_size, args.seed), 0.75).eval()
        return dense, {"0.75": compact}, tokenizer
    models_dir = Path(args.models_dir or Path(args.output_dir) / "models")
    dense = tf.AutoModelForSequenceClassification.from_pretrained(models_dir / "dense").eval()
    compact = {
        path.name.split("-", 1)[1]: hf_l0.from_pretrained(path).eval() for path in sorted(models_dir.glob("hf_l0-*"))
    }
    if not compact:
        raise FileNotFoundError(f"no compact model under {models_dir}: run benchmarks/accuracy_sparsity.py first.")
    return dense, compact, tokenizer


def sublayer_free(dense: torch.nn.Module) -> torch.nn.Module:
    """``dense`` with every attention and FFN sublayer removed: what no pruning of those can make faster
    (embeddings, residual norms, pooler, classifier and the per-layer Python dispatch)."""
    model = hf_l0.patch_model(copy.deepcopy(dense), hf_l0.L0Config(heads=True, ffn=True, layers=True))
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.fill_(-30.0)
    return hf_l0.prune_model(model.eval())


def latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    dense, compact, tokenizer = load_models(args)
    floor = sublayer_free(dense)
    rows = []
    for batch_size in args.batch_sizes:
        inputs = review_batch(tokenizer, batch_size, SEQ_LEN)
        dense_flops = forward_flops(dense, SEQ_LEN, batch_size)
        fixed = latency_speedup(dense, floor, inputs, repeats=args.repeats, rounds=args.rounds)
        for target, model in compact.items():
            timing = latency_speedup(dense, model, inputs, repeats=args.repeats, rounds=args.rounds)
            ideal = dense_flops / forward_flops(model, SEQ_LEN, batch_size)
            # The FLOP ideal with the fixed cost added back: only the sublayers' share of the time shrinks.
            fixed_share = fixed["compact_s"] / fixed["dense_s"]
            ideal_with_fixed = 1.0 / (fixed_share + (1.0 - fixed_share) / ideal)
            rows.append(
                {
                    "target": float(target),
                    "batch_size": batch_size,
                    "seq_len": SEQ_LEN,
                    "dense_ms": timing["dense_s"] * 1e3,
                    "compact_ms": timing["compact_s"] * 1e3,
                    "speedup": timing["speedup"],
                    "ideal_speedup": ideal,
                    "measured_over_ideal": timing["speedup"] / ideal,
                    "fixed_ms": fixed["compact_s"] * 1e3,
                    "fixed_share_of_dense": fixed_share,
                    "ideal_with_fixed_cost": ideal_with_fixed,
                    "measured_over_ideal_with_fixed_cost": timing["speedup"] / ideal_with_fixed,
                    "parameters": model.num_parameters(),
                    "dense_parameters": dense.num_parameters(),
                }
            )
            print(rows[-1], flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    targets = sorted({r["target"] for r in rows})
    for batch_size, marker in zip(sorted({r["batch_size"] for r in rows}), "os^"):
        points = sorted((r["target"], r["speedup"]) for r in rows if r["batch_size"] == batch_size)
        ax.plot(*zip(*points), marker + "-", label=f"measured, batch {batch_size}")
    ideal = sorted({(r["target"], r["ideal_speedup"]) for r in rows if r["batch_size"] == rows[0]["batch_size"]})
    ax.plot(*zip(*ideal), "k*--", label="ideal (FLOPs)")
    ax.set_xticks(targets)
    ax.set_xlabel("sparsity of attention + FFN parameters (target)")
    ax.set_ylabel(f"speedup over dense (CPU, seq {SEQ_LEN})")
    ax.set_title("Compact MiniLM: measured vs ideal speedup")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    rows = []
    for r in results["latency"]:
        check = f" {goal(r['measured_over_ideal'] >= SPEEDUP_GOAL)}" if r["target"] == 0.75 else ""
        rows.append(
            [
                f"{r['target']:g}",
                r["batch_size"],
                r["dense_ms"],
                r["compact_ms"],
                f"{r['speedup']:.2f}×",
                f"{r['ideal_speedup']:.2f}×",
                f"{r['measured_over_ideal']:.2f}{check}",
                r["fixed_ms"],
                f"{r['ideal_with_fixed_cost']:.2f}×",
                f"{r['measured_over_ideal_with_fixed_cost']:.2f}",
            ]
        )
    out = (
        f"**Inference** — CPU latency, sequence length {SEQ_LEN}, median of "
        f"{results['repeats'] * results['rounds']} forwards per model, dense and compact taking turns forward by "
        f"forward (goal: measured ÷ ideal ≥ {SPEEDUP_GOAL} at 0.75). *Fixed ms* is "
        "the same model with every attention and FFN sublayer removed (embeddings, norms, pooler, classifier, "
        "per-layer dispatch), which no pruning of heads and neurons makes faster; the last two columns add it "
        "back to the FLOP ideal.\n\n"
    )
    out += markdown_table(
        [
            "sparsity",
            "batch",
            "dense ms",
            "compact ms",
            "speedup",
            "ideal (FLOPs)",
            "measured ÷ ideal",
            "fixed ms",
            "ideal + fixed",
            "measured ÷ (ideal + fixed)",
        ],
        rows,
    )
    t = results["training"]
    out += (
        f"\n\n**Training cost of the gates** — batch {t['batch_size']} × {t['seq_len']} tokens. Step time: median "
        f"over {t['rounds']} alternating rounds × {t['steps_per_run'] - 2} steps of both trainers in one process. "
        f"Peak resident memory: {t['memory_rounds']} fresh subprocesses per trainer, run with "
        f"{' '.join(f'{k}={v}' for k, v in t['memory_env'].items())} so that glibc returns freed activation "
        f"buffers and RSS follows live memory ({t['l0_trainer_settings']}).\n\n"
    )
    out += markdown_table(
        ["", "Trainer", "L0Trainer", "ratio", "goal"],
        [
            [
                "step time (s)",
                t["trainer"]["step_seconds"],
                t["l0_trainer"]["step_seconds"],
                f"{t['step_time_ratio']:.3f}",
                f"≤ {STEP_GOAL} {goal(t['step_time_ratio'] <= STEP_GOAL)}",
            ],
            [
                "peak RSS (MiB)",
                t["trainer"]["peak_rss_mib"],
                t["l0_trainer"]["peak_rss_mib"],
                f"{t['peak_memory_ratio']:.3f}",
                f"≤ {MEMORY_GOAL} {goal(t['peak_memory_ratio'] <= MEMORY_GOAL)}",
            ],
            [
                "RSS increase during training (MiB)",
                t["trainer"]["train_increase_mib"],
                t["l0_trainer"]["train_increase_mib"],
                f"{t['train_increase_ratio']:.3f}",
                "–",
            ],
        ],
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.worker:
        train_worker(args)
        return {}
    if args.quick:
        args.repeats, args.rounds, args.train_steps, args.train_rounds, args.memory_rounds = 2, 1, 4, 1, 1
        args.train_batch_size = min(args.train_batch_size, 4)
    run = Run("speed", args.seed, args.quick, args.output_dir)
    tf.set_seed(args.seed)
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "repeats": args.repeats, "rounds": args.rounds}
    results["latency"] = latency(args)
    results["training"] = training_cost(args)
    plot(results["latency"], run.path(".png"))
    return run.write(results, table(results))


if __name__ == "__main__":
    main()
