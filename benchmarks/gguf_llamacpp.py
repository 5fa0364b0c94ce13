#!/usr/bin/env python
"""llama.cpp: dense and compact SmolLM2 exported with `hf_l0.export_gguf` at f32 and quantized types — size, decode
speed, perplexity, and parity with transformers.

The dense model is SmolLM2-135M (the packaged GGUF, dequantized to float32 by transformers). The compact model is an
hf-l0 compact directory (``--compact DIR``, loaded with `hf_l0.from_pretrained`, e.g. one that `llm.py
--save_models` wrote) or, by default, the dense model magnitude-pruned (`hf_l0.pruning.baselines`: KV groups and FFN
neurons ranked by weight norm across layers) to ``--sparsity`` without training. Both are exported at every
``--dtypes`` type (tokenizer copied from the source GGUF; quantized types zero-pad widths that are not multiples of
their block, reported as ``padding``) and run in llama.cpp through llama-cpp-python:

* size: the GGUF file and its tensor bytes;
* decode: greedy tokens/s at batch 1 after a 32-token prompt (llama.cpp's default f16 KV cache), every model of every
  type taking turns round by round (medians), against the ratio of the weight bytes at the same type (decode on CPU
  is bound by reading the weights);
* perplexity: on the first ``--ppl_blocks`` held-out Shakespeare validation blocks of 128 tokens (the blocks
  `llm.py` evaluates on), from llama.cpp's logits (f32 KV cache, every position of a block, each block alone), and
  from transformers running the weights each file stores (quantized and dequantized), which separates what the
  rounding of the weights costs from llama.cpp's own arithmetic and checks the f32 number;
* parity: top-1 agreement and max |Δ logits| between llama.cpp (f32 KV cache) and the same model at f32 in
  transformers on every position of one ``--positions``-token text, for the f32 and q8_0 files.

Needs llama-cpp-python (opt-in, it compiles llama.cpp: README, Deployment).

    python benchmarks/gguf_llamacpp.py --compact DIR --threads 1   # ~11 min on 2 busy CPU cores
    python benchmarks/gguf_llamacpp.py --quick --output_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks.common import Run, benchmark_parser, goal, load_average, markdown_table, set_threads  # noqa: E402
from benchmarks.llm import text_blocks  # noqa: E402  (the held-out blocks llm.py evaluates on)
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.demo.gguf import drop_gguf_quantizer  # noqa: E402
from hf_l0.deploy.gguf_export import MATRIX_TYPES, export_gguf, read_gguf_metadata  # noqa: E402
from hf_l0.pruning.baselines import magnitude_prune  # noqa: E402

PROMPT_TOKENS = 32
BLOCK_SIZE = 128  # llm.py's --block_size
LOGIT_GOAL, SPEED_GOAL = 1e-2, 0.9  # f32 parity; compact ÷ dense decode speed ≥ 0.9 × the weight-bytes ratio
PPL_RATIO_GOAL = 0.02  # compact's quantized ÷ f32 perplexity ≤ dense's + 0.02
PPL_CHECK_GOAL = 1e-3  # llama.cpp f32 perplexity within 0.1% of transformers'
MODELS = ("dense", "compact")
PARITY_TYPES = ("f32", "q8_0")  # compared with the f32 model on every position


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random Llama; a few tokens")
    p.add_argument(
        "--compact",
        type=Path,
        default=None,
        help="an hf-l0 compact SmolLM2 directory (hf_l0.from_pretrained); default: the dense model magnitude-pruned "
        "to --sparsity",
    )
    p.add_argument("--sparsity", type=float, default=0.5, help="without --compact: KV groups and FFN neurons removed")
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["f32", "q8_0", "q4_0"],
        help=f"GGUF matrix types, f32 first (from {', '.join(MATRIX_TYPES)})",
    )
    p.add_argument("--positions", type=int, default=256, help="positions compared with transformers")
    p.add_argument(
        "--ppl_blocks", type=int, default=None, help=f"validation blocks of {BLOCK_SIZE} tokens (default 64; quick 4)"
    )
    p.add_argument("--new_tokens", type=int, default=64, help="greedy tokens per decode round")
    p.add_argument("--rounds", type=int, default=15, help="decode rounds per file, taking turns")
    args = p.parse_args(argv)
    if args.ppl_blocks is None:
        args.ppl_blocks = 4 if args.quick else 64
    if args.dtypes[0] != "f32" or len(set(args.dtypes)) != len(args.dtypes):
        p.error(f"--dtypes {' '.join(args.dtypes)}: list f32 first (the reference of the ratios), each type once.")
    unknown = [d for d in args.dtypes if d not in MATRIX_TYPES]
    if unknown:
        p.error(f"--dtypes: unknown {unknown}; choose from {', '.join(MATRIX_TYPES)}.")
    if args.compact is not None and not (args.compact / "config.json").is_file():
        p.error(f"--compact {args.compact}: no config.json there; pass a directory hf_l0.save_pretrained wrote.")
    return args


def load(args: argparse.Namespace) -> tuple[tf.PreTrainedModel, list[int], list[list[int]], Path | None]:
    """The dense model, ``--positions`` token ids of real text, ``--ppl_blocks`` validation blocks, and the GGUF
    the tokenizer comes from."""
    torch.manual_seed(args.seed)
    if args.quick:
        config = tf.LlamaConfig(
            vocab_size=512,
            hidden_size=96,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=3,
            intermediate_size=96,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (args.positions,), generator=generator)
        blocks = torch.randint(0, config.vocab_size, (args.ppl_blocks, BLOCK_SIZE), generator=generator)
        return tf.LlamaForCausalLM(config).eval(), ids.tolist(), blocks.tolist(), None
    source = assets.smollm2_gguf()
    tokenizer = tf.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = drop_gguf_quantizer(
        tf.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    )
    validation = data.shakespeare(num_selection_plays=2)["validation"]  # llm.py's split (validation as without it)
    ids = tokenizer("\n".join(validation["text"][:400]))["input_ids"][: args.positions]
    if len(ids) < args.positions:
        raise ValueError(f"the text has {len(ids)} tokens, {args.positions} needed.")
    blocks = text_blocks(tokenizer, validation, args.ppl_blocks, BLOCK_SIZE)["input_ids"]
    return model.eval(), ids, [list(b) for b in blocks], source


def model_name(args: argparse.Namespace) -> str:
    return "tiny-llama" if args.quick else "SmolLM2-135M-Instruct"


def dense_source(source: Path | None) -> dict[str, str] | None:
    """The GGUF the dense model comes from and its llama.cpp file type (its weights are that type dequantized)."""
    if source is None:
        return None
    import gguf

    file_type = read_gguf_metadata(source, "general.file_type")["general.file_type"][0]
    return {"file": source.name, "file_type": gguf.LlamaFileType(file_type).name}


def load_compact(args: argparse.Namespace, dense: tf.PreTrainedModel) -> tuple[torch.nn.Module, str]:
    """The compact model (``--compact`` or the magnitude-pruned dense model) and a description of it."""
    if args.compact is None:
        return magnitude_prune(copy.deepcopy(dense), args.sparsity).eval(), f"magnitude-pruned to {args.sparsity:.0%}"
    compact = hf_l0.from_pretrained(args.compact, dtype=torch.float32).eval()
    if compact.config.vocab_size != dense.config.vocab_size:
        raise SystemExit(
            f"--compact {args.compact}: vocabulary of {compact.config.vocab_size} tokens, the dense model has "
            f"{dense.config.vocab_size}; pass a compact model pruned from {model_name(args)}."
        )
    return compact, f"`{args.compact.name}`"


def llama(path: Path, threads: int, n_ctx: int, logits_all: bool, f32_cache: bool = False):
    """A llama.cpp context; ``f32_cache`` keeps K and V in f32 (llama.cpp's default cache is f16, which alone moves
    logits by ~0.1 over 30 layers and 256 positions)."""
    import llama_cpp

    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        verbose=False,
        **cache,
    )


def decode_round(llm, prompt: list[int], new_tokens: int) -> float:
    """Seconds for ``new_tokens`` greedy steps at batch 1 after evaluating ``prompt`` (not timed)."""
    llm.reset()
    llm.eval(prompt)
    vocab = llm.n_vocab()
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))  # the last position's logits
        llm.eval([int(logits.argmax())])
    return time.perf_counter() - start


def weight_bytes(path: Path) -> int:
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def next_token_nll(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """-log p(ids[i + 1] | ids[: i + 1]) for every position but the last, from ``logits`` (positions x vocab)."""
    logits = logits[:-1].astype(np.float64)
    peak = logits.max(-1)
    log_norm = peak + np.log(np.exp(logits - peak[:, None]).sum(-1))
    return log_norm - logits[np.arange(len(ids) - 1), ids[1:]]


def llama_cpp_perplexity(path: Path, blocks: list[list[int]], threads: int) -> float:
    """exp of the mean next-token loss over ``blocks``, each evaluated alone (f32 KV cache, logits of every
    position): the loss transformers' causal-LM loss computes, so the same number as `hf_l0.demo.evaluation`."""
    llm = llama(path, threads, n_ctx=len(blocks[0]), logits_all=True, f32_cache=True)
    losses = []
    for block in blocks:
        llm.reset()
        llm.eval(block)
        losses.append(next_token_nll(np.asarray(llm.scores[: len(block)]), block))
    del llm
    return math.exp(float(np.concatenate(losses).mean()))


