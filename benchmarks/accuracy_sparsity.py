#!/usr/bin/env python
"""Accuracy vs sparsity: MiniLM on rotten_tomatoes, hf-l0 (with distillation) against one-shot importance pruning.

1. Dense fine-tuning of the packaged MiniLM (the teacher and the starting point of every pruned model).
2. Per target: `L0Trainer` prunes the dense model to the target (logit distillation from the teacher); its compact
   model is saved under ``<models_dir>/hf_l0-<target>`` (read by ``speed.py``).
3. Per target and baseline (``--methods``): the heads and FFN neurons of lowest importance go from the dense model
   (``hf_l0.pruning.baselines``: weight magnitude; Fisher on calibration examples of the training split; mean activation
   (Minitron) on the same examples), down to the parameter count hf-l0 reached (the target without hf-l0), then the
   model fine-tunes with hf-l0's recovery budget: the same distillation loss, teacher, steps, schedule and seed.

Test accuracy (the split of ``hf_l0.demo.data.rotten_tomatoes``, as the main job) is reported; validation accuracy is
recorded alongside, and nothing is chosen on the test split (the best baseline is the one of highest validation
accuracy).

Every run (dense stage, and each method x target x steps) writes its own file under
``<output_dir>/accuracy_sparsity/runs/`` as soon as it ends; a run whose file exists with the same settings is skipped
(``--overwrite`` reruns it), and the aggregate ``accuracy_sparsity.{json,md,png}`` (and, with steps-curve runs,
``accuracy_steps.{json,md,png}``) is rebuilt from every run file present, so processes with different ``--targets``
can share one store and one dense stage; ``--collect`` only aggregates. ``--steps_curve 100 300 1000`` runs hf-l0 and
the best baseline (by validation accuracy at ``--prune_steps``, where every baseline runs) at ``--curve_target``
with each budget. See benchmarks/README.md for the long runs' commands.

    python benchmarks/accuracy_sparsity.py --stage dense --threads 1     # the shared dense teacher
    python benchmarks/accuracy_sparsity.py --targets 0.5 0.6 --threads 1
    python benchmarks/accuracy_sparsity.py --quick --output_dir /tmp/bench   # seconds, tiny random BERT
"""

from __future__ import annotations

import argparse
import copy
import hashlib
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
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks.common import (  # noqa: E402
    BASELINES,
    ROOT,
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
    training_arguments,
)
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.demo.evaluation import evaluate_classifier  # noqa: E402
from hf_l0.training.trainer import L0TrainingArguments  # noqa: E402

GOALS = {0.5: 0.99, 0.6: 0.98, 0.75: 0.96, 0.9: 0.92}  # fraction of dense test accuracy to keep
# hf-l0's lead over the best baseline (by validation), in test-accuracy points: above it (> 0) at the low targets,
# by at least a point at the high ones.
MARGIN_GOALS = {0.5: 0.0, 0.6: 0.0, 0.75: 1.0, 0.9: 1.0}
LANDING_TOLERANCE = 0.005  # every hf-l0 run's reached sparsity within target ± this
DEFAULT_TARGETS = [0.5, 0.6, 0.75, 0.9]
STRUCTURES_DEFAULT = L0TrainingArguments.__dataclass_fields__["l0_structures"].default
LABELS = {
    "hf_l0": "hf-l0 (L0 + distillation)",
    "magnitude": "structured magnitude + distillation",
    "fisher": "Fisher importance + distillation",
    "activation": "activation importance + distillation",
}


