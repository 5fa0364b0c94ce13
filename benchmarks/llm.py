#!/usr/bin/env python
"""LLM: SmolLM2-135M on Shakespeare — validation perplexity of the dense model, of the dense model fine-tuned with the
same budget, of hf-l0 at 0.3 and 0.5 of the attention + FFN (non-embedding) parameters and of the one-shot importance
baselines at the same size, with the same token budget; generate() throughput dense vs pruned.

Every pruned model starts from the dense model and trains for the same steps on the same blocks with the same loss
(logit distillation from the dense model + LM loss): hf-l0 learns which heads / neurons / sublayers to remove while
it trains (`L0Trainer`); each baseline (``--methods``: magnitude, fisher, activation; ``hf_l0.pruning.baselines``)
removes the heads (KV groups) and neurons of lowest importance, scored on the first training batches, down to the
parameter count hf-l0 reached, then trains. The reference is the dense model fine-tuned for the same steps on the same
blocks with the LM loss alone (distillation from itself would only pull it back to where it starts): what the budget
buys with no pruning. Settings, and the best baseline, are chosen on the ``selection`` split (whole plays held out from
training); the reported perplexity is the ``validation`` split's (the last two plays). Goal: hf-l0's perplexity at
most 0.8 x the best baseline's at every target.

Every run (dense evaluation, dense fine-tuning, each method x target) writes its own file under
``<output_dir>/llm/runs/`` as soon as it ends (generate() throughput is measured in the same process, alternating
with the dense model); a run whose file exists with the same settings is skipped (``--overwrite`` reruns it) and the
aggregate ``llm.{json,md,png}`` (``llm-s<steps>.*`` for a budget other than 60 steps) is rebuilt from every run
file of its budget present (``--collect`` only aggregates).

    python benchmarks/llm.py --targets 0.3 --threads 1   # one target per process; see benchmarks/README.md
    python benchmarks/llm.py --quick --output_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
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
    RunStore,
    add_method_arguments,
    add_run_store_arguments,
    aggregate_run,
    baseline_prune,
    benchmark_parser,
    goal,
    hf_l0_trainer,
    markdown_table,
    parse_methods,
    provenance_summary,
    record_trajectory,
    recover,
    run_name,
    set_threads,
    trainable_copy,
    training_arguments,
)
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.demo.evaluation import perplexity  # noqa: E402  (the main job's evaluation)
from hf_l0.demo.gguf import drop_gguf_quantizer  # noqa: E402
from hf_l0.demo.scripting import resolve_model_path  # noqa: E402

PERPLEXITY_GOAL = 0.8  # hf-l0 perplexity <= 0.8 x the best baseline's
DEFAULT_TARGETS = (0.3, 0.5)
DEFAULT_STEPS = 60
OTHER_BUDGETS = (300,)  # the longer budget whose aggregate the README reads too (llm-s300.*)


def aggregate_name(steps: int, quick: bool = False) -> str:
    """``llm`` for the default budget (and the quick run), ``llm-s<steps>`` for another: one aggregate per budget."""
    return "llm" if steps == DEFAULT_STEPS or quick else f"llm-s{steps}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random Llama, a few blocks and steps")
    p.add_argument(
        "--targets",
        "--target_sparsity",
        dest="targets",
        type=float,
        nargs="+",
        default=None,
        help=f"default: {list(DEFAULT_TARGETS)} (--quick: 0.5)",
    )
    p.add_argument(
        "--max_steps",
        type=int,
        default=DEFAULT_STEPS,
        help="optimizer steps of each pruning, baseline and dense fine-tuning run (60: ~11 min per hf-l0 run on 1 "
        "thread); a budget other than 60 gets an aggregate of its own, llm-s<steps>.{json,md,png}",
    )
    p.add_argument("--no_dense_finetune", action="store_true", help="skip the dense fine-tuned reference")
    add_run_store_arguments(p)
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
    p.add_argument(
        "--width_multiple",
        type=int,
        default=1,
        help="hf-l0 keeps every width a multiple of this (L0Config.width_multiple; 32: GGUF quantization blocks)",
    )
    p.add_argument(
        "--save_models",
        type=Path,
        default=None,
        help="also save each hf-l0 compact model (hf_l0.save_pretrained) under this directory, by run name",
    )
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
    blocks = {split: text_blocks(tokenizer, raw[split], count, args.block_size) for split, count in needed.items()}
    return model.eval(), tokenizer, blocks


def text_blocks(tokenizer: Any, lines: Any, count: int, block_size: int) -> Any:
    """The first ``count`` blocks of ``block_size`` tokens of a ``text`` dataset (run_clm's grouping, 1,000 lines at
    a time). Only a prefix that surely holds enough blocks is tokenized (~10 tokens per line); the first blocks are
    the same for every ``count`` that fits, so other benchmarks (gguf_llamacpp.py) read the same held-out blocks."""
    prefix = lines.select(range(min(len(lines), count * block_size // 4 + 100)))
    tokenized = prefix.map(
        lambda b: tokenizer(b["text"], return_token_type_ids=False), batched=True, remove_columns=["text"]
    )
    grouped = tokenized.map(data.group_texts, batched=True, batch_size=1000, fn_kwargs={"block_size": block_size})
    if len(grouped) < count:
        raise ValueError(f"only {len(grouped)} blocks of {block_size} tokens in {len(lines)} lines, {count} needed.")
    return grouped.select(range(count))


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


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per target of an aggregate: hf-l0's validation perplexity ÷ the best baseline's (chosen on the selection
    split), against :data:`PERPLEXITY_GOAL`."""
    by = {(r["method"], r["target"]): r for r in results["runs"]}
    rows = []
    for target in results["targets"]:
        l0 = by.get(("hf-l0", target))
        present = [m for m in BASELINES if (m, target) in by]
        if l0 is None or not present:
            continue
        best = min(present, key=lambda m: by[(m, target)]["selection_perplexity"])
        ratio = l0["perplexity"] / by[(best, target)]["perplexity"]
        rows.append(
            {
                "target": target,
                "sparsity": l0["sparsity"],
                "perplexity": l0["perplexity"],
                "best_baseline": best,
                "best_baseline_perplexity": by[(best, target)]["perplexity"],
                "ratio": ratio,
                "goal": PERPLEXITY_GOAL,
                "met": ratio <= PERPLEXITY_GOAL,
            }
        )
    return rows


