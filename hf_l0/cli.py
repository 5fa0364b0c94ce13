"""``hf-l0``: one command for what a user does with hf-l0 (``python -m hf_l0`` is the same command).

    hf-l0 prune-classifier scripts/configs/minilm_rotten_tomatoes.json   # fine-tune, prune, evaluate, save, time
    hf-l0 prune-clm --model_name_or_path hf_l0:smollm2 --train_file ... --target_sparsity 0.3 --output_dir out
    hf-l0 latency-table --model hf_l0:minilm --batch-size 1 --seq-len 128
    hf-l0 export-onnx out/compact out/model.onnx [--quantize int8]
    hf-l0 export-gguf out/compact out/model.gguf --dtype q8_0
    hf-l0 inspect out/compact

Every subcommand has ``--help``. The prune commands take the flags (or one JSON file) of their
``L0TrainingArguments``-based parsers; the others load models with :func:`hf_l0.from_pretrained` (no code from the
directory runs) or, for a dense checkpoint or a GGUF file, with transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PROG = "hf-l0"


def _transformers_model(path: str, gguf_file: str | None, auto_class: str | None, dtype: Any = None) -> Any:
    """A checkpoint loaded by transformers (a directory, a Hub id, ``hf_l0:minilm`` / ``hf_l0:smollm2``, GGUF files
    dequantized): ``auto_class`` if given, else the class it was saved from, else the base model."""
    import transformers as tf

    from .demo.gguf import drop_gguf_quantizer
    from .demo.scripting import resolve_model_path

    resolved, gguf = resolve_model_path(path, gguf_file)
    config = tf.AutoConfig.from_pretrained(resolved, gguf_file=gguf)
    name = auto_class or (getattr(config, "architectures", None) or ["AutoModel"])[0]
    model_class = getattr(tf, name, None) or tf.AutoModel
    return drop_gguf_quantizer(model_class.from_pretrained(resolved, gguf_file=gguf, dtype=dtype)).eval()


def _load(path: str, gguf_file: str | None = None, auto_class: str | None = None) -> Any:
    """A model for the export commands: an hf-l0 directory through :func:`hf_l0.from_pretrained` (no code from the
    directory runs), anything else through transformers."""
    import transformers as tf

    from .demo.scripting import resolve_model_path
    from .hub.load import from_pretrained

    resolved, gguf = resolve_model_path(path, gguf_file)
    if gguf is None and (Path(resolved) / "config.json").is_file():
        return from_pretrained(resolved, getattr(tf, auto_class) if auto_class else None).eval()
    return _transformers_model(path, gguf_file, auto_class)


def _latency_table(args: argparse.Namespace) -> int:
    import torch

    from .cost.latency import latency_table

    dtype = getattr(torch, args.dtype)
    model = _transformers_model(args.model, args.gguf_file, args.auto_class, dtype)
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


def _export_onnx(args: argparse.Namespace) -> int:
    from .deploy.onnx import export_onnx

    model = _load(args.model, args.gguf_file, args.auto_class)
    result = export_onnx(model, args.output, **({"quantize": args.quantize} if args.quantize else {}))
    print(result)
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from .demo.scripting import resolve_model_path
    from .deploy.gguf_export import export_gguf

    model = _load(args.model, args.gguf_file, "AutoModelForCausalLM")
    tokenizer = args.tokenizer_gguf
    if tokenizer is None:  # a model read from a GGUF file keeps that file's tokenizer
        path, gguf = resolve_model_path(args.model, args.gguf_file)
        tokenizer = str(Path(path) / gguf) if gguf else None
    print(export_gguf(model, args.output, dtype=args.dtype, tokenizer_gguf=tokenizer))
    return 0


def inspect_directory(directory: str | Path) -> dict[str, Any]:
    """What a saved directory holds, read from its files alone (no model is built): model type, export kind,
    parameters, per-layer structure and the card's heatmap."""
    from .hub.card import HEATMAP_FILE
    from .hub.export import EXPORT_KEY
    from .pruning.structure_format import STRUCTURE_KEY

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"{directory} has no config.json: not a saved model directory.")
    config = json.loads(config_path.read_text())
    structure = config.get(STRUCTURE_KEY)
    export = config.get(EXPORT_KEY) or {}
    info: dict[str, Any] = {
        "directory": str(directory),
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "compact": structure is not None,
        "export": "remote code" if "auto_map" in config else "native",
        "dtype": config.get("dtype") or config.get("torch_dtype"),
    }
    if export.get("reason"):
        info["export_reason"] = export["reason"]
    if structure:
        layers = structure["layers"]
        info["hidden_size"] = structure["hidden_size"]
        info["layers"] = [
            {"heads": layer["attention_heads"], "kv_heads": layer["key_value_heads"], "ffn": layer["intermediate_size"]}
            for layer in layers
        ]
        if structure.get("dropped_layers"):
            info["dropped_layers"] = structure["dropped_layers"]
    for key in ("parameters", "dense_parameters", "removed_sublayers"):
        if key in export:
            info[key] = export[key]
    heatmap = directory / HEATMAP_FILE
    info["heatmap"] = str(heatmap) if heatmap.is_file() else None
    return info


