#!/usr/bin/env python
"""ONNX Runtime generation: a compact SmolLM2 against the dense one, with the prefill / decode graphs and KV cache of
`hf_l0.export_onnx(..., generation=True)`.

The dense model is SmolLM2-135M (the packaged GGUF, dequantized to float32 by transformers, as ``llm.py`` loads it);
the compact one is ``--compact DIR`` (an hf-l0 compact model, e.g. one that ``llm.py --save_models`` saved) or, without
it, the dense model magnitude-pruned to ``--sparsity`` (`hf_l0.pruning.baselines`; no training). Both are exported in
fp32 for generation (each export checked by `export_onnx` itself) and run in ONNX Runtime by `OnnxGenerator`:

* tokens: ``--new_tokens`` greedy tokens after a ``--prompt_tokens``-token Shakespeare prompt (the first lines of
  `hf_l0.demo.data.shakespeare`'s validation plays) from `OnnxGenerator` and from transformers'
  ``model.generate(do_sample=False)``, for each model: identical?
* decode speed: tokens/s of the decode steps (the prompt's prefill not counted) at batch 1, in ONNX Runtime and, for
  reference, in transformers' ``generate()``; the four (model, runtime) pairs take turns round by round, medians of
  ``--rounds`` rounds after a warm-up round; an end-of-sequence token does not stop a timed round;
* weight bytes of each decode graph (its initializers: what a decode step reads), and their ratio.

Goals (✅/❌ in the markdown): the compact model's tokens are identical in ONNX Runtime and transformers; its ONNX
Runtime decode speedup over the dense model is at least 0.9 x the weight-bytes ratio (decode at batch 1 reads every
weight once per token).

    python benchmarks/onnx_generation.py --compact MODELS/hf-l0-t0.5-s60 --threads 1  # llm.py --save_models MODELS
    python benchmarks/onnx_generation.py --quick --output_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks.common import Run, benchmark_parser, goal, load_average, markdown_table, set_threads  # noqa: E402
from benchmarks.onnx_speed import op_time_rows, profile_by_op_type  # noqa: E402
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.demo.gguf import drop_gguf_quantizer  # noqa: E402
from hf_l0.deploy.onnx import OnnxGenerator, export_onnx  # noqa: E402
from hf_l0.pruning.baselines import magnitude_prune  # noqa: E402

MODELS = ("dense", "compact")
RUNTIMES = ("onnxruntime", "transformers")
SPEED_GOAL = 0.9  # ONNX Runtime decode speedup ≥ this x the weight-bytes ratio


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random Llama, magnitude-pruned; a few tokens")
    p.add_argument("--compact", default=None, help="an hf-l0 compact SmolLM2 (default: the dense one magnitude-pruned)")
    p.add_argument("--sparsity", type=float, default=0.5, help="without --compact: KV groups and FFN neurons removed")
    p.add_argument("--prompt_tokens", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=None, help="greedy tokens (default: 64; --quick: 16)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per model and runtime (default: 5; quick 2)")
    return p.parse_args(argv)


def load_dense(quick: bool, seed: int) -> tuple[tf.PreTrainedModel, Any, str]:
    """The dense model, its tokenizer and its name: SmolLM2-135M from the packaged GGUF in float32, or with --quick a
    tiny random Llama over the MiniLM tokenizer's vocabulary."""
    torch.manual_seed(seed)
    if quick:
        tokenizer = tf.AutoTokenizer.from_pretrained(assets.minilm_dir())
        config = tf.LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        return tf.LlamaForCausalLM(config).eval(), tokenizer, "tiny-llama"
    source = assets.smollm2_gguf()
    tokenizer = tf.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = drop_gguf_quantizer(
        tf.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    )
    return model.eval(), tokenizer, "SmolLM2-135M-Instruct"


def shakespeare_prompt(tokenizer: Any, length: int) -> torch.Tensor:
    """The first ``length`` tokens of the validation plays (``[1, length]``)."""
    text = "\n".join(data.shakespeare()["validation"]["text"][:200])
    ids = tokenizer(text)["input_ids"][:length]
    if len(ids) < length:
        raise ValueError(f"the prompt text has {len(ids)} tokens, {length} needed.")
    return torch.tensor([ids])


