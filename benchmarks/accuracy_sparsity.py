#!/usr/bin/env python
"""Accuracy vs sparsity: MiniLM on rotten_tomatoes, hf-l0 (with distillation) against one-shot importance pruning.

1. Dense fine-tuning of the packaged MiniLM (the teacher and the starting point of every pruned model).
2. Per target: `L0Trainer` prunes the dense model to the target (logit distillation from the teacher); its compact
   model is saved under ``<models_dir>/hf_l0-<target>`` (read by ``speed.py``).
3. Per target and baseline (``--methods``): the heads and FFN neurons of lowest importance go from the dense model
   (``hf_l0.baselines``: weight magnitude; Fisher on calibration examples of the training split; mean activation
   (Minitron) on the same examples), down to the parameter count hf-l0 reached (the target without hf-l0), then the
   model fine-tunes with hf-l0's recovery budget: the same distillation loss, teacher, steps, schedule and seed.

Test accuracy (the split of ``hf_l0.demo.data.rotten_tomatoes``, as the main job) is reported; validation accuracy is
recorded alongside, and nothing is chosen on the test split.

    python benchmarks/accuracy_sparsity.py                    # ~30 min on 2 CPU cores
    python benchmarks/accuracy_sparsity.py --quick --output_dir /tmp/bench   # seconds, tiny random BERT
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402

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
from hf_l0.demo.evaluation import evaluate_classifier  # noqa: E402
from hf_l0.trainer import L0Trainer, L0TrainingArguments  # noqa: E402

GOALS = {0.6: 0.99, 0.75: 0.97, 0.9: 0.94}  # fraction of dense test accuracy to keep
LABELS = {
    "hf_l0": "hf-l0 (L0 + distillation)",
    "magnitude": "structured magnitude + distillation",
    "fisher": "Fisher importance + distillation",
    "activation": "activation importance + distillation",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random BERT, a handful of examples and steps")
    p.add_argument("--models_dir", default=None, help="compact models (default: <output_dir>/models, git-ignored)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.75, 0.9])
    p.add_argument(
        "--dense_model",
        default=None,
        help="reuse a dense fine-tuned model (e.g. <models_dir>/dense of an earlier run) instead of stage 1",
    )
    p.add_argument("--dense_epochs", type=float, default=1.0)
    p.add_argument("--dense_learning_rate", type=float, default=1e-4)
    p.add_argument("--prune_steps", type=int, default=100, help="optimizer steps of every pruning / baseline run")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="weights' rate in pruning and baseline runs")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument(
        "--gate_learning_rate",
        type=float,
        default=None,
        help="hf-l0 gates' log_alpha rate (default: the library's, 25 / sparsity warm-up steps)",
    )
    p.add_argument("--sparsity_warmup_ratio", type=float, default=0.5, help="see L0TrainingArguments")
    p.add_argument("--sparsity_final_phase_ratio", type=float, default=0.1, help="see L0TrainingArguments")
    p.add_argument("--distill_layerwise", action="store_true", help="hf-l0 adds CoFi's layerwise loss")
    p.add_argument("--distill_alpha", type=float, default=0.9)
    p.add_argument("--distill_temperature", type=float, default=2.0)
    add_method_arguments(p)
    p.add_argument(
        "--calibration_examples",
        type=int,
        default=512,
        help="training examples the fisher / activation baselines score on",
    )
    p.add_argument("--calibration_batch_size", type=int, default=8)
    p.add_argument("--calibration_seed", type=int, default=0, help="shuffle of the training split they come from")
    return p.parse_args(argv)


def load_model_and_data(args: argparse.Namespace) -> tuple[tf.PreTrainedModel, Any, dict]:
    """The MiniLM (or, with --quick, a tiny random BERT with MiniLM's tokenizer) and the tokenized splits."""
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    raw = data.rotten_tomatoes()
    torch.manual_seed(args.seed)
    if args.quick:
        raw = {
            "train": raw["train"].select(range(64)),
            "validation": raw["validation"].select(range(32)),
            "test": raw["test"].select(range(32)),
        }
        config = tf.BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=2,
        )
        model = tf.BertForSequenceClassification(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2)

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer(batch["text"], truncation=True, max_length=args.max_length)
        encoded["labels"] = batch["label"]
        return encoded

    splits = {name: split.map(tokenize, batched=True, remove_columns=split.column_names) for name, split in raw.items()}
    return model, tokenizer, splits


def accuracies(
    model: torch.nn.Module, splits: dict, collator: Any, names: tuple[str, ...] = ("validation", "test")
) -> dict[str, float]:
    # the main job's eval loop
    return {f"{split}_accuracy": evaluate_classifier(model, splits[split], collator)["accuracy"] for split in names}