def _inspect(args: argparse.Namespace) -> int:
    info = inspect_directory(args.directory)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "layers":
            print("layers (heads / KV heads / FFN neurons):")
            for i, layer in enumerate(value):
                print(f"  {i:3d}: {layer['heads']:4d} / {layer['kv_heads']:4d} / {layer['ffn']:6d}")
        else:
            print(f"{key}: {value}")
    return 0


# The prune commands hand all their flags to their own HfArgumentParser (every L0TrainingArguments field).
PRUNE_COMMANDS = {
    "prune-classifier": ("prune_classification", "fine-tune (if needed) and prune a sequence classifier"),
    "prune-clm": ("prune_clm", "prune a causal LM on a text corpus"),
}


def _prune(command: str, argv: list[str]) -> int:
    import importlib

    importlib.import_module(f"hf_l0.commands.{PRUNE_COMMANDS[command][0]}").main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Structured L0 pruning of transformers models: prune, time, export and inspect. "
        f"`{PROG} COMMAND --help` describes each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, (_, what) in PRUNE_COMMANDS.items():  # listed here; main() hands them their flags unparsed
        commands.add_parser(name, help=f"{what} (every L0TrainingArguments field is a flag, or one JSON file)")

    table = commands.add_parser(
        "latency-table",
        help="measure (or load from the cache) a model's latency table on this machine",
        description="Time an attention sublayer with k heads and an FFN sublayer with n neurons over a grid of "
        "widths, plus the fixed cost, at one batch shape, thread count and dtype; cached (see hf_l0.cost.latency). "
        "A --target_speedup prunes against it.",
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

    onnx = commands.add_parser(
        "export-onnx",
        help="export a model to ONNX (checked against PyTorch in ONNX Runtime)",
        description="Export a compact (or dense) model directory to ONNX with hf_l0.export_onnx; the file is written "
        "only if ONNX Runtime reproduces PyTorch's outputs.",
    )
    onnx.add_argument("model", help="a directory saved by hf-l0 (or any transformers checkpoint directory)")
    onnx.add_argument("output", help="the .onnx file to write")
    onnx.add_argument("--quantize", default=None, help="e.g. int8: ONNX Runtime dynamic quantization")
    onnx.add_argument("--gguf-file", default=None, help="GGUF file inside MODEL, for GGUF checkpoints")
    onnx.add_argument("--auto-class", default=None, help="transformers class to load (default: the saved one)")
    onnx.set_defaults(handler=_export_onnx)

    gguf = commands.add_parser(
        "export-gguf",
        help="export a Llama-family causal LM to GGUF for llama.cpp",
        description="Write a compact (or dense) Llama-family causal LM to GGUF (architecture deci: per-layer shapes) "
        "with hf_l0.export_gguf.",
    )
    gguf.add_argument("model", help="a directory saved by hf-l0, or hf_l0:smollm2")
    gguf.add_argument("output", help="the .gguf file to write")
    gguf.add_argument("--dtype", default="f32", help="f32, f16, or a quantization type export_gguf supports")
    gguf.add_argument("--gguf-file", default=None, help="GGUF file inside MODEL, for GGUF checkpoints")
    gguf.add_argument("--tokenizer-gguf", default=None, help="GGUF file whose tokenizer metadata is copied")
    gguf.set_defaults(handler=_export_gguf)

    inspect = commands.add_parser(
        "inspect",
        help="show what a saved model directory holds",
        description="Model type, export kind, parameters, per-layer structure (heads, KV heads, FFN neurons) and "
        "the model card's heatmap, read from the directory's files (nothing is loaded or run).",
    )
    inspect.add_argument("directory")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PRUNE_COMMANDS:
        return _prune(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)