class TimedSession:
    """An ONNX Runtime session that adds up the seconds of its runs (``run_with_iobinding``, how the exporter's runner
    runs a graph) and passes everything else through."""

    def __init__(self, session: Any) -> None:
        self.session, self.seconds = session, 0.0

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.session.run_with_iobinding(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def onnx_decode_seconds(generator: OnnxGenerator, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """One greedy generation, no end-of-sequence stop: ``seconds`` from the end of the prefill graph's run to the end
    of generation, the decode graph's ``steps`` in that time (``new_tokens - 1``: the first token comes from the
    prefill), and of those seconds the ones inside the decode runner's calls (``runner_seconds``: binding the inputs
    and the KV cache, running the graph, reading the outputs) and inside ONNX Runtime's run of the graph
    (``graph_seconds``)."""
    runners = generator.exported.runners
    prefill, decode = runners["prefill"], runners["decode"]
    marks: dict[str, float] = {"runner": 0.0}
    calls = 0

    def timed_prefill(**inputs: Any) -> Any:
        out = prefill(**inputs)
        marks["prefill_end"] = time.perf_counter()
        return out

    def timed_decode(**inputs: Any) -> Any:
        nonlocal calls
        calls += 1
        start = time.perf_counter()
        out = decode(**inputs)
        marks["runner"] += time.perf_counter() - start
        return out

    eos, session = generator.eos_token_ids, decode.session
    decode.session = timed = TimedSession(session)
    runners["prefill"], runners["decode"], generator.eos_token_ids = timed_prefill, timed_decode, []
    try:
        generator.generate(prompt, torch.ones_like(prompt), max_new_tokens=new_tokens)
        end = time.perf_counter()
    finally:
        runners["prefill"], runners["decode"], generator.eos_token_ids = prefill, decode, eos
        decode.session = session
    return {
        "seconds": end - marks["prefill_end"],
        "steps": calls,
        "runner_seconds": marks["runner"],
        "graph_seconds": timed.seconds,
    }


def decode_time_by_op_type(directory: Path, threads: int, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Milliseconds per decode step in each operator type of the decode graph (ONNX Runtime's profiler, one greedy
    generation, the first decode step left out)."""
    import onnxruntime as ort

    generator = OnnxGenerator(directory, threads=threads)
    decode = generator.exported.runners["decode"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(directory / "profile-decode")
    decode.session = ort.InferenceSession(str(directory / "decode.onnx"), options, providers=["CPUExecutionProvider"])
    onnx_decode_seconds(generator, prompt, new_tokens)
    return profile_by_op_type(Path(decode.session.end_profiling()), skip_runs=1)


class DecodeClock(BaseStreamer):
    """A ``generate()`` streamer that notes when the first new token arrives (the prompt's prefill is done) and when
    generation ends, and counts the tokens after the first (the decode steps)."""

    def __init__(self) -> None:
        self.puts, self.first, self.last = 0, 0.0, 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1  # the prompt, then one token per step
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        self.last = time.perf_counter()


def transformers_decode_seconds(model: tf.PreTrainedModel, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Seconds and decode steps of ``model.generate()`` (greedy, ``new_tokens`` tokens, no end-of-sequence stop)."""
    clock = DecodeClock()
    with torch.inference_mode():
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,  # a model that went through a Trainer can carry use_cache=False
            streamer=clock,
        )
    return {"seconds": clock.last - clock.first, "steps": clock.puts - 2}


def decode_weight_bytes(directory: Path) -> int:
    """Bytes of the decode graph's initializers (weights, and the few constants the graph holds)."""
    import onnx_ir

    program = onnx_ir.load(str(directory / "decode.onnx"))
    return sum(v.const_value.nbytes for v in program.graph.initializers.values() if v.const_value is not None)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (None when identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = args.threads or 1
    set_threads(threads)
    new_tokens = args.new_tokens or (16 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 5)
    run = Run("onnx_generation", args.seed, args.quick, args.output_dir)
    dense, tokenizer, model_name = load_dense(args.quick, args.seed)
    if args.compact:
        if not (Path(args.compact) / "config.json").is_file():
            raise SystemExit(f"--compact {args.compact} holds no config.json: pass a directory hf-l0 saved.")
        compact = hf_l0.from_pretrained(args.compact).eval()
    else:
        compact = magnitude_prune(copy.deepcopy(dense), args.sparsity).eval()
    models = {"dense": dense, "compact": compact}
    prompt = shakespeare_prompt(tokenizer, args.prompt_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        exports, generators, weight_bytes, tokens = {}, {}, {}, {}
        for name, model in models.items():
            result = export_onnx(model, Path(tmp) / name, generation=True)
            exports[name] = {"check_max_abs_diff": result.max_abs_diff, "check_top1_agreement": result.top1_agreement}
            weight_bytes[name] = decode_weight_bytes(result.path)
            generators[name] = OnnxGenerator(result.path, threads=threads)
            onnx_ids = generators[name].generate(prompt, torch.ones_like(prompt), max_new_tokens=new_tokens)
            with torch.inference_mode():
                expected = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    use_cache=True,
                )
            got, want = onnx_ids[0, prompt.shape[1] :].tolist(), expected[0, prompt.shape[1] :].tolist()
            tokens[name] = {
                "identical": got == want,
                "generated": len(got),
                "first_difference": first_difference(got, want),
                "onnxruntime": got,
                "transformers": want,
                "text": tokenizer.decode(got),
            }
        # Decode speed: the four (model, runtime) pairs take turns round by round; round 0 warms up.
        timers: dict[str, Callable[[], dict[str, float]]] = {}
        for name, model in models.items():
            timers[f"{name}/onnxruntime"] = lambda g=generators[name]: onnx_decode_seconds(g, prompt, new_tokens)
            timers[f"{name}/transformers"] = lambda m=model: transformers_decode_seconds(m, prompt, new_tokens)
        timings: dict[str, list[dict[str, float]]] = {key: [] for key in timers}
        for step in range(rounds + 1):
            for key in list(timers) if step % 2 == 0 else list(timers)[::-1]:
                timing = timers[key]()
                if step:
                    timings[key].append(timing)
        del generators
        # Where a decode step's time goes in ONNX Runtime: its profiler, by operator type (one more generation).
        op_ms = {
            name: {"decode": decode_time_by_op_type(Path(tmp) / name, threads, prompt, new_tokens)} for name in MODELS
        }
    rates = {key: [t["steps"] / t["seconds"] for t in values] for key, values in timings.items()}
    steps = {key: values[-1]["steps"] for key, values in timings.items()}
    parts = {"step": "seconds", "runner": "runner_seconds", "graph": "graph_seconds"}
    per_step_ms = {  # ONNX Runtime, ms per decode step (medians over the rounds)
        name: {
            part: statistics.median(t[key] / t["steps"] * 1e3 for t in timings[f"{name}/onnxruntime"])
            for part, key in parts.items()
        }
        for name in MODELS
    }
    tps = {name: {rt: statistics.median(rates[f"{name}/{rt}"]) for rt in RUNTIMES} for name in MODELS}
    speedup = {rt: tps["compact"][rt] / tps["dense"][rt] for rt in RUNTIMES}
    bytes_ratio = weight_bytes["dense"] / weight_bytes["compact"]
    structure = compact.config.l0_structure["layers"]
    heads = [layer["attention_heads"] for layer in structure]
    ffn = [layer["intermediate_size"] for layer in structure]
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    source = f"`{Path(args.compact).name}`" if args.compact else f"magnitude-pruned to {args.sparsity:.0%}"
    goals = [
        {
            "goal": f"compact: {new_tokens} greedy tokens in ONNX Runtime identical to transformers' generate()",
            "measured": "identical"
            if tokens["compact"]["identical"]
            else f"first difference at token {tokens['compact']['first_difference']}",
            "met": tokens["compact"]["identical"],
        },
        {
            "goal": f"dense: {new_tokens} greedy tokens in ONNX Runtime identical to transformers' generate()",
            "measured": "identical"
            if tokens["dense"]["identical"]
            else f"first difference at token {tokens['dense']['first_difference']}",
            "met": tokens["dense"]["identical"],
        },
        {
            "goal": f"ONNX Runtime decode speedup compact ÷ dense ≥ {SPEED_GOAL} × weight-bytes ratio",
            "measured": f"{speedup['onnxruntime']:.2f}× vs {SPEED_GOAL} × {bytes_ratio:.2f}× "
            f"= {SPEED_GOAL * bytes_ratio:.2f}×",
            "met": speedup["onnxruntime"] >= SPEED_GOAL * bytes_ratio,
        },
    ]
    speed_rows = [[rt, tps["dense"][rt], tps["compact"][rt], speedup[rt]] for rt in RUNTIMES]

    def part_row(label: str, get: Callable[[dict[str, float]], float]) -> list[Any]:
        dense, compact = get(per_step_ms["dense"]), get(per_step_ms["compact"])
        return [label, dense, compact, dense / compact]

    step_rows = [
        part_row("decode step (wall)", lambda m: m["step"]),
        part_row("ONNX Runtime's run of the decode graph", lambda m: m["graph"]),
        part_row("runner: binding inputs and KV cache, reading outputs", lambda m: m["runner"] - m["graph"]),
        part_row("generator loop: argmax, masks, positions", lambda m: m["step"] - m["runner"]),
    ]
    markdown = "\n".join(
        [
            f"## ONNX Runtime generation: compact {model_name} ({source}) vs dense, prefill + decode graphs with a "
            "KV cache",
            "",
            markdown_table(["goal", "measured", "met"], [[g["goal"], g["measured"], goal(g["met"])] for g in goals]),
            "",
            "### Decode tokens/s (batch 1, medians)",
            "",
            markdown_table(["runtime", "dense", "compact", "compact ÷ dense"], speed_rows),
            "",
            "### Where a decode step's time goes in ONNX Runtime (ms per token, medians)",
            "",
            markdown_table(["part", "dense", "compact", "dense ÷ compact"], step_rows),
            "",
            "Inside the graph, by operator type (ONNX Runtime's profiler, one more generation, ms per decode step; "
            "the profiler adds its own overhead, so read the ratios):",
            "",
            markdown_table(["operator", "dense", "compact", "dense ÷ compact"], op_time_rows(op_ms, ("decode",))),
            "",
            f"Decode-graph weights {weight_bytes['compact'] / 2**20:.0f} MB (compact) / "
            f"{weight_bytes['dense'] / 2**20:.0f} MB (dense): ratio {bytes_ratio:.2f}×. Parameters "
            f"{params['compact']:,} / {params['dense']:,}. Compact shapes per layer: query heads {heads}; FFN {ffn}. "
            f"Greedy decode of {new_tokens} tokens after a {prompt.shape[1]}-token Shakespeare prompt, fp32, "
            f"{threads} thread(s) for ONNX Runtime and PyTorch alike; tokens/s counts the decode steps (the first "
            f"token, from the prefill, is not timed); the four (model, runtime) pairs take turns, median of {rounds} "
            f"rounds after a warm-up round. Load average at the end: {load_average().split()[0]}.",
        ]
    )
    return run.write(
        {
            "model": model_name,
            "compact_dir": str(args.compact) if args.compact else None,
            "sparsity": None if args.compact else args.sparsity,
            "threads": threads,
            "prompt_tokens": int(prompt.shape[1]),
            "new_tokens": new_tokens,
            "rounds": rounds,
            "parameters": params,
            "structure": {"attention_heads": heads, "intermediate_size": ffn},
            "exports": exports,
            "tokens": tokens,
            "decode": {
                "tokens_per_s": tps,
                "rates": rates,
                "onnxruntime_ms_per_step": per_step_ms,
                "op_time_ms_per_step": op_ms,
                "steps": steps,
                "speedup": speedup,
                "weight_bytes": weight_bytes,
                "weight_bytes_ratio": bytes_ratio,
            },
            "goals": goals,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