def table(results: dict[str, Any]) -> str:
    b = results["budget"]
    head = (
        f"**LLM** — {results['model']} on Shakespeare (validation = the last two plays, {b['eval_tokens']:,} "
        f"tokens); each trained model (pruned, and the dense reference) trained {b['max_steps']} steps × "
        f"{b['batch_size']} × {b['block_size']} = {b['train_tokens']:,} tokens (lr {b['learning_rate']}; pruned "
        f"models distil from the dense model, α {b['distill_alpha']}; the dense reference uses the LM loss alone). "
        "Best baseline: lowest selection perplexity."
    )
    if b.get("recovery_ratio"):
        search = b["max_steps"] - round(b["recovery_ratio"] * b["max_steps"])
        head += (
            f" hf-l0 searches {search} steps, then trains the fixed architecture (recovery ratio "
            f"{b['recovery_ratio']})."
        )
    for c in results["comparisons"]:
        head += (
            f" At {c['target']:g}: hf-l0 ÷ best baseline ({c['best_baseline']}) perplexity {c['ratio']:.3f} "
            f"(goal ≤ {PERPLEXITY_GOAL}) {goal(c['met'])}."
        )
    keys = ("sparsity", "parameters", "selection_perplexity", "perplexity", "tokens_per_second")
    models = [("dense", results["dense"]), ("dense fine-tuned", results.get("dense_finetuned"))]
    models += [(f"{r['method']} @ {r['target']:g}", r) for r in results["runs"]]
    rows = [
        [label, *(r.get(k) for k in keys), r.get("dense_tokens_per_second"), r.get("train_seconds")]
        for label, r in models
        if r
    ]
    lines = markdown_table(
        [
            "model",
            "attention+FFN sparsity",
            "parameters",
            "selection perplexity",
            "val perplexity",
            "generate tokens/s",
            "dense tokens/s (same rounds)",
            "train s",
        ],
        rows,
    )
    commands = "; ".join(f"`{c}`" for c in results["run_commands"])
    return (
        f"{head}\n\n{lines}\n\nBuilt from {results['run_count']} run files (`llm/runs/*.json`, each with its own "
        f"provenance), {results['run_seconds'] / 3600:.1f} h of compute, commits {', '.join(results['run_commits'])}: "
        f"{commands}."
    )