def build_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (``recovery.py`` extends them: same data, teacher and budget)."""
    p = benchmark_parser(__doc__, "tiny random BERT, a handful of examples and steps")
    p.add_argument("--models_dir", default=None, help="compact models (default: <output_dir>/models, git-ignored)")
    p.add_argument("--targets", type=float, nargs="+", default=None, help=f"default: {DEFAULT_TARGETS} (--quick: 0.75)")
    p.add_argument(
        "--stage",
        choices=("all", "dense"),
        default="all",
        help="dense: only fine-tune and save the dense teacher (<models_dir>/dense), for later processes to share",
    )
    p.add_argument(
        "--steps_curve",
        type=int,
        nargs="+",
        default=None,
        help="instead of the sweep over --targets: hf-l0 and the best baseline at --curve_target with these budgets "
        "(e.g. 100 300 1000); the baselines' choice runs every baseline at --prune_steps first",
    )
    p.add_argument("--curve_target", type=float, default=0.75)
    p.add_argument(
        "--curve_baselines",
        choices=("best", "all"),
        default="best",
        help="best: only the best baseline (by validation at --prune_steps) at the other budgets; all: every one",
    )
    add_run_store_arguments(p)
    p.add_argument(
        "--dense_model",
        default=None,
        help="the dense teacher to use instead of stage 1 (default: <models_dir>/dense when its run file exists, "
        "else it is trained and saved there)",
    )
    p.add_argument("--dense_epochs", type=float, default=1.0)
    p.add_argument("--dense_learning_rate", type=float, default=1e-4)
    p.add_argument(
        "--prune_steps", type=int, default=300, help="optimizer steps of every pruning / baseline run (the main job's)"
    )
    p.add_argument(
        "--learning_rate", type=float, default=3e-5, help="weights' rate in pruning and baseline runs (the main job's)"
    )
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
    p.add_argument(
        "--l0_structures",
        default=STRUCTURES_DEFAULT,
        help=f"hf-l0's gated structures, comma-separated (default: the library's, {STRUCTURES_DEFAULT})",
    )
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
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per target of a sweep aggregate (either format: runs without ``steps`` are older single-file runs): hf-l0 ÷
    dense, the best baseline by validation accuracy and hf-l0's test-accuracy margin over it in points, the landing
    error, each against its goal. The numbers the markdown table and the README's headline rows show."""
    dense = results["dense"]["test_accuracy"]
    by = {(r["method"], r["target"]): r for r in results["runs"]}
    rows = []
    for target in results["targets"]:
        l0 = by.get(("hf_l0", target))
        if l0 is None:
            continue
        baselines = [m for m in BASELINES if (m, target) in by]
        # picked on validation accuracy, as a user would pick it, then compared on test
        best = max(baselines, key=lambda m: by[(m, target)]["validation_accuracy"], default=None)
        fraction, need = l0["test_accuracy"] / dense, GOALS.get(target)
        row: dict[str, Any] = {
            "target": target,
            "steps": l0.get("steps", results["budget"]["prune_steps"]),
            "sparsity": l0["sparsity"],
            "test_accuracy": l0["test_accuracy"],
            "fraction_of_dense": fraction,
            "fraction_goal": need,
            "fraction_met": None if need is None else fraction >= need,
            "landing_error": l0["sparsity"] - target,
            "landing_met": abs(l0["sparsity"] - target) <= LANDING_TOLERANCE,
            "baselines": baselines,
            "best_baseline": best,
        }
        if best is not None:
            margin, need = 100 * (l0["test_accuracy"] - by[(best, target)]["test_accuracy"]), MARGIN_GOALS.get(target)
            row.update(
                best_baseline_test_accuracy=by[(best, target)]["test_accuracy"],
                margin_points=margin,
                margin_goal=need,
                margin_met=None if need is None else (margin > 0 if need == 0 else margin >= need),
            )
        rows.append(row)
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    dense = results["dense"]["test_accuracy"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("hf_l0", "o-"), ("magnitude", "s--"), ("fisher", "^--"), ("activation", "v--")):
        points = sorted((r["sparsity"], r["test_accuracy"]) for r in results["runs"] if r["method"] == method)
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


NAMES = {"hf_l0": "hf-l0", "magnitude": "magnitude", "fisher": "Fisher", "activation": "activation"}


def _budget_text(budget: dict[str, Any]) -> str:
    return (
        f"batch {budget['batch_size']}, max length {budget['max_length']}, learning rate {budget['learning_rate']}, "
        f"gate learning rate {budget.get('gate_learning_rate') or 'the default'}"
    )


