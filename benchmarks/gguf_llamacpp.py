#!/usr/bin/env python
"""llama.cpp: a compact SmolLM2 exported with `hf_l0.export_gguf` against transformers, and its decode speed.

SmolLM2-135M (the packaged GGUF, dequantized to float32 by transformers) is magnitude-pruned (`hf_l0.pruning.baselines`:
KV groups and FFN neurons ranked by weight norm across layers, so layers keep different shapes) to ``--sparsity``; no
training, since agreement with the transformers compact model and speed depend on the export only. Both models are
exported to f32 GGUF (tokenizer copied from the source GGUF) and run in llama.cpp through llama-cpp-python:

* parity: top-1 token agreement and max |Δ logits| between llama.cpp (f32 weights and f32 KV cache) and
  transformers (compact model) on every position of one ``--positions``-token text;
* decode: greedy tokens/s at batch 1 after a 32-token prompt (llama.cpp's default f16 KV cache), dense and compact
  taking turns round by round (medians), against the ratio of their weight bytes (decode on CPU is bound by reading
  the weights).

Needs llama-cpp-python (opt-in, it compiles llama.cpp: README, Deployment).

    python benchmarks/gguf_llamacpp.py --threads 1                 # ~5 min on 2 CPU cores
    python benchmarks/gguf_llamacpp.py --quick --output_dir /tmp/bench
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

from benchmarks.common import Run, benchmark_parser, goal, markdown_table, set_threads  # noqa: E402
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.demo.gguf import drop_gguf_quantizer  # noqa: E402
from hf_l0.deploy.gguf_export import export_gguf  # noqa: E402
from hf_l0.pruning.baselines import magnitude_prune  # noqa: E402

PROMPT_TOKENS = 32
LOGIT_GOAL, SPEED_GOAL = 1e-2, 0.9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random Llama; a few tokens")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of KV groups and FFN neurons removed")
    p.add_argument("--positions", type=int, default=256, help="positions compared with transformers")
    p.add_argument("--new_tokens", type=int, default=64, help="greedy tokens per decode round")
    p.add_argument("--rounds", type=int, default=5, help="decode rounds per model, taking turns")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[tf.PreTrainedModel, list[int], Path | None]:
    """The dense model, ``--positions`` token ids of real text, and the GGUF its tokenizer comes from."""
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
        ids = torch.randint(0, config.vocab_size, (args.positions,), generator=torch.Generator().manual_seed(0))
        return tf.LlamaForCausalLM(config).eval(), ids.tolist(), None
    source = assets.smollm2_gguf()
    tokenizer = tf.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = drop_gguf_quantizer(
        tf.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    )
    text = "\n".join(data.shakespeare()["validation"]["text"][:400])
    ids = tokenizer(text)["input_ids"][: args.positions]
    if len(ids) < args.positions:
        raise ValueError(f"the text has {len(ids)} tokens, {args.positions} needed.")
    return model.eval(), ids, source


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = args.threads or 1
    set_threads(threads)
    run = Run("gguf_llamacpp", args.seed, args.quick, args.output_dir)
    dense, ids, source = load(args)
    compact = magnitude_prune(copy.deepcopy(dense), args.sparsity).eval()
    layers = compact.config.l0_structure["layers"]
    with torch.no_grad():
        reference = compact(torch.tensor([ids])).logits[0].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.gguf" for name in ("dense", "compact")}
        for name, model in (("dense", dense), ("compact", compact)):
            export_gguf(model, files[name], dtype="f32", tokenizer_gguf=source)
        sizes = {name: weight_bytes(path) for name, path in files.items()}
        # Parity: every position of the text, llama.cpp vs transformers (both the compact model).
        llm = llama(files["compact"], threads, n_ctx=len(ids), logits_all=True, f32_cache=True)
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float32)
        del llm
        max_diff = float(np.abs(got - reference).max())
        agreement = float((got.argmax(-1) == reference.argmax(-1)).mean())
        # Decode speed: the models take turns round by round.
        n_ctx = PROMPT_TOKENS + args.new_tokens + 8
        llms = {name: llama(path, threads, n_ctx, logits_all=False) for name, path in files.items()}
        prompt = ids[:PROMPT_TOKENS]
        seconds: dict[str, list[float]] = {name: [] for name in llms}
        for step in range(args.rounds + 1):  # round 0 warms up
            order = list(llms) if step % 2 == 0 else list(llms)[::-1]
            for name in order:
                elapsed = decode_round(llms[name], prompt, args.new_tokens)
                if step:
                    seconds[name].append(elapsed)
        del llms
    tps = {name: args.new_tokens / statistics.median(values) for name, values in seconds.items()}
    speedup, bytes_ratio = tps["compact"] / tps["dense"], sizes["dense"] / sizes["compact"]
    heads = [layer["attention_heads"] for layer in layers]
    ffn = [layer["intermediate_size"] for layer in layers]
    results = {
        "model": "tiny-llama" if args.quick else "SmolLM2-135M-Instruct",
        "sparsity": args.sparsity,
        "threads": threads,
        "structure": {"attention_heads": heads, "intermediate_size": ffn},
        "parity": {"positions": len(ids), "top1_agreement": agreement, "max_abs_logit_diff": max_diff},
        "decode": {
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "tokens_per_s": tps,
            "speedup": speedup,
            "weight_bytes": sizes,
            "weight_bytes_ratio": bytes_ratio,
        },
    }
    rows = [
        [
            "top-1 agreement, llama.cpp vs transformers (compact)",
            f"{agreement:.1%} of {len(ids)} positions",
            goal(agreement == 1.0),
        ],
        ["max abs logit difference (f32)", f"{max_diff:.2e}", goal(max_diff <= LOGIT_GOAL)],
        ["decode tokens/s dense / compact", f"{tps['dense']:.1f} / {tps['compact']:.1f}", ""],
        [
            "decode speedup vs weight-bytes ratio",
            f"{speedup:.2f}× vs {bytes_ratio:.2f}×",
            goal(speedup >= SPEED_GOAL * bytes_ratio),
        ],
    ]
    markdown = "\n".join(
        [
            f"## llama.cpp: compact {results['model']} (magnitude-pruned to {args.sparsity:.0%}), GGUF `deci` f32",
            "",
            markdown_table(["measure", "value", "goal"], rows),
            "",
            "Parity with f32 weights and an f32 KV cache (llama.cpp's default f16 cache alone moves logits by ~0.1). "
            f"Compact shapes per layer: query heads {heads}; FFN {ffn}. Weights {sizes['compact'] / 2**20:.0f} MB vs "
            f"{sizes['dense'] / 2**20:.0f} MB. Decode: batch 1, {args.new_tokens} greedy tokens after a "
            f"{PROMPT_TOKENS}-token prompt, f16 KV cache, {threads} thread(s), models taking turns, median of "
            f"{args.rounds} rounds. "
            f"Goals: top-1 on all positions, max |Δ logits| ≤ {LOGIT_GOAL}, speedup ≥ {SPEED_GOAL} × the weight-bytes "
            "ratio.",
        ]
    )
    return run.write(results, markdown)


if __name__ == "__main__":
    main()