@torch.no_grad()
def transformers_perplexity(model: torch.nn.Module, blocks: list[list[int]]) -> float:
    """The same perplexity from transformers' logits, block by block (the check of the llama.cpp numbers)."""
    losses = [next_token_nll(model(torch.tensor([b])).logits[0].numpy(), b) for b in blocks]
    return math.exp(float(np.concatenate(losses).mean()))


def rounded_weights(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A copy of ``model`` whose matrices (embeddings, projections, output head) hold the values the ``dtype`` file
    stores: each row zero-padded at its end to whole blocks, quantized and dequantized with gguf-py (as the export
    writes it; exact while no query heads are padded, i.e. head_dim a multiple of 32, as in SmolLM2). Run in
    transformers, it is the quantized model without llama.cpp's arithmetic (whose quantized matmuls also round the
    activations to 8 bits)."""
    import gguf

    type_name, _, block, _ = MATRIX_TYPES[dtype]
    qtype = gguf.GGMLQuantizationType[type_name]
    if qtype == gguf.GGMLQuantizationType.F32:
        return model
    model, done = copy.deepcopy(model), set()
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or id(weight) in done:
                continue
            done.add(id(weight))  # a tied output head shares the embedding: rounded once
            if qtype == gguf.GGMLQuantizationType.F16:
                weight.copy_(weight.half().float())
            else:
                rows, cols = weight.shape
                padded = np.zeros((rows, -(-cols // block) * block), dtype=np.float32)
                padded[:, :cols] = weight.detach().float().numpy()
                values = gguf.quants.dequantize(gguf.quants.quantize(padded, qtype), qtype)
                weight.copy_(torch.from_numpy(np.ascontiguousarray(values[:, :cols])))
    return model


def agreement(got: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and max |Δ logits| of ``got`` against ``reference`` (positions x vocab)."""
    return {
        "positions": len(got),
        "top1_agreement": float((got.argmax(-1) == reference.argmax(-1)).mean()),
        "max_abs_logit_diff": float(np.abs(got - reference).max()),
    }