def runs_line(results: dict[str, Any]) -> str:
    """Where an aggregate's numbers come from: its run files' commands, commits and summed compute."""
    if "run_commands" not in results:
        return ""
    commands = "; ".join(f"`{c}`" for c in results["run_commands"])
    return (
        f"\n\nBuilt from {results['run_count']} run files (`runs/*.json`, each with its own provenance), "
        f"{results['run_seconds'] / 3600:.1f} h of compute in all, commits {', '.join(results['run_commits'])}: "
        f"{commands}."
    )


def table(results: dict[str, Any]) -> str:
    dense = results["dense"]["test_accuracy"]
    by = {(r["method"], r["target"]): r for r in results["runs"]}
    methods = [m for m in ("hf_l0", *BASELINES) if any(r["method"] == m for r in results["runs"])]
    compared = {c["target"]: c for c in comparisons(results)}
    rows: list[list[Any]] = [["dense", 0.0, *(dense for _ in methods), results["dense"]["parameters"], "–", "–", "–"]]
    for target in results["targets"]:
        first = next(by[(m, target)] for m in methods if (m, target) in by)
        row = [f"{target:g}", first["sparsity"], *(by.get((m, target), {}).get("test_accuracy") for m in methods)]
        row.append(first["parameters"])
        c = compared.get(target)
        if c is None:
            row += ["–", "–", "–"]
        else:
            need = c["fraction_goal"]
            row.append(
                f"{c['fraction_of_dense']:.3f}" + ("" if need is None else f" (≥ {need}) {goal(c['fraction_met'])}")
            )
            if c["best_baseline"] is None:
                row.append("–")
            else:
                need = c["margin_goal"]
                sign = ">" if need == 0 else "≥"
                row.append(
                    f"{NAMES[c['best_baseline']]}: {c['margin_points']:+.1f}"
                    + ("" if need is None else f" ({sign} {need:g}) {goal(c['margin_met'])}")
                )
            row.append(f"{c['landing_error']:+.4f} {goal(c['landing_met'])}")
        rows.append(row)
    budget = results["budget"]
    head = (
        f"**Accuracy vs sparsity** — {results['model']}, rotten_tomatoes test split ({results['test_size']} "
        f"reviews); dense fine-tuning: {budget['dense_steps'] or 'reused'} steps, then "
        f"{budget['prune_steps']} steps per pruning / baseline run ({_budget_text(budget)}). Baselines: one-shot "
        "importance pruning to hf-l0's size, then the same distillation and steps; the best baseline is the one of "
        "highest validation accuracy.\n\n"
    )
    return (
        head
        + markdown_table(
            [
                "target",
                "reached sparsity",
                *(f"{NAMES[m]} acc" for m in methods),
                "params",
                "hf-l0 / dense (goal)",
                "hf-l0 − best baseline, points (goal)",
                f"landing (± {LANDING_TOLERANCE})",
            ],
            rows,
        )
        + runs_line(results)
    )


# --- the steps curve ---------------------------------------------------------------------------------------------


def steps_comparisons(curve: dict[str, Any]) -> list[dict[str, Any]]:
    """Per budget of a steps-curve aggregate: hf-l0 and the chosen baseline's test accuracy, hf-l0 above it?"""
    by = {(r["method"], r["steps"]): r for r in curve["runs"]}
    rows = []
    for steps in curve["steps"]:
        l0 = by.get(("hf_l0", steps))
        best = curve["best_baseline"] or max(
            (m for m in BASELINES if (m, steps) in by),
            key=lambda m: by[(m, steps)]["validation_accuracy"],
            default=None,
        )
        if l0 is None or best is None or (best, steps) not in by:
            continue
        other = by[(best, steps)]["test_accuracy"]
        rows.append(
            {
                "steps": steps,
                "test_accuracy": l0["test_accuracy"],
                "best_baseline": best,
                "best_baseline_test_accuracy": other,
                "margin_points": 100 * (l0["test_accuracy"] - other),
                "above": l0["test_accuracy"] > other,
                "landing_error": l0["sparsity"] - curve["target"],
                "landing_met": abs(l0["sparsity"] - curve["target"]) <= LANDING_TOLERANCE,
            }
        )
    return rows