def plot(results: dict[str, Any], path: Path) -> None:
    methods = [m for m in ("hf-l0", *BASELINES) if any(r["method"] == m for r in results["runs"])]
    by = {(r["method"], r["target"]): r for r in results["runs"]}
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        xs = [j + i * width for j, t in enumerate(results["targets"]) if (method, t) in by]
        ys = [by[(method, t)]["perplexity"] for t in results["targets"] if (method, t) in by]
        ax.bar(xs, ys, width, label=method, color=f"C{i}")
    ax.axhline(results["dense"]["perplexity"], color="gray", linestyle=":", label="dense")
    if results.get("dense_finetuned"):
        ax.axhline(results["dense_finetuned"]["perplexity"], color="k", linestyle="--", label="dense fine-tuned")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results["targets"]))])
    ax.set_xticklabels([f"sparsity {t:g}" for t in results["targets"]])
    ax.set_yscale("log")
    ax.set_ylabel("validation perplexity (log)")
    ax.set_title(f"{results['model']} on Shakespeare, {results['budget']['train_tokens']:,} training tokens per run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class Context:
    """What every run of one invocation shares: the blocks, the dense model, the prompt, the store."""

    args: argparse.Namespace
    store: RunStore
    dense: torch.nn.Module
    blocks: dict
    prompt: dict[str, torch.Tensor]
    work: Path
    prunable: float | None = None
    tokenizer: Any = None

    def settings(self, method: str, target: float | None) -> dict[str, Any]:
        a = self.args
        shared = {
            "quick": a.quick,
            "seed": a.seed,
            "method": method,
            "target": target,
            "steps": a.max_steps,
            "batch_size": a.batch_size,
            "block_size": a.block_size,
            "learning_rate": a.learning_rate,
            "eval_blocks": a.eval_blocks,
            "selection_blocks": a.selection_blocks or a.eval_blocks,
        }
        if method == "dense_finetuned":
            return shared
        shared.update(distill_alpha=a.distill_alpha, distill_temperature=a.distill_temperature)
        if method == "hf-l0":
            return {
                **shared,
                "gate_learning_rate": a.gate_learning_rate,
                "gate_init": a.gate_init,
                "gate_init_batches": a.gate_init_batches,
                "gate_init_scale": a.gate_init_scale,
                **({"width_multiple": a.width_multiple} if a.width_multiple > 1 else {}),
                **({"recovery_ratio": a.recovery_ratio} if a.recovery_ratio else {}),
            }
        return {**shared, "calibration_batches": a.calibration_batches}

    def trainer_arguments(self, name: str) -> dict[str, Any]:
        a = self.args
        return training_arguments(
            self.work / name,
            per_device_train_batch_size=a.batch_size,
            max_steps=a.max_steps,
            seed=a.seed,
            learning_rate=a.learning_rate,
            warmup_steps=0.1 * a.max_steps,
            logging_steps=10,
        )

    def perplexities(self, model: torch.nn.Module) -> dict[str, float]:
        return {
            "selection_perplexity": perplexity(model, self.blocks["selection"]),
            "perplexity": perplexity(model, self.blocks["validation"]),
        }

    def throughput(self, model: torch.nn.Module) -> dict[str, float]:
        """generate() tokens/s of ``model`` and of the dense model, alternating in the same rounds."""
        a = self.args
        speed = generate_throughput(
            {"dense": self.dense, "model": model}, self.prompt, a.new_tokens, a.generate_repeats
        )
        return {"tokens_per_second": speed["model"], "dense_tokens_per_second": speed["dense"]}

    def finish(self, name: str, settings: dict[str, Any], result: dict[str, Any], started: datetime) -> dict:
        print(f"{name}:", {k: v for k, v in result.items() if k != "trajectory"}, flush=True)
        return self.store.write(name, settings, result, started)


def run_dense(ctx: Context) -> dict[str, Any]:
    settings = {k: v for k, v in ctx.settings("dense", None).items() if k not in ("steps", "learning_rate")}
    done = ctx.store.finished("dense", settings, ctx.args.overwrite)
    if done:
        return done
    started = datetime.now(timezone.utc)
    result = {"method": "dense", "sparsity": 0.0, "parameters": ctx.dense.num_parameters()}
    return ctx.finish("dense", settings, {**result, **ctx.perplexities(ctx.dense)}, started)


def run_dense_finetuned(ctx: Context) -> dict[str, Any]:
    """The dense model trained with the same budget and LM loss (no distillation): the quality reference."""
    name, settings = run_name("dense_finetuned", None, ctx.args.max_steps), ctx.settings("dense_finetuned", None)
    done = ctx.store.finished(name, settings, ctx.args.overwrite)
    if done:
        return done
    tf.set_seed(ctx.args.seed)
    started, start = datetime.now(timezone.utc), time.perf_counter()
    model = trainable_copy(ctx.dense)
    tf.Trainer(
        model=model,
        args=tf.TrainingArguments(**ctx.trainer_arguments(name)),
        train_dataset=ctx.blocks["train"],
        data_collator=default_data_collator,
    ).train()
    model.eval()
    result = {
        "method": "dense_finetuned",
        "steps": ctx.args.max_steps,
        "sparsity": 0.0,
        "parameters": model.num_parameters(),
        **ctx.perplexities(model),
        "train_seconds": time.perf_counter() - start,
        **ctx.throughput(model),
    }
    return ctx.finish(name, settings, result, started)


def run_hf_l0(ctx: Context, target: float) -> dict[str, Any]:
    a, name = ctx.args, run_name("hf-l0", target, ctx.args.max_steps)
    settings = ctx.settings("hf-l0", target)
    done = ctx.store.finished(name, settings, a.overwrite)
    if done:
        return done
    started, start = datetime.now(timezone.utc), time.perf_counter()
    l0_config = {"l0_config": {"width_multiple": a.width_multiple}} if a.width_multiple > 1 else {}
    trainer = hf_l0_trainer(
        a,
        ctx.trainer_arguments(name),
        ctx.dense,
        ctx.blocks["train"],
        default_data_collator,
        target_sparsity=target,
        **l0_config,
    )
    trainer.train()
    compact = trainer.compact_model().eval()
    if a.save_models is not None:
        hf_l0.save_pretrained(compact, a.save_models / name, ctx.tokenizer)
    result = {
        "method": "hf-l0",
        "target": target,
        "steps": a.max_steps,
        "sparsity": float(hf_l0.deterministic_sparsity(trainer.model)),
        "parameters": compact.num_parameters(),
        **ctx.perplexities(compact),
        "train_seconds": time.perf_counter() - start,
        **record_trajectory(trainer, ctx.store.root, name),
    }
    del trainer  # frees the gated copy and its optimizer state
    return ctx.finish(name, settings, {**result, **ctx.throughput(compact)}, started)


def run_baseline(ctx: Context, method: str, target: float) -> dict[str, Any]:
    """``method`` cut to the size hf-l0 reached at ``target``, then recovered with hf-l0's budget: the same blocks,
    steps, learning rate, schedule, seed and distillation from the same teacher."""
    a, name = ctx.args, run_name(method, target, ctx.args.max_steps)
    l0 = ctx.store.get(run_name("hf-l0", target, a.max_steps))
    if l0 is None:
        raise SystemExit(f"{method} at {target:g} is cut to hf-l0's size: run hf-l0 at {target:g} first.")
    settings = {**ctx.settings(method, target), "size_of": [l0["name"], l0["sparsity"]]}
    done = ctx.store.finished(name, settings, a.overwrite)
    if done:
        return done
    if ctx.prunable is None:
        ctx.prunable = float(hf_l0.full_size(hf_l0.patch_model(copy.deepcopy(ctx.dense), hf_l0.L0Config())).prunable)
    size = a.calibration_batches * a.batch_size
    batches = [
        default_data_collator([ctx.blocks["train"][j] for j in range(i, min(i + a.batch_size, size))])
        for i in range(0, min(size, len(ctx.blocks["train"])), a.batch_size)
    ]
    tf.set_seed(a.seed)
    started, start = datetime.now(timezone.utc), time.perf_counter()
    baseline, scoring_seconds = baseline_prune(method, ctx.dense, l0["sparsity"], batches)
    one_shot = perplexity(baseline.eval(), ctx.blocks["selection"])
    recover(
        baseline.train(),
        ctx.dense,
        ctx.blocks["train"],
        default_data_collator,
        ctx.trainer_arguments(name),
        alpha=a.distill_alpha,
        temperature=a.distill_temperature,
    )
    result = {
        "method": method,
        "target": target,
        "steps": a.max_steps,
        "sparsity": (ctx.dense.num_parameters() - baseline.num_parameters()) / ctx.prunable,
        "parameters": baseline.num_parameters(),
        **ctx.perplexities(baseline.eval()),
        "one_shot_selection_perplexity": one_shot,
        "scoring_seconds": scoring_seconds,
        "train_seconds": time.perf_counter() - start,
        **ctx.throughput(baseline),
    }
    return ctx.finish(name, settings, result, started)


def collect(args: argparse.Namespace, run: Run) -> dict[str, Any] | None:
    """Rebuild ``llm.{json,md,png}`` (or, for another budget than the default, ``llm-s<steps>.*``) from the run
    files of ``--max_steps`` present."""
    store = RunStore(run)
    run = copy.copy(run)  # the same invocation, written under its budget's name
    run.name = aggregate_name(args.max_steps, args.quick)
    records = [r for r in store.records() if r["settings"]["quick"] == args.quick]
    dense = next((r for r in records if r["name"] == "dense"), None)
    runs = [r for r in records if r.get("target") is not None and r["steps"] == args.max_steps]
    if dense is None or not runs:
        print(f"nothing to aggregate yet under {store.runs_dir}", flush=True)
        return None
    finetuned = store.get(run_name("dense_finetuned", None, args.max_steps))
    settings = next((r["settings"] for r in runs if r["method"] == "hf-l0"), runs[0]["settings"])
    steps, batch, block = settings["steps"], settings["batch_size"], settings["block_size"]
    order = ("hf-l0", *BASELINES)
    results: dict[str, Any] = {
        "format": 2,
        "model": "tiny random Llama (quick)" if args.quick else "SmolLM2-135M",
        "targets": sorted({r["target"] for r in runs}),
        "budget": {
            "max_steps": steps,
            "batch_size": batch,
            "block_size": block,
            "train_tokens": steps * batch * block,
            "eval_tokens": settings["eval_blocks"] * block,
            **{k: settings.get(k) for k in ("learning_rate", "gate_learning_rate", "distill_alpha")},
            **{
                k: settings.get(k) for k in ("distill_temperature", "gate_init", "gate_init_batches", "gate_init_scale")
            },
            "recovery_ratio": settings.get("recovery_ratio", 0),  # recorded only when set (older runs: none)
        },
        "dense": aggregate_run(dense),
        "dense_finetuned": finetuned and aggregate_run(finetuned),
        "runs": sorted((aggregate_run(r) for r in runs), key=lambda r: (r["target"], order.index(r["method"]))),
        "generate": {
            "batch_size": 1,
            "new_tokens": args.new_tokens,
            "repeats": args.generate_repeats,
            "greedy": True,
            "use_cache": True,
            "paired_with_dense": True,
        },
        **provenance_summary([dense, *runs, *([finetuned] if finetuned else [])]),
    }
    results["comparisons"] = comparisons(results)
    plot(results, run.path(".png"))
    return run.write(results, table(results))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    methods = parse_methods(args.methods)
    set_threads(args.threads)
    if args.quick:
        args.max_steps, args.batch_size, args.block_size, args.eval_blocks = 2, 2, 32, 4
        args.new_tokens, args.generate_repeats, args.calibration_batches = 4, 1, 2
        args.targets = args.targets or [0.5]
    args.targets = args.targets or list(DEFAULT_TARGETS)
    run = Run("llm", args.seed, args.quick, args.output_dir)
    if args.collect:
        return collect(args, run)
    tf.set_seed(args.seed)
    dense, tokenizer, blocks = load(args)
    prompt = {
        k: v[:1, : args.block_size // 2]
        for k, v in default_data_collator([blocks["validation"][0]]).items()
        if k != "labels"
    }
    work = Path(tempfile.mkdtemp(prefix="hf_l0_bench_llm_"))
    ctx = Context(args, RunStore(run), dense, blocks, prompt, work, tokenizer=tokenizer)
    run_dense(ctx)
    if not args.no_dense_finetune:
        run_dense_finetuned(ctx)
    for target in args.targets:
        if "hf-l0" in methods:
            run_hf_l0(ctx, target)
        for method in (m for m in methods if m in BASELINES):
            run_baseline(ctx, method, target)
    return collect(args, run)


if __name__ == "__main__":
    main()