def llama_cpp_logits(path: Path, ids: list[int], threads: int) -> np.ndarray:
    """llama.cpp's logits (f32 KV cache) at every position of ``ids``."""
    llm = llama(path, threads, n_ctx=len(ids), logits_all=True, f32_cache=True)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    del llm
    return got


def decode_speeds(files: dict[tuple[str, str], Path], prompt: list[int], args: argparse.Namespace) -> dict:
    """Seconds of every round of every file; all files take turns in every round (order reversed every other
    round), so a slow spell of the shared machine hits them alike."""
    n_ctx = PROMPT_TOKENS + args.new_tokens + 8
    llms = {key: llama(path, args.threads or 1, n_ctx, logits_all=False) for key, path in files.items()}
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in llms}
    for step in range(args.rounds + 1):  # round 0 warms up
        for key in list(llms) if step % 2 == 0 else list(llms)[::-1]:
            elapsed = decode_round(llms[key], prompt, args.new_tokens)
            if step:
                seconds[key].append(elapsed)
    del llms
    return seconds


def structure(model: torch.nn.Module) -> dict[str, list[int]]:
    """Query heads and FFN width per layer of a compact model (0: the sublayer is removed), from its structure."""
    layers = model.config.l0_structure["layers"]
    return {key: [layer[key] for layer in layers] for key in ("attention_heads", "intermediate_size")}


