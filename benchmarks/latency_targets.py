#!/usr/bin/env python
"""Accuracy at equal measured latency: pruning to a latency target against pruning to a parameter target.

1. Dense fine-tuning of the packaged MiniLM on rotten_tomatoes (or ``--dense_model``), as ``accuracy_sparsity.py``.
2. The latency table of the dense model on this machine (``--latency_batch_size`` x ``--latency_seq_len``,
   ``--latency_threads``), measured once or loaded from the cache.
3. Per method and target, `L0Trainer` with the same budget, distillation, schedule and seed: ``params`` prunes to
   each of ``--param_targets`` (fraction of attention + FFN parameters), ``latency`` to each of
   ``--latency_targets`` (fraction of the forward time the table predicts).
4. Each compact model: test accuracy and latency measured against the dense model, taking turns forward by forward
   at the table's shape (medians). Each method's accuracy is interpolated linearly in the measured speedup, and
   the two are compared at the speedups both cover.

    python benchmarks/latency_targets.py                 # long: 2 x 3 pruning runs of MiniLM (hours on 2 cores)
    python benchmarks/latency_targets.py --quick --output_dir /tmp/bench   # tiny random BERT, seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import numpy as np  # noqa: E402
import transformers as tf  # noqa: E402
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks.accuracy_sparsity import accuracies, load_model_and_data  # noqa: E402
from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    Run,
    benchmark_parser,
    markdown_table,
    set_threads,
    trainable_copy,
    training_arguments,  # noqa: E402
)
from hf_l0.cost import compact_flops  # noqa: E402
from hf_l0.latency import latency_inputs, latency_table, predict_latency  # noqa: E402
from hf_l0.measure import latency_speedup  # noqa: E402
from hf_l0.trainer import L0Trainer, L0TrainingArguments  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random BERT, a handful of examples and steps, one target per method")
    p.set_defaults(output_dir=str(RESULTS_DIR / "latency"))
    p.add_argument("--dense_model", default=None, help="a dense fine-tuned model to reuse instead of stage 1")
    p.add_argument("--dense_epochs", type=float, default=1.0)
    p.add_argument("--dense_learning_rate", type=float, default=1e-4)
    p.add_argument("--param_targets", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    p.add_argument("--latency_targets", type=float, nargs="+", default=[0.4, 0.55, 0.7])
    p.add_argument("--latency_batch_size", type=int, default=1)
    p.add_argument("--latency_seq_len", type=int, default=128)
    p.add_argument("--latency_threads", type=int, default=1)
    p.add_argument("--latency_repeats", type=int, default=5, help="timed forwards per model and round (3 rounds)")
    p.add_argument("--prune_steps", type=int, default=300)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--l0_structures", default="heads,ffn,layers")
    return p.parse_args(argv)


def accuracy_at(speedups: list[float], accuracy: list[float], at: np.ndarray) -> np.ndarray:
    order = np.argsort(speedups)
    return np.interp(at, np.asarray(speedups)[order], np.asarray(accuracy)[order])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.prune_steps, args.dense_epochs = 4, 0.25
        args.param_targets = args.param_targets[:1]
        args.latency_seq_len, args.latency_repeats = min(args.latency_seq_len, 16), 1
    run = Run("latency_targets", args.seed, args.quick, args.output_dir)
    work = Path(tempfile.mkdtemp(prefix="hf_l0_bench_"))
    tf.set_seed(args.seed)
    model, tokenizer, splits = load_model_and_data(args)
    collator = DataCollatorWithPadding(tokenizer)
    if args.dense_model:
        model = AutoModelForSequenceClassification.from_pretrained(args.dense_model)
    else:
        tf.Trainer(
            model=model,
            args=tf.TrainingArguments(
                **training_arguments(
                    work / "dense",
                    num_train_epochs=args.dense_epochs,
                    learning_rate=args.dense_learning_rate,
                    per_device_train_batch_size=args.batch_size,
                    seed=args.seed,
                    warmup_steps=0.1,
                )
            ),
            train_dataset=splits["train"],
            data_collator=collator,
        ).train()
    dense = model.eval()
    table_settings = {
        "batch_size": args.latency_batch_size,
        "seq_len": args.latency_seq_len,
        "threads": args.latency_threads,
    }
    table = latency_table(
        dense, **table_settings, **({"cache_dir": work / "cache", "repeats": 1, "rounds": 1} if args.quick else {})
    )
    print(table.summary(), flush=True)
    if args.quick:  # a tiny model's time is mostly fixed cost: half of what the gates can remove
        args.latency_targets = [round(0.5 * (1.0 - table.fixed_s / table.predict_dense()), 3)]
    inputs = latency_inputs(dense, args.latency_batch_size, args.latency_seq_len)
    results: dict[str, Any] = {
        "model": "tiny random BERT (quick)" if args.quick else "all-MiniLM-L6-v2",
        "latency": table_settings,
        "budget": {
            "prune_steps": args.prune_steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "learning_rate": args.learning_rate,
            "l0_structures": args.l0_structures,
        },
        "table": table.path,
        "dense": accuracies(dense, splits, collator),
        "runs": [],
    }
    for metric, targets in (("params", args.param_targets), ("latency", args.latency_targets)):
        for target in targets:
            tf.set_seed(args.seed)
            start = time.perf_counter()
            l0_args = L0TrainingArguments(
                **training_arguments(
                    work / f"{metric}-{target}",
                    max_steps=args.prune_steps,
                    learning_rate=args.learning_rate,
                    per_device_train_batch_size=args.batch_size,
                    seed=args.seed,
                    warmup_steps=0.1 * args.prune_steps,
                    target_sparsity=target,
                    target_metric=metric,
                    l0_structures=args.l0_structures,
                    cost_seq_len=args.latency_seq_len,
                    cost_batch_size=args.latency_batch_size,
                    cost_threads=args.latency_threads,
                    latency_table=table.path if metric == "latency" else None,
                )
            )
            trainer = L0Trainer(
                model=trainable_copy(dense),
                args=l0_args,
                teacher_model=dense,
                train_dataset=splits["train"],
                data_collator=collator,
                processing_class=tokenizer,
            )
            trainer.train()
            compact = trainer.compact_model()
            timing = latency_speedup(
                dense, compact, inputs, repeats=args.latency_repeats, rounds=3, threads=args.latency_threads
            )
            row = {
                "metric": metric,
                "target": target,
                **accuracies(compact, splits, collator),
                "parameter_sparsity": float(hf_l0.deterministic_sparsity(trainer.model)),
                "predicted_latency_reduction": 1.0 - predict_latency(table, compact) / table.predict_dense(),
                "measured_speedup": timing["speedup"],
                "measured_latency_reduction": 1.0 - 1.0 / timing["speedup"],
                "flops_reduction": 1.0
                - compact_flops(compact, args.latency_seq_len) / compact_flops(dense, args.latency_seq_len),
                "structure": compact.config.l0_structure["layers"],
                "seconds": time.perf_counter() - start,
            }
            results["runs"].append(row)
            print({k: v for k, v in row.items() if k != "structure"}, flush=True)
    by_metric = {m: [r for r in results["runs"] if r["metric"] == m] for m in ("params", "latency")}
    low = max(min(r["measured_speedup"] for r in rows) for rows in by_metric.values())
    high = min(max(r["measured_speedup"] for r in rows) for rows in by_metric.values())
    comparison = []
    if low <= high:  # the speedups both methods cover
        grid = np.linspace(low, high, 5 if high > low else 1)
        curves = {
            m: accuracy_at([r["measured_speedup"] for r in rows], [r["test_accuracy"] for r in rows], grid)
            for m, rows in by_metric.items()
        }
        comparison = [
            {
                "speedup": float(s),
                "params_test_accuracy": float(curves["params"][i]),
                "latency_test_accuracy": float(curves["latency"][i]),
            }
            for i, s in enumerate(grid)
        ]
    results["equal_latency"] = comparison
    markdown = "# Accuracy at equal measured latency: latency vs parameter targets\n\n" + markdown_table(
        [
            "metric",
            "target",
            "test acc",
            "param sparsity",
            "predicted lat. red.",
            "measured lat. red.",
            "speedup",
            "FLOPs red.",
        ],
        [
            [
                r["metric"],
                r["target"],
                r["test_accuracy"],
                r["parameter_sparsity"],
                r["predicted_latency_reduction"],
                r["measured_latency_reduction"],
                r["measured_speedup"],
                r["flops_reduction"],
            ]
            for r in results["runs"]
        ],
    )
    if comparison:
        markdown += "\n\nAt equal measured speedup (linear interpolation):\n\n" + markdown_table(
            ["speedup", "params-targeted test acc", "latency-targeted test acc"],
            [[c["speedup"], c["params_test_accuracy"], c["latency_test_accuracy"]] for c in comparison],
        )
    return run.write(results, markdown)


if __name__ == "__main__":
    main()