def plot_steps(curve: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("hf_l0", "o-"), ("magnitude", "s--"), ("fisher", "^--"), ("activation", "v--")):
        points = sorted((r["steps"], r["test_accuracy"]) for r in curve["runs"] if r["method"] == method)
        if points:
            ax.plot([s for s, _ in points], [a for _, a in points], style, label=LABELS[method])
    ax.axhline(curve["dense"]["test_accuracy"], color="gray", linestyle=":", label="dense")
    for fraction in sorted({GOALS.get(curve["target"])} - {None}):
        ax.axhline(
            fraction * curve["dense"]["test_accuracy"], color="k", linewidth=0.8, label="goal (fraction of dense)"
        )
    ax.set_xscale("log")
    ax.set_xticks(curve["steps"], [str(s) for s in curve["steps"]])
    ax.set_xlabel("optimizer steps per run (batch 32)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{curve['model']} at {curve['target']:g} sparsity: accuracy vs training budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table_steps(curve: dict[str, Any]) -> str:
    by = {(r["method"], r["steps"]): r for r in curve["runs"]}
    methods = [m for m in ("hf_l0", *BASELINES) if any(r["method"] == m for r in curve["runs"])]
    compared = {c["steps"]: c for c in steps_comparisons(curve)}
    rows = []
    for steps in curve["steps"]:
        runs = [by.get((m, steps)) for m in methods]
        seconds = by[("hf_l0", steps)]["train_seconds"] if ("hf_l0", steps) in by else None
        c = compared.get(steps)
        rows.append(
            [
                steps,
                *(None if r is None else f"{r['validation_accuracy']:.3f} / {r['test_accuracy']:.3f}" for r in runs),
                seconds,
                "–" if c is None else f"{c['margin_points']:+.1f} {goal(c['above'])}",
            ]
        )
    chosen = curve["best_baseline"]
    head = (
        f"**Accuracy vs steps** — {curve['model']} at {curve['target']:g} sparsity, rotten_tomatoes (dense test "
        f"accuracy {curve['dense']['test_accuracy']:.3f}; {_budget_text(curve['budget'])}; learning-rate schedule "
        "and sparsity schedule scale with the steps). "
        + (
            f"Best baseline: {NAMES[chosen]}, the highest validation accuracy at {curve['choice_steps']} steps."
            if chosen
            else "Best baseline: the highest validation accuracy at each budget."
        )
        + " Cells: validation / test accuracy.\n\n"
    )
    return (
        head
        + markdown_table(
            ["steps", *(f"{NAMES[m]} val / test" for m in methods), "hf-l0 train s", "hf-l0 − best baseline, points"],
            rows,
        )
        + runs_line(curve)
    )


# --- the runs ------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every run of one invocation shares: the data, the dense teacher, the store of finished runs."""

    args: argparse.Namespace
    store: RunStore
    tokenizer: Any
    splits: dict
    collator: Any
    dense: torch.nn.Module
    dense_record: dict[str, Any]
    models_dir: Path
    work: Path
    batches: list[dict[str, torch.Tensor]] | None = None
    prunable: float | None = None

    def settings(self, method: str, target: float, steps: int) -> dict[str, Any]:
        """What a run's result depends on; a stored run with other settings is not this run."""
        a = self.args
        shared = {
            "quick": a.quick,
            "seed": a.seed,
            "method": method,
            "target": target,
            "steps": steps,
            "teacher": teacher_key(self.dense_record),
            "batch_size": a.batch_size,
            "max_length": a.max_length,
            "learning_rate": a.learning_rate,
            "distill_alpha": a.distill_alpha,
            "distill_temperature": a.distill_temperature,
        }
        if method == "hf_l0":
            return {
                **shared,
                "gate_learning_rate": a.gate_learning_rate,
                "sparsity_warmup_ratio": a.sparsity_warmup_ratio,
                "sparsity_final_phase_ratio": a.sparsity_final_phase_ratio,
                "distill_layerwise": a.distill_layerwise,
                "l0_structures": a.l0_structures,
                "gate_init": a.gate_init,
                "gate_init_batches": a.gate_init_batches,
                "gate_init_scale": a.gate_init_scale,
                **({"recovery_ratio": a.recovery_ratio} if a.recovery_ratio else {}),
            }
        calibration = {"examples": a.calibration_examples, "batch_size": a.calibration_batch_size}
        return {**shared, "calibration": {**calibration, "seed": a.calibration_seed}}

    def trainer_arguments(self, name: str, steps: int) -> dict[str, Any]:
        a = self.args
        return training_arguments(
            self.work / name,
            max_steps=steps,
            learning_rate=a.learning_rate,
            per_device_train_batch_size=a.batch_size,
            seed=a.seed,
            warmup_steps=0.1 * steps,
        )


def dense_location(args: argparse.Namespace, models_dir: Path) -> tuple[Path, str]:
    """Where the dense teacher is (``--dense_model`` or ``<models_dir>/dense``), and how its run file names it."""
    path = Path(args.dense_model or models_dir / "dense").resolve()
    # relative to the repository when inside it: the run files are committed and must not name this machine's paths
    return path, str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def teacher_key(dense_record: dict[str, Any]) -> list[str]:
    """How a run's settings name its teacher: the model directory and the start of the dense run that trained it."""
    return [dense_record["model_path"], dense_record["provenance"]["started_utc"]]


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the state dict (names and bytes, in name order): what identifies a teacher trained again."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def runs_of_the_teacher(store: RunStore, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs distilled from the store's recorded teacher; the others (a teacher since replaced) are named and left
    out of the aggregate, never mixed into it."""
    dense = store.get("dense")
    if dense is None:
        return records
    kept = [r for r in records if r["settings"].get("teacher", teacher_key(dense)) == teacher_key(dense)]
    if len(kept) < len(records):
        stale = sorted({r["name"] for r in records} - {r["name"] for r in kept})
        print(f"left out, distilled from another teacher than {store.path('dense')}'s: {', '.join(stale)}", flush=True)
    return kept


def dense_stage(args: argparse.Namespace, store: RunStore, models_dir: Path, model: Any, splits: dict, tokenizer: Any):
    """The dense teacher and its run record: reused when ``runs/dense.json`` names the same model directory, else
    fine-tuned from ``model`` and saved to ``<models_dir>/dense`` (or, with ``--dense_model``, loaded and scored).

    Model directories are git-ignored, so a fresh checkout has the record without its teacher. The teacher is then
    trained again, and the record (which the stored runs name) stands only if the weights are the same (its
    ``weights_sha256``); other weights stop the run rather than mix runs of two teachers in one store."""
    collator = DataCollatorWithPadding(tokenizer)
    path, shown = dense_location(args, models_dir)
    record = store.get("dense")
    retrain = args.overwrite and args.stage == "dense" and not args.dense_model
    if record and record["model_path"] == shown and (path / "config.json").is_file() and not retrain:
        print(f"dense: {path} (run file {store.path('dense')}), reused", flush=True)
        return AutoModelForSequenceClassification.from_pretrained(path).eval(), record
    settings = {
        "quick": args.quick,
        "seed": args.seed,
        "dense_model": args.dense_model,
        "dense_epochs": None if args.dense_model else args.dense_epochs,
        "dense_learning_rate": None if args.dense_model else args.dense_learning_rate,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
    }
    # the stored runs' teacher, to be trained again here (not a new teacher: that takes --overwrite --stage dense)
    again = bool(record) and not retrain and not args.dense_model and record["model_path"] == shown
    ways_out = (
        "choose another --output_dir (a store of its own), or start this store over with --stage dense --overwrite."
    )
    if again and record["settings"] != settings:
        raise SystemExit(
            f"{store.path('dense')} records a dense teacher trained with {record['settings']}, not {settings}: its "
            f"runs would be mixed with runs of another teacher. Run with the recorded settings, or {ways_out}"
        )
    if again and not record.get("weights_sha256"):
        raise SystemExit(
            f"{store.path('dense')} names the teacher {shown}, which is not on this machine, and records no weights "
            f"digest to check a teacher trained again against. Copy the original to {path}, or {ways_out}"
        )
    started, start = datetime.now(timezone.utc), time.perf_counter()
    dense_steps = None
    if args.dense_model:
        model = AutoModelForSequenceClassification.from_pretrained(path)
    else:
        tf.set_seed(args.seed)
        dense_trainer = tf.Trainer(
            model=model,
            args=tf.TrainingArguments(
                **training_arguments(
                    Path(tempfile.mkdtemp(prefix="hf_l0_bench_dense_")),
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
    model.eval()
    digest = weights_digest(model)
    if again and record.get("weights_sha256") != digest:
        threads = record["provenance"]["hardware"].get("torch_threads")
        raise SystemExit(
            f"{store.path('dense')} names the teacher {shown}, which is not on this machine, and training it again "
            f"gave other weights (sha256 {digest[:12]}, recorded {str(record.get('weights_sha256'))[:12]}; it was "
            f"trained with {threads} torch threads, here {torch.get_num_threads()}): its runs would be mixed with "
            f"runs of another teacher. Copy the original to {path}, or {ways_out}"
        )
    if not args.dense_model:
        hf_l0.save_pretrained(model, path, tokenizer)
    if again:
        print(f"dense: {path} trained again, the same weights as {store.path('dense')}'s teacher", flush=True)
        return model, record
    result = {
        "method": "dense",
        "model": "tiny random BERT (quick)" if args.quick else "all-MiniLM-L6-v2",
        "model_path": shown,
        "dense_steps": dense_steps,
        **accuracies(model, splits, collator),
        "parameters": model.num_parameters(),
        "test_size": len(splits["test"]),
        "train_seconds": time.perf_counter() - start,
        "weights_sha256": digest,
    }
    record = store.write("dense", settings, result, started)
    print("dense:", {k: v for k, v in result.items() if k != "model_path"}, flush=True)
    return model, record


def run_hf_l0(ctx: Context, target: float, steps: int) -> dict[str, Any]:
    """hf-l0 at ``target`` with ``steps`` (or its stored record). The compact model of the reference budget is saved
    as ``<models_dir>/hf_l0-<target>`` (read by ``speed.py``)."""
    a, name = ctx.args, run_name("hf_l0", target, steps)
    settings = ctx.settings("hf_l0", target, steps)
    done = ctx.store.finished(name, settings, a.overwrite)
    if done:
        return done
    started, start = datetime.now(timezone.utc), time.perf_counter()
    trainer = hf_l0_trainer(
        a,
        ctx.trainer_arguments(name, steps),
        ctx.dense,
        ctx.splits["train"],
        ctx.collator,
        processing_class=ctx.tokenizer,
        target_sparsity=target,
        sparsity_warmup_ratio=a.sparsity_warmup_ratio,
        sparsity_final_phase_ratio=a.sparsity_final_phase_ratio,
        distill_layerwise=a.distill_layerwise,
        l0_structures=a.l0_structures,
    )
    trainer.train()
    compact = trainer.compact_model()
    if steps == a.prune_steps:
        trainer.save_model(str(ctx.models_dir / f"hf_l0-{target:g}"))  # the compact model (prune_at_end)
    result = {
        "method": "hf_l0",
        "target": target,
        "steps": steps,
        "sparsity": float(hf_l0.deterministic_sparsity(trainer.model)),
        "parameters": compact.num_parameters(),
        **accuracies(compact, ctx.splits, ctx.collator),
        "train_seconds": time.perf_counter() - start,
        **record_trajectory(trainer, ctx.store.root, name),
    }
    print({k: v for k, v in result.items() if k != "trajectory"}, flush=True)
    return ctx.store.write(name, settings, result, started)


def run_baseline(ctx: Context, method: str, target: float, steps: int) -> dict[str, Any]:
    """``method`` cut one-shot from the dense model to the size hf-l0 reached at ``target`` with ``steps``, then
    recovered with hf-l0's budget: same teacher, distillation loss, steps, learning rate, schedule and seed."""
    a, name = ctx.args, run_name(method, target, steps)
    l0 = ctx.store.get(run_name("hf_l0", target, steps))
    if l0 is None:
        raise SystemExit(f"{method} at {target:g}, {steps} steps is cut to hf-l0's size: run hf-l0 there first.")
    settings = {**ctx.settings(method, target, steps), "size_of": [l0["name"], l0["sparsity"]]}
    done = ctx.store.finished(name, settings, a.overwrite)
    if done:
        return done
    if ctx.batches is None:
        ctx.batches = calibration_batches(a, ctx.splits["train"], ctx.collator)
        ctx.prunable = float(hf_l0.full_size(hf_l0.patch_model(copy.deepcopy(ctx.dense), hf_l0.L0Config())).prunable)
    tf.set_seed(a.seed)
    started, start = datetime.now(timezone.utc), time.perf_counter()
    baseline, scoring_seconds = baseline_prune(method, ctx.dense, l0["sparsity"], ctx.batches)
    one_shot = accuracies(baseline.eval(), {"validation": ctx.splits["validation"]}, ctx.collator, ("validation",))
    recover(
        baseline.train(),
        ctx.dense,
        ctx.splits["train"],
        ctx.collator,
        ctx.trainer_arguments(name, steps),
        alpha=a.distill_alpha,
        temperature=a.distill_temperature,
    )
    removed = ctx.dense.num_parameters() - baseline.num_parameters()  # heads and neurons only: all prunable
    result = {
        "method": method,
        "target": target,
        "steps": steps,
        "sparsity": removed / ctx.prunable,
        "parameters": baseline.num_parameters(),
        **accuracies(baseline, ctx.splits, ctx.collator),
        "one_shot_validation_accuracy": one_shot["validation_accuracy"],
        "scoring_seconds": scoring_seconds,
        "train_seconds": time.perf_counter() - start,
    }
    print(result, flush=True)
    return ctx.store.write(name, settings, result, started)


def best_baseline(records: list[dict[str, Any]], target: float, steps: int) -> str | None:
    """The baseline of highest validation accuracy among the stored runs at ``target`` with ``steps``."""
    runs = {
        r["method"]: r for r in records if r.get("method") in BASELINES and (r["target"], r["steps"]) == (target, steps)
    }
    present = [m for m in BASELINES if m in runs]  # ties go to the first in BASELINES, as in `comparisons`
    return max(present, key=lambda m: runs[m]["validation_accuracy"], default=None)


# --- aggregates ----------------------------------------------------------------------------------------------------


def _order(run: dict[str, Any]) -> tuple:
    return run["target"], run["steps"], ("hf_l0", *BASELINES).index(run["method"])


def collect(args: argparse.Namespace, run: Run) -> dict[str, Any] | None:
    """Rebuild ``accuracy_sparsity.{json,md,png}`` (the runs with ``--prune_steps``) and, when the store holds runs
    at ``--curve_target`` with other budgets, ``accuracy_steps.{json,md,png}``, from every run file present."""
    store = RunStore(run)
    records = store.records()
    dense = next((r for r in records if r["name"] == "dense"), None)
    runs = [r for r in records if r["name"] != "dense" and r["settings"]["quick"] == args.quick]
    runs = runs_of_the_teacher(store, runs)
    if dense is None or not runs:
        print(f"nothing to aggregate yet under {store.runs_dir}", flush=True)
        return None
    l0_settings = next((r["settings"] for r in runs if r["method"] == "hf_l0"), runs[0]["settings"])
    budget = {
        "dense_steps": dense["dense_steps"],
        "dense_model": dense["settings"]["dense_model"],
        "dense_learning_rate": dense["settings"]["dense_learning_rate"],
        "prune_steps": args.prune_steps,
        **{k: l0_settings.get(k) for k in ("batch_size", "max_length", "learning_rate", "gate_learning_rate")},
        **{k: l0_settings.get(k) for k in ("sparsity_warmup_ratio", "sparsity_final_phase_ratio", "distill_layerwise")},
        **{k: l0_settings.get(k) for k in ("distill_alpha", "distill_temperature", "gate_init", "gate_init_batches")},
        "gate_init_scale": l0_settings.get("gate_init_scale"),
    }
    base = {
        "format": 2,
        "model": dense["model"],
        "test_size": dense["test_size"],
        "budget": budget,
        "dense": {k: dense[k] for k in ("validation_accuracy", "test_accuracy", "parameters", "train_seconds")},
    }
    sweep = sorted((aggregate_run(r) for r in runs if r["steps"] == args.prune_steps), key=_order)
    results = None
    if sweep:
        members = [r for r in runs if r["steps"] == args.prune_steps] + [dense]
        results = {
            **base,
            "targets": sorted({r["target"] for r in sweep}),
            "methods": [m for m in ("hf_l0", *BASELINES) if any(r["method"] == m for r in sweep)],
            "runs": sweep,
            **provenance_summary(members),
        }
        results["comparisons"] = comparisons(results)
        plot(results, run.path(".png"))
        results = run.write(results, table(results))
    curve_runs = [r for r in runs if r["target"] == args.curve_target]
    if len({r["steps"] for r in curve_runs}) > 1:
        steps_run = Run("accuracy_steps", args.seed, args.quick, args.output_dir)
        curve = {
            **base,
            "target": args.curve_target,
            "steps": sorted({r["steps"] for r in curve_runs}),
            "choice_steps": args.prune_steps,
            "best_baseline": best_baseline(curve_runs, args.curve_target, args.prune_steps),
            "runs": sorted((aggregate_run(r) for r in curve_runs), key=_order),
            **provenance_summary([*curve_runs, dense]),
        }
        curve["comparisons"] = steps_comparisons(curve)
        plot_steps(curve, steps_run.path(".png"))
        steps_run.write(curve, table_steps(curve))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    methods = [m.replace("hf-l0", "hf_l0") for m in parse_methods(args.methods)]
    set_threads(args.threads)
    if args.quick:  # steps scaled down 50× (300 -> 6), one target unless some are named
        args.prune_steps, args.dense_epochs = max(1, args.prune_steps // 50), 0.25
        args.steps_curve = args.steps_curve and [max(1, s // 50) for s in args.steps_curve]
        args.targets = args.targets or [0.75]
        args.calibration_examples = min(args.calibration_examples, 16)
    args.targets = args.targets or list(DEFAULT_TARGETS)
    run = Run("accuracy_sparsity", args.seed, args.quick, args.output_dir)
    if args.collect:
        return collect(args, run)
    store = RunStore(run)
    models_dir = Path(args.models_dir or Path(args.output_dir) / "models")
    model, tokenizer, splits = load_model_and_data(args)
    dense, dense_record = dense_stage(args, store, models_dir, model, splits, tokenizer)
    if args.stage == "dense":
        return None
    ctx = Context(
        args=args,
        store=store,
        tokenizer=tokenizer,
        splits=splits,
        collator=DataCollatorWithPadding(tokenizer),
        dense=dense,
        dense_record=dense_record,
        models_dir=models_dir,
        work=Path(tempfile.mkdtemp(prefix="hf_l0_bench_")),  # Trainer output dirs; nothing worth keeping
    )
    baselines = [m for m in methods if m != "hf_l0"]
    if args.steps_curve:
        target, reference = args.curve_target, args.prune_steps
        # The baselines' choice: every baseline at the reference budget (the sweep's runs there, when stored).
        run_hf_l0(ctx, target, reference)
        for method in baselines:
            run_baseline(ctx, method, target, reference)
        best = best_baseline(store.records(), target, reference)
        if baselines and best is None:
            raise SystemExit(f"no baseline run at {target:g} with {reference} steps to choose the best one from.")
        chosen = [m for m in (BASELINES if args.curve_baselines == "all" else [best]) if m in baselines]
        print(f"steps curve at {target:g}: best baseline by validation at {reference} steps: {best}", flush=True)
        for steps in args.steps_curve:  # --methods picks which of hf-l0 and the chosen baselines run here
            if "hf_l0" in methods:
                run_hf_l0(ctx, target, steps)
            for method in chosen:
                run_baseline(ctx, method, target, steps)
    else:
        for target in args.targets:
            if "hf_l0" in methods:
                run_hf_l0(ctx, target, args.prune_steps)
            for method in baselines:
                run_baseline(ctx, method, target, args.prune_steps)
    return collect(args, run)


if __name__ == "__main__":
    main()