def stand_in_padding(layers: list) -> dict[str, int]:
    """Of the zero padding, what pads the stand-ins of removed sublayers (a zero FFN of width 1, one zero head)
    rather than kept widths."""
    return {
        "heads": sum(layer.pad_heads for layer in layers if layer.zero_attention),
        "ffn": sum(layer.pad_ffn for layer in layers if layer.zero_ffn),
    }


def comparisons(exports: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per type: compact ÷ dense decode speed (ratio of the median tokens/s; also its range over the rounds, where
    the two ran next to each other) against the weight-bytes ratio (dense ÷ compact tensor bytes), and each model's
    quantized ÷ f32 perplexity in llama.cpp (f32: the first type) with the compact ratio minus the dense ratio."""
    reference = next(iter(exports))
    rows = []
    for dtype, pair in exports.items():
        dense, compact = pair["dense"], pair["compact"]
        speedup = compact["tokens_per_s"] / dense["tokens_per_s"]
        per_round = [d / c for d, c in zip(dense["round_seconds"], compact["round_seconds"])]
        bytes_ratio = dense["weight_bytes"] / compact["weight_bytes"]
        row = {
            "dtype": dtype,
            "speedup": speedup,
            "speedup_per_round": {"min": min(per_round), "median": statistics.median(per_round), "max": max(per_round)},
            "weight_bytes_ratio": bytes_ratio,
            "speed_goal": SPEED_GOAL * bytes_ratio,
            "speed_met": speedup >= SPEED_GOAL * bytes_ratio,
        }
        if dtype != reference:
            ratios = {name: pair[name]["perplexity"] / exports[reference][name]["perplexity"] for name in MODELS}
            rounded = {
                name: pair[name]["rounded_weights_perplexity"] / pair_f32
                for name, pair_f32 in ((n, exports[reference][n]["rounded_weights_perplexity"]) for n in MODELS)
            }
            excess = ratios["compact"] - ratios["dense"]
            row.update(
                dense_perplexity_ratio=ratios["dense"],
                compact_perplexity_ratio=ratios["compact"],
                perplexity_ratio_excess=excess,
                perplexity_met=excess <= PPL_RATIO_GOAL,
                rounded_weights_perplexity_ratio=rounded,
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = args.threads or 1
    set_threads(threads)
    run = Run("gguf_llamacpp", args.seed, args.quick, args.output_dir)
    dense, ids, blocks, source = load(args)
    compact, compact_name = load_compact(args, dense)
    models = {"dense": dense, "compact": compact}
    with torch.no_grad():
        reference = {name: model(torch.tensor([ids])).logits[0].numpy() for name, model in models.items()}
    exports: dict[str, dict[str, dict[str, Any]]] = {dtype: {} for dtype in args.dtypes}
    parities: dict[str, dict[str, dict[str, float]]] = {}
    # transformers with each type's rounded weights: perplexity and top-1 agreement with the f32 model
    for dtype in args.dtypes:
        for name, model in models.items():
            start = time.perf_counter()
            rounded = rounded_weights(model, dtype)
            exports[dtype][name] = {"rounded_weights_perplexity": transformers_perplexity(rounded, blocks)}
            if dtype in PARITY_TYPES:
                with torch.no_grad():
                    logits = rounded(torch.tensor([ids])).logits[0].numpy()
                parities.setdefault(dtype, {})[name] = {
                    "rounded_weights_top1_agreement": agreement(logits, reference[name])["top1_agreement"]
                }
            del rounded
            print(
                f"transformers {name} {dtype}: {exports[dtype][name]} ({time.perf_counter() - start:.0f} s)", flush=True
            )
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for dtype in args.dtypes:
            for name, model in models.items():
                path = Path(tmp) / f"{name}-{dtype}.gguf"
                result = export_gguf(model, path, dtype=dtype, tokenizer_gguf=source)
                files[(dtype, name)] = path
                exports[dtype][name].update(
                    file_bytes=os.path.getsize(path),
                    weight_bytes=weight_bytes(path),
                    padding=result.padding,
                    padding_fraction=result.padding_weights / result.matrix_weights,
                    stand_in_padding=stand_in_padding(result.layers),
                )
                if dtype in PARITY_TYPES:
                    parities[dtype][name].update(agreement(llama_cpp_logits(path, ids, threads), reference[name]))
                start = time.perf_counter()
                exports[dtype][name]["perplexity"] = llama_cpp_perplexity(path, blocks, threads)
                print(
                    f"llama.cpp {name} {dtype}: {exports[dtype][name]} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
        load_before = load_average()
        for (dtype, name), seconds in decode_speeds(files, ids[:PROMPT_TOKENS], args).items():
            exports[dtype][name].update(
                tokens_per_s=args.new_tokens / statistics.median(seconds), round_seconds=seconds
            )
    results = {
        "model": model_name(args),
        "compact": {
            "source": str(args.compact) if args.compact else "magnitude",
            "description": compact_name,
            "sparsity": None if args.compact else args.sparsity,
            "parameters": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()},
            "structure": structure(compact),
        },
        "dense_source": dense_source(source),
        "threads": threads,
        "dtypes": args.dtypes,
        "load_average": {"before_decode": load_before, "after": load_average()},
        "parity": parities,
        "perplexity": {
            "blocks": len(blocks),
            "block_size": BLOCK_SIZE,
            "predicted_tokens": len(blocks) * (BLOCK_SIZE - 1),
            "text": "random token ids" if args.quick else "Shakespeare validation (llm.py's held-out split)",
        },
        "decode": {"new_tokens": args.new_tokens, "rounds": args.rounds, "prompt_tokens": PROMPT_TOKENS},
        "exports": exports,
        "comparisons": comparisons(exports),
    }
    return run.write(results, markdown(results, args))


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    exports, ref = results["exports"], results["dtypes"][0]
    size_rows = []
    for dtype, pair in exports.items():
        for name in MODELS:
            e = pair[name]
            pad, stand_ins = e["padding"], e["stand_in_padding"]
            size_rows.append(
                [
                    f"{dtype.upper()} {name}",
                    f"{e['file_bytes'] / 2**20:.1f}",
                    f"{e['weight_bytes'] / 2**20:.1f}",
                    f"{pad['hidden']} / {pad['heads']} / {pad['ffn']} ({e['padding_fraction']:.2%}; stand-ins: "
                    f"{stand_ins['heads']} / {stand_ins['ffn']})",
                    f"{e['tokens_per_s']:.1f}",
                    f"{e['perplexity']:.3f}",
                    f"{e['perplexity'] / exports[ref][name]['perplexity']:.4f}",
                    f"{e['rounded_weights_perplexity']:.3f}",
                ]
            )
    goals = []
    for dtype, pair in results["parity"].items():
        p, d = pair["compact"], pair["dense"]
        met = goal(p["top1_agreement"] == 1.0) if dtype == ref else ""
        goals.append(
            [
                f"{dtype.upper()} top-1 agreement, llama.cpp vs transformers f32 (compact)",
                f"{p['top1_agreement']:.1%} of {p['positions']} positions (dense vs its f32: {d['top1_agreement']:.1%}"
                f"; rounded weights in transformers: {p['rounded_weights_top1_agreement']:.1%} / "
                f"{d['rounded_weights_top1_agreement']:.1%})",
                met,
            ]
        )
        if dtype == ref:
            diff = p["max_abs_logit_diff"]
            goals.append([f"{ref.upper()} max abs logit difference (compact)", f"{diff:.2e}", goal(diff <= LOGIT_GOAL)])
    for name in MODELS:
        ours, theirs = exports[ref][name]["perplexity"], exports[ref][name]["rounded_weights_perplexity"]
        goals.append(
            [
                f"{ref.upper()} {name} perplexity, llama.cpp vs transformers",
                f"{ours:.4f} vs {theirs:.4f}",
                goal(abs(ours / theirs - 1) <= PPL_CHECK_GOAL),
            ]
        )
    for c in results["comparisons"]:
        d, r = c["dtype"].upper(), c["speedup_per_round"]
        goals.append(
            [
                f"{d} compact ÷ dense decode speed vs weight-bytes ratio",
                f"{c['speedup']:.2f}× (rounds {r['min']:.2f}–{r['max']:.2f}×) vs {c['weight_bytes_ratio']:.2f}× "
                f"(goal ≥ {c['speed_goal']:.2f}×)",
                goal(c["speed_met"]),
            ]
        )
        if "perplexity_met" in c:
            rounded = c["rounded_weights_perplexity_ratio"]
            goals.append(
                [
                    f"{d} ÷ {ref.upper()} perplexity in llama.cpp, compact vs dense",
                    f"{c['compact_perplexity_ratio']:.4f} vs {c['dense_perplexity_ratio']:.4f} "
                    f"(excess {c['perplexity_ratio_excess']:+.4f}; rounded weights in transformers: "
                    f"{rounded['compact']:.4f} vs {rounded['dense']:.4f})",
                    goal(c["perplexity_met"]),
                ]
            )
    compact, ppl, source = results["compact"], results["perplexity"], results["dense_source"]
    p = compact["parameters"]
    origin = (
        f"The dense model's f32 weights are `{source['file']}` ({source['file_type']}) dequantized: they lie on "
        "that type's grid, and so do the compact model's unless training moved them off it. "
        if source
        else ""
    )
    lines = [
        f"## llama.cpp: dense vs compact {results['model']} ({compact['description']}), GGUF `deci` at "
        f"{', '.join(d.upper() for d in results['dtypes'])}",
        "",
        markdown_table(["measure", "value", "goal"], goals),
        "",
        markdown_table(
            [
                "type, model",
                "file MiB",
                "weight MiB",
                "zero padding: hidden / heads / FFN (share of weights; stand-ins: heads / FFN)",
                "decode tokens/s",
                "perplexity (llama.cpp)",
                f"÷ {ref.upper()} perplexity",
                "perplexity, rounded weights in transformers",
            ],
            size_rows,
        ),
        "",
        f"{origin}Compact model: {p['compact']:,} parameters vs {p['dense']:,} dense; query heads per layer "
        f"{compact['structure']['attention_heads']}; FFN {compact['structure']['intermediate_size']}. "
        f"Perplexity: the first {ppl['blocks']} blocks of {ppl['block_size']} tokens of {ppl['text']} "
        f"({ppl['predicted_tokens']:,} predicted tokens), each block evaluated alone in llama.cpp with an f32 KV "
        "cache, exp of the mean next-token loss computed from its logits; the last column runs transformers with the "
        "matrices the file stores (quantized and dequantized with gguf-py), the quantized model without llama.cpp's "
        "arithmetic. Perplexity goal: r(model, type) = llama.cpp perplexity at the type ÷ llama.cpp perplexity at "
        f"{ref.upper()}, same model; met when r(compact) − r(dense) ≤ {PPL_RATIO_GOAL}. Decode: batch 1, "
        f"{args.new_tokens} greedy tokens after a {PROMPT_TOKENS}-token prompt, f16 KV cache, {results['threads']} "
        f"thread(s), all {2 * len(results['dtypes'])} files taking turns, median of {args.rounds} rounds (load "
        f"average {results['load_average']['before_decode'].split()[0]} before); speed goal: compact ÷ dense median "
        f"tokens/s ≥ {SPEED_GOAL} × dense ÷ compact tensor bytes at the same type (rounds: the range of the ratio "
        f"within a round). Parity: f32 KV cache, every position; {ref.upper()} goals: top-1 on all positions, max "
        f"|Δ logits| ≤ {LOGIT_GOAL}; no goal at the quantized types (llama.cpp's quantized matmuls also round the "
        f"activations). Perplexity check: llama.cpp's {ref.upper()} number within {PPL_CHECK_GOAL:.1%} of "
        "transformers'. Zero padding: units the quantized export adds so that rows are multiples of the 32-weight "
        "block (removed FFNs are written as a zero FFN of width 1, padded to 32).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
