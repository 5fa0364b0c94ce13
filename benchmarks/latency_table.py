#!/usr/bin/env python
"""Latency-table accuracy: predicted against measured CPU latency of random compact MiniLM shapes.

The packaged MiniLM's latency table is measured anew (batch x sequence length, one thread by default), then random
compact shapes (per-layer heads and FFN widths, some sublayers removed whole) are cut from the real model with
``hf_l0.pruning.structure.apply_structure`` and timed against the dense model, the two taking turns forward by forward
(``hf_l0.cost.measure.latency_speedup``, medians). For each shape: the latency the table predicts, the measured one and
the relative error, and the same for the speedup (compact over dense time, which cancels a machine-wide slowdown
between the table and the timing). Run it on a quiet machine when possible: it reports the load average.

    python benchmarks/latency_table.py --batch_size 1                          # ~1 min on 1 thread
    python benchmarks/latency_table.py --batch_size 32 --repeats 2 --rounds 2  # ~6 min
    python benchmarks/latency_table.py --quick --output_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import torch  # noqa: E402
import transformers as tf  # noqa: E402

from benchmarks.common import RESULTS_DIR, Run, benchmark_parser, load_average, markdown_table  # noqa: E402
from hf_l0.cost.latency import _structure, latency_inputs, latency_table, predict_latency  # noqa: E402
from hf_l0.cost.measure import latency_speedup  # noqa: E402
from hf_l0.demo import assets  # noqa: E402
from hf_l0.pruning.structure import apply_structure  # noqa: E402

TABLE_ERROR_GOAL = 0.05  # median |predicted / measured latency - 1| over the random shapes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random BERT, 3 shapes, a few repeats")
    p.set_defaults(output_dir=str(RESULTS_DIR / "latency"), threads=1)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--shapes", type=int, default=20, help="random compact shapes")
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per model, width and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over repeats x rounds)")
    p.add_argument("--reuse_table", action="store_true", help="load a cached table instead of measuring anew")
    return p.parse_args(argv)


def random_structure(dense_shape: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """Per-layer kept heads / neurons around a random overall level; each sublayer removed whole with p = 0.15."""
    level = 0.1 + 0.85 * float(torch.rand((), generator=generator))
    structure = _structure(dense_shape, dense_shape["num_layers"], 0, 0)
    for layer in structure["layers"]:
        kept = []
        for width in (dense_shape["attention_units"], dense_shape["intermediate_size"]):
            fraction = min(1.0, max(0.0, level + 0.2 * float(torch.randn((), generator=generator))))
            removed = float(torch.rand((), generator=generator)) < 0.15
            kept.append(0 if removed else max(1, round(fraction * width)))
        layer["key_value_heads"], layer["intermediate_size"] = kept
        layer["attention_heads"] = kept[0] * dense_shape["heads_per_unit"]
        layer["attention_output_bias"], layer["ffn_output_bias"] = kept[0] > 0, kept[1] > 0
    return structure


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        torch.manual_seed(args.seed)
        config = tf.BertConfig(
            vocab_size=200,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        dense = tf.BertModel(config).eval()
        args.shapes, args.repeats, args.rounds, args.seq_len = 3, 2, 1, min(args.seq_len, 16)
    else:
        dense = tf.AutoModel.from_pretrained(assets.minilm_dir()).eval()
    name = f"latency_table_b{args.batch_size}_s{args.seq_len}_t{args.threads}"
    run = Run(name, args.seed, args.quick, args.output_dir)
    load_before = load_average()
    cache = tempfile.mkdtemp(prefix="hf_l0_latency_") if args.quick else None
    table = latency_table(
        dense,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        threads=args.threads,
        cache_dir=cache,
        repeats=args.repeats,
        rounds=args.rounds,
        rebuild=not args.reuse_table,
    )
    print(table.summary(), flush=True)
    inputs = latency_inputs(dense, args.batch_size, args.seq_len)
    shape = table.key["shape"]
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for i in range(args.shapes):
        structure = random_structure(shape, generator)
        compact = apply_structure(copy.deepcopy(dense), structure)
        predicted = predict_latency(table, compact)
        timing = latency_speedup(dense, compact, inputs, repeats=args.repeats, rounds=args.rounds, threads=args.threads)
        predicted_speedup = table.predict_dense() / predicted
        row = {
            "shape": [(layer["key_value_heads"], layer["intermediate_size"]) for layer in structure["layers"]],
            "predicted_ms": predicted * 1e3,
            "measured_ms": timing["compact_s"] * 1e3,
            "dense_measured_ms": timing["dense_s"] * 1e3,
            "error": predicted / timing["compact_s"] - 1.0,
            "predicted_speedup": predicted_speedup,
            "measured_speedup": timing["speedup"],
            "speedup_error": predicted_speedup / timing["speedup"] - 1.0,
        }
        rows.append(row)
        print(
            f"[{i + 1}/{args.shapes}] {row['shape']}: predicted {row['predicted_ms']:.2f} ms, measured "
            f"{row['measured_ms']:.2f} ms ({row['error']:+.1%}); speedup {predicted_speedup:.2f}x predicted, "
            f"{timing['speedup']:.2f}x measured",
            flush=True,
        )
    median_error = statistics.median(abs(r["error"]) for r in rows)
    median_speedup_error = statistics.median(abs(r["speedup_error"]) for r in rows)
    results = {
        "model": "packaged MiniLM (all-MiniLM-L6-v2)" if not args.quick else "tiny random BERT",
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "table": table.to_dict(),
        "table_dense_predicted_ms": table.predict_dense() * 1e3,
        "table_dense_measured_ms": table.dense_s * 1e3,
        "median_abs_error": median_error,
        "median_abs_error_goal": TABLE_ERROR_GOAL,
        "median_abs_speedup_error": median_speedup_error,
        "max_abs_error": max(abs(r["error"]) for r in rows),
        "shapes": rows,
    }
    markdown = (
        f"# Latency table accuracy ({results['model']}, batch {args.batch_size} x {args.seq_len}, "
        f"{args.threads} thread(s))\n\nLoad average before / after: {load_before} / {results['load_average_after']}"
        f"\n\nMedian |error| of the predicted latency: {median_error:.1%} (goal ≤ {TABLE_ERROR_GOAL:.0%}); of the "
        "predicted speedup: "
        f"{median_speedup_error:.1%} (max latency error {results['max_abs_error']:.1%}).\n\n"
    )
    markdown += markdown_table(
        [
            "shape (heads, neurons) per layer",
            "predicted ms",
            "measured ms",
            "error",
            "predicted speedup",
            "measured speedup",
        ],
        [
            [
                " ".join(f"{h}/{n}" for h, n in r["shape"]),
                r["predicted_ms"],
                r["measured_ms"],
                f"{r['error']:+.1%}",
                r["predicted_speedup"],
                r["measured_speedup"],
            ]
            for r in rows
        ],
    )
    data = run.write(results, markdown)
    print(f"median |error| {median_error:.1%} (speedup {median_speedup_error:.1%}); wrote {run.path('.json')}")
    return data


if __name__ == "__main__":
    main()
