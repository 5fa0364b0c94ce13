#!/usr/bin/env python
"""ONNX Runtime: latency of a compact MiniLM against the dense one, both exported with `hf_l0.export_onnx`.

The packaged all-MiniLM-L6-v2 (bare encoder, ``last_hidden_state``) is magnitude-pruned (`hf_l0.pruning.baselines`,
heads and FFN neurons ranked by weight norm across layers) to ``--sparsity``: no training, since latency depends on the
shapes only. Both ONNX files run in ONNX Runtime (CPU provider, ``--threads`` intra-op threads, one inter-op thread) at
batch 1 x 128 and 32 x 128 tokens, the two sessions taking turns run by run; medians. Parity: max |ONNX - PyTorch| of
both files at each benchmark shape.

    python benchmarks/onnx_speed.py --threads 1                # ~3 min on 2 CPU cores
    python benchmarks/onnx_speed.py --quick --output_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import torch  # noqa: E402
import transformers as tf  # noqa: E402

from benchmarks.common import Run, benchmark_parser, markdown_table, set_threads  # noqa: E402
from hf_l0.cost.measure import forward_flops  # noqa: E402
from hf_l0.demo import assets  # noqa: E402
from hf_l0.deploy.onnx import check_onnx, example_inputs, export_onnx  # noqa: E402
from hf_l0.pruning.baselines import magnitude_prune  # noqa: E402

SEQ_LEN = 128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random BERT; a few runs")
    p.add_argument("--sparsity", type=float, default=0.75, help="fraction of heads and FFN neurons removed")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timed runs per model and shape (default: 60 at batch 1, 12 at larger batches)",
    )
    return p.parse_args(argv)


def load_dense(quick: bool, seed: int) -> tf.PreTrainedModel:
    if quick:
        torch.manual_seed(seed)
        config = tf.BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=SEQ_LEN,
        )
        return tf.BertModel(config).eval()
    return tf.AutoModel.from_pretrained(assets.minilm_dir()).eval()


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_latency(sessions: dict[str, Any], feed: dict[str, Any], runs: int, warmup: int = 3) -> dict[str, Any]:
    """Median seconds per run of each session, the sessions taking turns run by run (a slow spell of a shared
    machine hits both alike); the order within a turn alternates."""
    names = list(sessions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(warmup + runs):
        order = names if step % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feed)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = args.threads or 1
    set_threads(threads)
    run = Run("onnx_speed", args.seed, args.quick, args.output_dir)
    dense = load_dense(args.quick, args.seed)
    compact = magnitude_prune(copy.deepcopy(dense), args.sparsity).eval()
    structure = compact.config.l0_structure
    params = {
        name: sum(p.numel() for p in model.parameters()) for name, model in (("dense", dense), ("compact", compact))
    }
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        exports = {
            name: export_onnx(model, Path(tmp) / f"{name}.onnx")
            for name, model in (("dense", dense), ("compact", compact))
        }
        file_mb = {name: e.path.stat().st_size / 2**20 for name, e in exports.items()}
        sessions = {name: session(e.path, threads) for name, e in exports.items()}
        for batch in args.batch_sizes:
            inputs = example_inputs(dense, exports["dense"].input_names, batch, SEQ_LEN, seed=args.seed)
            inputs["attention_mask"].fill_(1)  # full-length sequences: every token costs
            parity = {
                name: check_onnx(e.path, model, inputs, e.output_name)
                for (name, e), model in zip(exports.items(), (dense, compact))
            }
            feed = {k: v.numpy() for k, v in inputs.items()}
            runs = args.runs or (3 if args.quick else (60 if batch == 1 else 12))
            latency = interleaved_latency(sessions, feed, runs)
            ideal = forward_flops(dense, SEQ_LEN, batch) / forward_flops(compact, SEQ_LEN, batch)
            ratio = latency["compact"] / latency["dense"]
            results.append(
                {
                    "batch_size": batch,
                    "seq_len": SEQ_LEN,
                    "runs": runs,
                    "dense_ms": latency["dense"] * 1e3,
                    "compact_ms": latency["compact"] * 1e3,
                    "latency_ratio": ratio,
                    "speedup": 1 / ratio,
                    "flops_speedup": ideal,
                    "max_abs_diff_dense": parity["dense"],
                    "max_abs_diff_compact": parity["compact"],
                }
            )
            rows.append(
                [
                    f"{batch} × {SEQ_LEN}",
                    latency["dense"] * 1e3,
                    latency["compact"] * 1e3,
                    ratio,
                    1 / ratio,
                    ideal,
                    f"{max(parity.values()):.1e}",
                ]
            )
    heads = [layer["attention_heads"] for layer in structure["layers"]]
    ffn = [layer["intermediate_size"] for layer in structure["layers"]]
    markdown = "\n".join(
        [
            f"## ONNX Runtime latency: compact ÷ dense ({'tiny BERT' if args.quick else 'all-MiniLM-L6-v2'}, "
            f"magnitude-pruned to {args.sparsity:.0%} of heads and FFN neurons)",
            "",
            markdown_table(
                [
                    "batch × tokens",
                    "dense ms",
                    "compact ms",
                    "compact ÷ dense",
                    "speedup",
                    "FLOPs speedup",
                    "max abs diff vs PyTorch",
                ],
                rows,
            ),
            "",
            f"Compact shapes per layer: heads {heads}, FFN {ffn}. "
            f"Parameters {params['compact']:,} / {params['dense']:,}; "
            f"ONNX files {file_mb['compact']:.1f} MB / {file_mb['dense']:.1f} MB. ONNX Runtime CPU provider, "
            f"{threads} intra-op thread(s); the two sessions take turns run by run, medians.",
        ]
    )
    return run.write(
        {
            "model": "tiny-bert" if args.quick else "all-MiniLM-L6-v2",
            "sparsity": args.sparsity,
            "threads": threads,
            "parameters": params,
            "onnx_mb": file_mb,
            "structure": {"attention_heads": heads, "intermediate_size": ffn},
            "latency": results,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
