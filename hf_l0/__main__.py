"""``python -m hf_l0 <command>``: command-line tools.

    python -m hf_l0 latency-table --model hf_l0:minilm --batch-size 1 --seq-len 128 --threads 1

measures (or loads from the cache) the latency table that ``--target_metric latency`` prunes against, and prints it.
"""

from __future__ import annotations

import argparse
import sys

import torch


def _latency_table(args: argparse.Namespace) -> int:
    import transformers as tf

    from .cost.latency import latency_table
    from .demo.gguf import drop_gguf_quantizer
    from .demo.scripting import resolve_model_path

    path, gguf_file = resolve_model_path(args.model, args.gguf_file)
    config = tf.AutoConfig.from_pretrained(path, gguf_file=gguf_file)
    if args.auto_class:
        model_class = getattr(tf, args.auto_class)
    else:  # the class the checkpoint was saved from (its head is part of the fixed cost), else the base model
        name = (getattr(config, "architectures", None) or [""])[0]
        model_class = getattr(tf, name, None) or tf.AutoModel
    dtype = getattr(torch, args.dtype)
    model = model_class.from_pretrained(path, gguf_file=gguf_file, dtype=dtype)
    model = drop_gguf_quantizer(model).eval()
    table = latency_table(
        model,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        threads=args.threads,
        dtype=dtype,
        cache_dir=args.cache_dir,
        repeats=args.repeats,
        rounds=args.rounds,
        rebuild=args.rebuild,
        progress=not args.no_progress,
    )
    print(table.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hf_l0", description="hf-l0 command-line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser(
        "latency-table",
        help="measure (or load from the cache) a model's latency table on this machine",
        description="Time an attention sublayer with k heads and an FFN sublayer with n neurons over a grid of "
        "widths, plus the fixed cost, at one batch shape, thread count and dtype; cached (see hf_l0.cost.latency).",
    )
    table.add_argument("--model", required=True, help="model directory, Hub id, or hf_l0:minilm / hf_l0:smollm2")
    table.add_argument("--gguf-file", default=None, help="GGUF file inside --model, for GGUF checkpoints")
    table.add_argument(
        "--auto-class",
        default=None,
        help="transformers class to load (default: the checkpoint's architecture, else AutoModel)",
    )
    table.add_argument("--batch-size", type=int, default=1)
    table.add_argument("--seq-len", type=int, default=128)
    table.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    table.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    table.add_argument("--repeats", type=int, default=3, help="timed calls per width and round (median)")
    table.add_argument("--rounds", type=int, default=8, help="interleaved rounds over all widths")
    table.add_argument("--cache-dir", default=None, help="where tables are cached (default $HF_L0_CACHE/latency)")
    table.add_argument("--rebuild", action="store_true", help="measure anew even when a cached table exists")
    table.add_argument("--no-progress", action="store_true", help="no progress bar")
    table.set_defaults(handler=_latency_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
