#!/usr/bin/env python
"""LLM: SmolLM2-135M on Shakespeare — validation perplexity of the dense model, of hf-l0 at 0.5 of the attention + FFN
(non-embedding) parameters and of the one-shot importance baselines at the same size, with the same token budget;
generate() throughput dense vs pruned.

Every pruned model starts from the dense model and trains for the same steps on the same blocks with the same loss
(logit distillation from the dense model + LM loss): hf-l0 learns which heads / neurons / sublayers to remove while
it trains (`L0Trainer`); each baseline (``--methods``: magnitude, fisher, activation; ``hf_l0.baselines``) removes the
heads (KV groups) and neurons of lowest importance, scored on the first training batches, down to the parameter count
hf-l0 reached, then trains. Settings are compared on the ``selection`` split (whole plays held out from training);
the reported perplexity is the ``validation`` split's (the last two plays).

    python benchmarks/llm.py                       # the committed run: 60 steps, about 30 min on 2 CPU cores
    python benchmarks/llm.py --quick --output_dir /tmp/bench
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

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks.common import (  # noqa: E402
    BASELINES,
    Run,
    add_method_arguments,
    baseline_prune,
    benchmark_parser,
    goal,
    markdown_table,
    parse_methods,
    record_trajectory,
    recover,
    set_threads,
    training_arguments,
)
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.demo.evaluation import perplexity  # noqa: E402  (the main job's evaluation)
from hf_l0.demo.gguf import drop_gguf_quantizer  # noqa: E402
from hf_l0.demo.scripting import resolve_model_path  # noqa: E402
from hf_l0.trainer import L0Trainer, L0TrainingArguments  # noqa: E402

PERPLEXITY_GOAL = 0.8  # hf-l0 perplexity <= 0.8 x the baseline's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random Llama, a few blocks and steps")
    p.add_argument("--target_sparsity", type=float, default=0.5)
    p.add_argument(
        "--max_steps",
        type=int,
        default=60,
        help="optimizer steps of each pruning run (60: about 30 min on 2 CPU cores)",
    )
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument(
        "--gate_learning_rate",
        type=float,
        default=None,
        help="hf-l0 gates' log_alpha rate (default: the library's, 25 / sparsity warm-up steps)",
    )
    p.add_argument("--distill_alpha", type=float, default=0.5)
    p.add_argument("--distill_temperature", type=float, default=1.0)
    p.add_argument("--eval_blocks", type=int, default=64, help="validation blocks for perplexity")
    p.add_argument("--new_tokens", type=int, default=64, help="tokens generated per generate() call")
    p.add_argument("--generate_repeats", type=int, default=5, help="alternating rounds of generate() per model")
    add_method_arguments(p)
    p.add_argument(
        "--calibration_batches",
        type=int,
        default=16,
        help="first training batches the fisher / activation baselines score on",
    )
    p.add_argument("--selection_blocks", type=int, default=None, help="selection blocks (default: --eval_blocks)")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[tf.PreTrainedModel, Any, dict]:
    """SmolLM2-135M (GGUF, dequantized to float32) or, with --quick, a tiny random Llama; Shakespeare blocks."""
    torch.manual_seed(args.seed)
    if args.quick:
        tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())  # any real tokenizer; loads in a second
        config = tf.LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        model = tf.LlamaForCausalLM(config)
    else:
        path, gguf_file = resolve_model_path("hf_l0:smollm2")
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        model = drop_gguf_quantizer(
            AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
        )
    raw = data.shakespeare(num_selection_plays=2)  # the train blocks used here and validation: as without it
    needed = {
        "train": args.max_steps * args.batch_size,
        "validation": args.eval_blocks,
        "selection": args.selection_blocks or args.eval_blocks,
    }
    blocks = {}
    for split, count in needed.items():
        # Tokenize only a prefix that surely holds enough blocks (~10 tokens per line), then cut exact counts.
        lines = raw[split].select(range(min(len(raw[split]), count * args.block_size // 4 + 100)))
        tokenized = lines.map(
            lambda b: tokenizer(b["text"], return_token_type_ids=False), batched=True, remove_columns=["text"]
        )
        grouped = tokenized.map(
            data.group_texts, batched=True, batch_size=1000, fn_kwargs={"block_size": args.block_size}
        )
        if len(grouped) < count:
            raise ValueError(f"only {len(grouped)} {split} blocks of {args.block_size} tokens, {count} needed.")
        blocks[split] = grouped.select(range(count))
    return model.eval(), tokenizer, blocks


def trainable_copy(teacher: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(teacher).train().requires_grad_(True)


@torch.inference_mode()
def generate_throughput(
    models: dict[str, torch.nn.Module], prompt: dict[str, torch.Tensor], new_tokens: int, repeats: int
) -> dict[str, float]:
    """Median tokens/s of greedy generate() (batch 1, exactly ``new_tokens`` new tokens per call) per model.

    The models take turns within every round, so a slow spell of this shared machine hits all of them alike."""
    # use_cache explicitly: models that went through a Trainer carry use_cache=False in their config, and without
    # the KV cache every new token recomputes the whole sequence.
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, use_cache=True)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval().generate(**prompt, **kwargs)  # warmup
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.generate(**prompt, **kwargs)
            times[name].append(time.perf_counter() - start)
    return {name: new_tokens / statistics.median(seconds) for name, seconds in times.items()}


def table(results: dict[str, Any]) -> str:
    b, runs = results["budget"], results["models"]
    head = (
        f"**LLM** — {results['model']} on Shakespeare (validation = the last two plays, {b['eval_tokens']:,} "
        f"tokens); each pruned model trained {b['max_steps']} steps × {b['batch_size']} × {b['block_size']} = "
        f"{b['train_tokens']:,} tokens (distillation α {b['distill_alpha']}, lr {b['learning_rate']})."
    )
    best = results.get("best_baseline")
    if best is not None:
        ratio = results["best_baseline_ratio"]
        head += (
            f" hf-l0 ÷ best baseline ({best}) perplexity: {ratio:.3f} (goal ≤ {PERPLEXITY_GOAL}) "
            f"{goal(ratio <= PERPLEXITY_GOAL)}."
        )
    rows = [
        [
            name,
            r["sparsity"],
            r["parameters"],
            r.get("selection_perplexity"),
            r["perplexity"],
            r.get("tokens_per_second"),
            r.get("train_seconds"),
        ]
        for name, r in runs.items()
    ]
    return (
        head
        + "\n\n"
        + markdown_table(
            [
                "model",
                "attention+FFN sparsity",
                "parameters",
                "selection perplexity",
                "val perplexity",
                "generate tokens/s",
                "train s",
            ],
            rows,
        )
    )


def plot(results: dict[str, Any], path: Path) -> None:
    names = list(results["models"])
    colors = ["gray", *(f"C{i}" for i in range(len(names) - 1))]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    axes[0].bar(names, [results["models"][n]["perplexity"] for n in names], color=colors)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("validation perplexity (log)")
    axes[1].bar(names, [results["models"][n].get("tokens_per_second") or 0 for n in names], color=colors)
    axes[1].set_ylabel("generate() tokens/s, batch 1")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(
        f"{results['model']} at {results['target_sparsity']:g} sparsity, "
        f"{results['budget']['train_tokens']:,} training tokens"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    methods = parse_methods(args.methods)
    set_threads(args.threads)
    if args.quick:
        args.max_steps, args.batch_size, args.block_size, args.eval_blocks = 2, 2, 32, 4
        args.new_tokens, args.generate_repeats, args.calibration_batches = 4, 1, 2
    run = Run("llm", args.seed, args.quick, args.output_dir)
    work = Path(tempfile.mkdtemp(prefix="hf_l0_bench_llm_"))
    tf.set_seed(args.seed)
    dense, tokenizer, blocks = load(args)

    def perplexities(model: torch.nn.Module) -> dict[str, float]:
        return {
            "selection_perplexity": perplexity(model, blocks["selection"]),
            "perplexity": perplexity(model, blocks["validation"]),
        }

    prompt = {
        k: v[:1, : args.block_size // 2]
        for k, v in default_data_collator([blocks["validation"][0]]).items()
        if k != "labels"
    }
    common = dict(
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        seed=args.seed,
        learning_rate=args.learning_rate,
        warmup_steps=0.1 * args.max_steps,
        logging_steps=10,
    )
    results: dict[str, Any] = {
        "model": "tiny random Llama (quick)" if args.quick else "SmolLM2-135M",
        "target_sparsity": args.target_sparsity,
        "budget": {
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "block_size": args.block_size,
            "train_tokens": args.max_steps * args.batch_size * args.block_size,
            "eval_tokens": args.eval_blocks * args.block_size,
            "learning_rate": args.learning_rate,
            "gate_learning_rate": args.gate_learning_rate,
            "distill_alpha": args.distill_alpha,
            "distill_temperature": args.distill_temperature,
            "gate_init": args.gate_init,
            "gate_init_batches": args.gate_init_batches,
            "gate_init_scale": args.gate_init_scale,
        },
        "methods": methods,
        "calibration": {
            "batches": args.calibration_batches,
            "batch_size": args.batch_size,
            "split": "train (the first blocks)",
        },
        "models": {"dense": {"sparsity": 0.0, "parameters": dense.num_parameters(), **perplexities(dense)}},
    }
    print("dense:", results["models"]["dense"], flush=True)
    compact = {"dense": dense}

    sparsity = args.target_sparsity
    if "hf-l0" in methods:
        tf.set_seed(args.seed)
        start = time.perf_counter()
        l0_args = L0TrainingArguments(
            **training_arguments(work / "l0", **common),
            target_sparsity=args.target_sparsity,
            distill_alpha=args.distill_alpha,
            distill_temperature=args.distill_temperature,
            gate_learning_rate=args.gate_learning_rate,
            gate_init=args.gate_init,
            gate_init_batches=args.gate_init_batches,
            gate_init_scale=args.gate_init_scale,
        )
        trainer = L0Trainer(
            model=trainable_copy(dense),
            args=l0_args,
            teacher_model=dense,
            train_dataset=blocks["train"],
            data_collator=default_data_collator,
        )
        trainer.train()
        sparsity = float(hf_l0.deterministic_sparsity(trainer.model))
        compact["hf-l0"] = trainer.compact_model().eval()
        results["models"]["hf-l0"] = {
            "sparsity": sparsity,
            "parameters": compact["hf-l0"].num_parameters(),
            **perplexities(compact["hf-l0"]),
            "train_seconds": time.perf_counter() - start,
            **record_trajectory(trainer, args.output_dir, "hf-l0"),
        }
        print("hf-l0:", results["models"]["hf-l0"], flush=True)
        del trainer  # frees the gated copy and its optimizer state before the baselines train

    # Each baseline is cut to the size hf-l0 reached, then recovers with hf-l0's budget: the same blocks, steps,
    # learning rate, schedule, seed and distillation from the same teacher.
    size = args.calibration_batches * args.batch_size
    batches = [
        default_data_collator([blocks["train"][j] for j in range(i, min(i + args.batch_size, size))])
        for i in range(0, min(size, len(blocks["train"])), args.batch_size)
    ]
    prunable = float(hf_l0.full_size(hf_l0.patch_model(copy.deepcopy(dense), hf_l0.L0Config())).prunable)
    for method in (m for m in methods if m in BASELINES):
        tf.set_seed(args.seed)
        start = time.perf_counter()
        baseline, scoring_seconds = baseline_prune(method, dense, sparsity, batches)
        one_shot = perplexity(baseline.eval(), blocks["selection"])
        compact[method] = recover(
            baseline.train(),
            dense,
            blocks["train"],
            default_data_collator,
            training_arguments(work / method, **common),
            alpha=args.distill_alpha,
            temperature=args.distill_temperature,
        )
        results["models"][method] = {
            "sparsity": (dense.num_parameters() - baseline.num_parameters()) / prunable,
            "parameters": baseline.num_parameters(),
            **perplexities(baseline),
            "one_shot_selection_perplexity": one_shot,
            "scoring_seconds": scoring_seconds,
            "train_seconds": time.perf_counter() - start,
        }
        print(f"{method}:", results["models"][method], flush=True)

    throughput = generate_throughput(compact, prompt, args.new_tokens, args.generate_repeats)
    for name, tokens_per_second in throughput.items():
        results["models"][name]["tokens_per_second"] = tokens_per_second
    results["generate"] = {
        "batch_size": 1,
        "prompt_tokens": prompt["input_ids"].shape[1],
        "new_tokens": args.new_tokens,
        "repeats": args.generate_repeats,
        "greedy": True,
        "use_cache": True,
    }
    models = results["models"]
    baselines = [m for m in BASELINES if m in models]
    if "hf-l0" in models and baselines:
        # The best baseline by selection perplexity: the choice among them must not look at the reported split.
        best = min(baselines, key=lambda m: models[m]["selection_perplexity"])
        results["best_baseline"] = best
        results["best_baseline_ratio"] = models["hf-l0"]["perplexity"] / models[best]["perplexity"]
        if "magnitude" in models:
            results["perplexity_ratio"] = models["hf-l0"]["perplexity"] / models["magnitude"]["perplexity"]
    plot(results, run.path(".png"))
    return run.write(results, table(results))


if __name__ == "__main__":
    main()