def calibration_batches(args: argparse.Namespace, train: Any, collator: Any) -> list[dict[str, torch.Tensor]]:
    """``--calibration_examples`` training examples (shuffled with ``--calibration_seed``), collated in batches."""
    examples = train.shuffle(seed=args.calibration_seed).select(range(min(args.calibration_examples, len(train))))
    size = args.calibration_batch_size
    return [
        collator([examples[j] for j in range(i, min(i + size, len(examples)))]) for i in range(0, len(examples), size)
    ]


def trainable_copy(teacher: torch.nn.Module) -> torch.nn.Module:
    """A student initialised from the teacher (the trainers freeze the teacher in place, so re-enable grads)."""
    return copy.deepcopy(teacher).train().requires_grad_(True)


def plot(results: dict[str, Any], path: Path) -> None:
    dense = results["dense"]["test_accuracy"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("hf_l0", "o-"), ("magnitude", "s--"), ("fisher", "^--"), ("activation", "v--")):
        points = [(r["sparsity"], r["test_accuracy"]) for r in results["runs"] if r["method"] == method]
        if points:
            ax.plot([0.0] + [s for s, _ in points], [dense] + [a for _, a in points], style, label=LABELS[method])
    for target, fraction in GOALS.items():
        ax.plot([target], [fraction * dense], "k_", markersize=14)
    ax.plot([], [], "k_", label="goal (fraction of dense)")
    ax.set_xlabel("sparsity of attention + FFN parameters")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{results['model']} on rotten_tomatoes ({results['budget']['prune_steps']} steps per run)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    dense = results["dense"]["test_accuracy"]
    by = {(r["method"], r["target"]): r for r in results["runs"]}
    methods = [m for m in ("hf_l0", *BASELINES) if any(r["method"] == m for r in results["runs"])]
    baselines = [m for m in methods if m != "hf_l0"]
    rows: list[list[Any]] = [["dense", 0.0, *(dense for _ in methods), results["dense"]["parameters"], "–", "–"]]
    for target in results["targets"]:
        runs = [by[(m, target)] for m in methods]
        first = runs[0]
        row = [f"{target:g}", first["sparsity"], *(r["test_accuracy"] for r in runs), first["parameters"]]
        if "hf_l0" in methods:
            fraction = first["test_accuracy"] / dense
            need = GOALS.get(target)
            # the best baseline is picked on validation accuracy, as a user would pick it, then compared on test
            best = max(baselines, key=lambda m: by[(m, target)]["validation_accuracy"], default=None)
            row += [
                f"{fraction:.3f}" + ("" if need is None else f" (goal ≥ {need}) {goal(fraction >= need)}"),
                "–"
                if best is None
                else f"{goal(first['test_accuracy'] > by[(best, target)]['test_accuracy'])} ({best})",
            ]
        else:
            row += ["–", "–"]
        rows.append(row)
    budget = results["budget"]
    head = (
        f"**Accuracy vs sparsity** — {results['model']}, rotten_tomatoes test split ({results['test_size']} "
        f"reviews); dense fine-tuning: {budget['dense_steps'] or 'reused'} steps, then "
        f"{budget['prune_steps']} steps per pruning / baseline run (batch {budget['batch_size']}, max length "
        f"{budget['max_length']}, learning rate {budget['learning_rate']}, gate learning rate "
        f"{budget.get('gate_learning_rate') or 'the default'}). Baselines: one-shot importance pruning to hf-l0's "
        "size, then the same distillation and steps.\n\n"
    )
    names = {"hf_l0": "hf-l0", "magnitude": "magnitude", "fisher": "Fisher", "activation": "activation"}
    return head + markdown_table(
        [
            "target",
            "reached sparsity",
            *(f"{names[m]} acc" for m in methods),
            "params",
            "hf-l0 / dense",
            "hf-l0 > best baseline (by validation)",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    methods = parse_methods(args.methods)
    set_threads(args.threads)
    if args.quick:
        args.prune_steps, args.dense_epochs, args.targets = 2, 0.25, args.targets[1:2] or args.targets
        args.calibration_examples = min(args.calibration_examples, 16)
    run = Run("accuracy_sparsity", args.seed, args.quick, args.output_dir)
    models_dir = Path(args.models_dir or Path(args.output_dir) / "models")
    work = Path(tempfile.mkdtemp(prefix="hf_l0_bench_"))  # Trainer output dirs; nothing worth keeping
    tf.set_seed(args.seed)
    model, tokenizer, splits = load_model_and_data(args)
    collator = DataCollatorWithPadding(tokenizer)
    common = dict(per_device_train_batch_size=args.batch_size, seed=args.seed, warmup_steps=0.1 * args.prune_steps)

    start = time.perf_counter()
    dense_steps = None
    if args.dense_model:
        model = AutoModelForSequenceClassification.from_pretrained(args.dense_model)
    else:
        dense_trainer = tf.Trainer(
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
        )
        dense_trainer.train()
        dense_steps = dense_trainer.state.global_step
    dense = model.eval()
    results: dict[str, Any] = {
        "model": "tiny random BERT (quick)" if args.quick else "all-MiniLM-L6-v2",
        "targets": args.targets,
        "test_size": len(splits["test"]),
        "budget": {
            "dense_steps": dense_steps,
            "dense_model": args.dense_model,
            "prune_steps": args.prune_steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "learning_rate": args.learning_rate,
            "dense_learning_rate": args.dense_learning_rate,
            "gate_learning_rate": args.gate_learning_rate,
            "sparsity_warmup_ratio": args.sparsity_warmup_ratio,
            "sparsity_final_phase_ratio": args.sparsity_final_phase_ratio,
            "distill_layerwise": args.distill_layerwise,
            "distill_alpha": args.distill_alpha,
            "distill_temperature": args.distill_temperature,
            "gate_init": args.gate_init,
            "gate_init_batches": args.gate_init_batches,
            "gate_init_scale": args.gate_init_scale,
        },
        "methods": methods,
        "calibration": {
            "examples": args.calibration_examples,
            "batch_size": args.calibration_batch_size,
            "seed": args.calibration_seed,
            "split": "train",
        },
        "dense": {
            **accuracies(dense, splits, collator),
            "parameters": dense.num_parameters(),
            "train_seconds": time.perf_counter() - start,
        },
        "runs": [],
    }
    print("dense:", results["dense"], flush=True)
    if not args.dense_model:
        hf_l0.save_pretrained(dense, models_dir / "dense", tokenizer)

    prunable = float(hf_l0.full_size(hf_l0.patch_model(copy.deepcopy(dense), hf_l0.L0Config())).prunable)
    batches = calibration_batches(args, splits["train"], collator)
    for target in args.targets:
        sparsity = target
        if "hf-l0" in methods:
            tf.set_seed(args.seed)
            start = time.perf_counter()
            l0_args = L0TrainingArguments(
                **training_arguments(
                    work / f"l0-{target}",
                    max_steps=args.prune_steps,
                    learning_rate=args.learning_rate,
                    target_sparsity=target,
                    distill_alpha=args.distill_alpha,
                    distill_temperature=args.distill_temperature,
                    gate_learning_rate=args.gate_learning_rate,
                    sparsity_warmup_ratio=args.sparsity_warmup_ratio,
                    sparsity_final_phase_ratio=args.sparsity_final_phase_ratio,
                    distill_layerwise=args.distill_layerwise,
                    gate_init=args.gate_init,
                    gate_init_batches=args.gate_init_batches,
                    gate_init_scale=args.gate_init_scale,
                    **common,
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
            sparsity = float(hf_l0.deterministic_sparsity(trainer.model))
            trainer.save_model(str(models_dir / f"hf_l0-{target:g}"))  # the compact model (prune_at_end)
            results["runs"].append(
                {
                    "method": "hf_l0",
                    "target": target,
                    "sparsity": sparsity,
                    "parameters": compact.num_parameters(),
                    **accuracies(compact, splits, collator),
                    "train_seconds": time.perf_counter() - start,
                    **record_trajectory(trainer, args.output_dir, f"hf_l0-{target:g}"),
                }
            )
            print(results["runs"][-1], flush=True)

        # Each baseline starts from the same dense model and is cut to the sparsity hf-l0 reached (same size), then
        # recovers with hf-l0's budget: same teacher, distillation loss, steps, learning rate, schedule and seed.
        for method in (m for m in methods if m != "hf-l0"):
            tf.set_seed(args.seed)
            start = time.perf_counter()
            baseline, scoring_seconds = baseline_prune(method, dense, sparsity, batches)
            one_shot = accuracies(baseline.eval(), {"validation": splits["validation"]}, collator, ("validation",))
            recover(
                baseline.train(),
                dense,
                splits["train"],
                collator,
                training_arguments(
                    work / f"{method}-{target}", max_steps=args.prune_steps, learning_rate=args.learning_rate, **common
                ),
                alpha=args.distill_alpha,
                temperature=args.distill_temperature,
            )
            removed = dense.num_parameters() - baseline.num_parameters()  # heads and neurons only: all prunable
            results["runs"].append(
                {
                    "method": method,
                    "target": target,
                    "sparsity": removed / prunable,
                    "parameters": baseline.num_parameters(),
                    **accuracies(baseline, splits, collator),
                    "one_shot_validation_accuracy": one_shot["validation_accuracy"],
                    "scoring_seconds": scoring_seconds,
                    "train_seconds": time.perf_counter() - start,
                }
            )
            print(results["runs"][-1], flush=True)

    plot(results, run.path(".png"))
    return run.write(results, table(results))


if __name__ == "__main__":
    main()
