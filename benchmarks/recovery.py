#!/usr/bin/env python
"""Search, then recover: hf-l0 against importance pruning at equal compute, with the noise measured.

MiniLM on rotten_tomatoes, with the accuracy benchmark's splits and dense teacher (``accuracy_sparsity.py --stage
dense`` trains it into the shared store; this script does so too when it is missing). Every run starts from the
teacher and spends ``--steps`` optimizer steps with the same distillation loss, batch, learning rate and schedule:

* ``hf-l0``: `L0Trainer`, once per ``--variants`` entry: settings of `L0TrainingArguments` on top of the
  benchmark's (``recovery_ratio=0.7``, ``recovery_ratio=0.7,gate_learning_rate=1``, ...; ``default`` adds none). The
  mask its gates froze at (or, without a recovery stage, ended at) is recorded in the run file.
* ``fisher`` / ``magnitude`` / ``activation``: one-shot importance pruning to the target, then the same steps of
  distillation (the baselines of ``accuracy_sparsity.py``).
* ``mask`` (``--mask_of VARIANT``, the mask-quality diagnostic): the mask that hf-l0 run (same target, steps and seed)
  found, cut from the *dense* weights and recovered exactly as the baselines are: the quality of the search alone,
  against the baselines' masks.

Runs repeat over ``--seeds`` (the training seed: data order, gate sampling, dropout). Settings are chosen on
validation accuracy only; each run records which test examples it got right, so the aggregate reports mean ± std
over seeds and the paired difference against the best baseline on the same test examples (pooled over seeds, with
its standard error over examples).

    python benchmarks/recovery.py --targets 0.75 --variants recovery_ratio=0 recovery_ratio=0.5 --methods hf-l0
    python benchmarks/recovery.py --targets 0.75 0.9 --seeds 0 1 2 --variants recovery_ratio=0.5 --methods hf-l0,fisher
    python benchmarks/recovery.py --targets 0.75 0.9 --methods mask --mask_of recovery_ratio=0.5
    python benchmarks/recovery.py --quick --output_dir /tmp/bench      # seconds, tiny random BERT
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from transformers import DataCollatorWithPadding  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks import accuracy_sparsity  # noqa: E402
from benchmarks.common import (  # noqa: E402
    BASELINES,
    Run,
    RunStore,
    baseline_prune,
    goal,
    hf_l0_trainer,
    markdown_table,
    provenance_summary,
    recover,
    set_threads,
    training_arguments,
)
from hf_l0.demo.evaluation import classifier_logits  # noqa: E402
from hf_l0.pruning.baselines import set_gates_to_masks  # noqa: E402

NAME = "recovery"
# hf-l0's mean test accuracy minus the best baseline's, in points, per (target, steps): the goals of the comparison
MARGIN_GOALS = {(0.75, 300): 1.0, (0.9, 300): 1.0, (0.75, 1000): 1.0, (0.5, 300): -0.3, (0.6, 300): -0.3}
LANDING_TOLERANCE = 0.005


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = accuracy_sparsity.build_parser()
    p.description = __doc__
    p.add_argument(
        "--steps", type=int, nargs="+", default=None, help="optimizer steps per run (default: --prune_steps)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every run")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        help="hf-l0 settings, each 'key=value[,key=value]' of L0TrainingArguments, or 'default'",
    )
    p.add_argument("--mask_of", default=None, help="the hf-l0 variant whose masks the 'mask' method recovers")
    args = p.parse_args(argv)
    if args.quick:
        args.prune_steps, args.dense_epochs = max(1, args.prune_steps // 50), 0.25
        args.targets = args.targets or [0.75]
        args.calibration_examples = min(args.calibration_examples, 16)
    args.targets = args.targets or [0.75, 0.9]
    args.steps = [max(1, s // 50) for s in args.steps] if args.quick and args.steps else args.steps
    args.steps = args.steps or [args.prune_steps]
    return args


def parse_variant(text: str) -> dict[str, Any]:
    """``'recovery_ratio=0.7,gate_learning_rate=1'`` -> ``{'recovery_ratio': 0.7, 'gate_learning_rate': 1.0}``, checked
    against `L0TrainingArguments`' fields (typed as they are). A comma starts a new setting only before ``key=``, so a
    value may hold commas: ``'l0_structures=heads,ffn,layers'``."""
    if text == "default":
        return {}
    fields = hf_l0.L0TrainingArguments.__dataclass_fields__
    settings: dict[str, Any] = {}
    for item in re.split(r",(?=\w+=)", text):
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--variants {text!r}: {item!r} is not key=value of an L0TrainingArguments field.")
        default = fields[key].default
        if isinstance(default, bool):
            settings[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int) and not isinstance(default, bool):
            settings[key] = int(value)
        elif isinstance(default, float):
            try:
                settings[key] = float(value)
            except ValueError:
                raise SystemExit(f"--variants {text!r}: {key} takes a number, not {value!r}.") from None
        elif default is None:
            settings[key] = float(value) if value.replace(".", "", 1).replace("-", "", 1).isdigit() else value
        else:
            settings[key] = value
    return settings


def variant_slug(text: str) -> str:
    return "default" if text == "default" else text.replace("=", "").replace(",", "+").replace("_", "")


def run_name(method: str, target: float, steps: int, seed: int, variant: str | None = None) -> str:
    label = method if variant is None else f"{method}-{variant_slug(variant)}"
    return f"{label}-t{target:g}-s{steps}-seed{seed}"


class Bench:
    """One invocation: data, teacher, the store of finished runs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = Run(NAME, args.seed, args.quick, args.output_dir)
        self.store = RunStore(self.run)
        # The teacher: accuracy_sparsity's dense stage (same data, settings and seed), recorded in this store and
        # saved under <models_dir>/recovery/dense, so this benchmark never replaces the other's teacher.
        models_dir = Path(args.models_dir or Path(args.output_dir) / "models") / NAME
        model, self.tokenizer, self.splits = accuracy_sparsity.load_model_and_data(args)
        self.dense, self.dense_record = accuracy_sparsity.dense_stage(
            args, self.store, models_dir, model, self.splits, self.tokenizer
        )
        self.collator = DataCollatorWithPadding(self.tokenizer)
        self.work = Path(tempfile.mkdtemp(prefix="hf_l0_bench_recovery_"))
        self.batches: list[dict[str, torch.Tensor]] | None = None

    def settings(self, method: str, target: float, steps: int, seed: int, **extra: Any) -> dict[str, Any]:
        a = self.args
        return {
            "quick": a.quick,
            "method": method,
            "target": target,
            "steps": steps,
            "seed": seed,
            "teacher": accuracy_sparsity.teacher_key(self.dense_record),
            "batch_size": a.batch_size,
            "max_length": a.max_length,
            "learning_rate": a.learning_rate,
            "distill_alpha": a.distill_alpha,
            "distill_temperature": a.distill_temperature,
            **extra,
        }

    def trainer_arguments(self, name: str, steps: int, seed: int) -> dict[str, Any]:
        a = self.args
        return training_arguments(
            self.work / name,
            max_steps=steps,
            learning_rate=a.learning_rate,
            per_device_train_batch_size=a.batch_size,
            seed=seed,
            warmup_steps=0.1 * steps,
        )

    def scores(self, model: torch.nn.Module) -> dict[str, Any]:
        """Validation and test accuracy, and which test examples the model got right (for paired differences)."""
        out: dict[str, Any] = {}
        for split in ("validation", "test"):
            logits, labels = classifier_logits(model, self.splits[split], self.collator)
            correct = logits.argmax(-1) == labels
            out[f"{split}_accuracy"] = float(correct.mean())
            if split == "test":
                out["test_correct"] = "".join("1" if c else "0" for c in correct)
        return out

    def hf_l0(self, target: float, steps: int, seed: int, variant: str) -> dict[str, Any]:
        a, name = self.args, run_name("hf_l0", target, steps, seed, variant)
        overrides = parse_variant(variant)
        settings = self.settings(
            "hf_l0",
            target,
            steps,
            seed,
            variant=variant,
            l0_structures=a.l0_structures,
            sparsity_warmup_ratio=a.sparsity_warmup_ratio,
            sparsity_final_phase_ratio=a.sparsity_final_phase_ratio,
            gate_learning_rate=a.gate_learning_rate,
            distill_layerwise=a.distill_layerwise,
            gate_init=a.gate_init,
            **({"recovery_ratio": a.recovery_ratio} if a.recovery_ratio else {}),  # a variant's own one wins
        )
        done = self.store.finished(name, settings, a.overwrite)
        if done:
            return done
        started, start = datetime.now(timezone.utc), time.perf_counter()
        l0_arguments = dict(
            target_sparsity=target,
            sparsity_warmup_ratio=a.sparsity_warmup_ratio,
            sparsity_final_phase_ratio=a.sparsity_final_phase_ratio,
            distill_layerwise=a.distill_layerwise,
            l0_structures=a.l0_structures,
        )
        l0_arguments.update(overrides)
        seeded = copy.copy(a)
        seeded.seed = seed
        trainer = hf_l0_trainer(
            seeded,
            self.trainer_arguments(name, steps, seed),
            self.dense,
            self.splits["train"],
            self.collator,
            processing_class=self.tokenizer,
            **l0_arguments,
        )
        trainer.train()
        gates = hf_l0.get_gates(trainer.model)
        masks = {k: (v != 0).int().tolist() for k, v in gates.deterministic().items() if k in ("heads", "ffn")}
        compact = trainer.compact_model()
        result = {
            "method": "hf_l0",
            "variant": variant,
            "target": target,
            "steps": steps,
            "seed": seed,
            "sparsity": float(hf_l0.deterministic_sparsity(trainer.model)),
            "parameters": compact.num_parameters(),
            "frozen_step": int(trainer.controller.frozen_step),
            **self.scores(compact),
            "masks": masks,
            "train_seconds": time.perf_counter() - start,
        }
        print({k: v for k, v in result.items() if k not in ("masks", "test_correct")}, flush=True)
        return self.store.write(name, settings, result, started)

    def baseline(self, method: str, target: float, steps: int, seed: int) -> dict[str, Any]:
        """A baseline's mask (``method``'s one-shot scores) or, for ``mask``, the mask the ``--mask_of`` hf-l0 run
        found, cut from the dense weights and recovered with the shared budget and loss."""
        a = self.args
        source = None
        if method == "mask":
            if a.mask_of is None:
                raise SystemExit("the 'mask' method needs --mask_of VARIANT (the hf-l0 run whose masks it recovers).")
            source = self.store.get(run_name("hf_l0", target, steps, seed, a.mask_of))
            if source is None:
                raise SystemExit(
                    f"mask of {a.mask_of} at {target:g}, {steps} steps, seed {seed}: run that hf-l0 first."
                )
        name = run_name(method, target, steps, seed, a.mask_of if method == "mask" else None)
        extra = {"mask_of": [source["name"], source["provenance"]["started_utc"]]} if source else {}
        settings = self.settings(method, target, steps, seed, **extra)
        done = self.store.finished(name, settings, a.overwrite)
        if done:
            return done
        tf.set_seed(seed)
        started, start = datetime.now(timezone.utc), time.perf_counter()
        if source is None:
            if self.batches is None:
                self.batches = accuracy_sparsity.calibration_batches(a, self.splits["train"], self.collator)
            model, _ = baseline_prune(method, self.dense, target, self.batches)
        else:
            model = copy.deepcopy(self.dense).train().requires_grad_(True)
            hf_l0.patch_model(model, hf_l0.L0Config(heads=True, ffn=True, layers=False, hidden=False))
            set_gates_to_masks(model, {k: torch.tensor(v, dtype=torch.bool) for k, v in source["masks"].items()})
            model = hf_l0.prune_model(model.eval()).train()
        patched = hf_l0.patch_model(copy.deepcopy(self.dense), hf_l0.L0Config(heads=True, ffn=True))
        prunable = float(hf_l0.full_size(patched).prunable)
        sparsity = (self.dense.num_parameters() - model.num_parameters()) / prunable
        recover(
            model.train(),
            self.dense,
            self.splits["train"],
            self.collator,
            self.trainer_arguments(name, steps, seed),
            alpha=a.distill_alpha,
            temperature=a.distill_temperature,
        )
        result = {
            "method": method,
            "variant": a.mask_of if method == "mask" else None,
            "target": target,
            "steps": steps,
            "seed": seed,
            "sparsity": sparsity,
            "parameters": model.num_parameters(),
            **self.scores(model),
            "train_seconds": time.perf_counter() - start,
        }
        print({k: v for k, v in result.items() if k != "test_correct"}, flush=True)
        return self.store.write(name, settings, result, started)


# --- aggregate -----------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[float, float, int] | None:
    """Mean difference in test correctness (points) of ``a`` over ``b`` on the same examples, pooled over the seeds
    both have, with its standard error over examples; None without a common seed."""
    by_seed = {r["seed"]: r for r in b}
    diffs = [
        np.frombuffer(r["test_correct"].encode(), dtype=np.uint8).astype(float)
        - np.frombuffer(by_seed[r["seed"]]["test_correct"].encode(), dtype=np.uint8).astype(float)
        for r in a
        if r["seed"] in by_seed
    ]
    if not diffs:
        return None
    d = np.concatenate(diffs)
    return 100 * float(d.mean()), 100 * float(d.std(ddof=1) / math.sqrt(len(d))), len(diffs)


def best_by_validation(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The group of highest mean validation accuracy among those run with the most seeds: a lever tried on one seed
    is not compared against settings whose mean covers three."""
    most = max((len(g["seeds"]) for g in groups), default=0)
    return max((g for g in groups if len(g["seeds"]) == most), key=lambda g: g["validation_accuracy"], default=None)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Groups of runs by (method, variant, target, steps): mean ± std over seeds; the chosen hf-l0 variant and the
    best baseline per (target, steps), both by mean validation accuracy among the groups with the most seeds (see
    `best_by_validation`); their difference and paired difference."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r.get("variant"), r["target"], r["steps"]), []).append(r)
    rows = []
    for (method, variant, target, steps), runs in sorted(groups.items(), key=lambda kv: (kv[0][2:], kv[0][:2])):
        val, val_std = mean_std([r["validation_accuracy"] for r in runs])
        test, test_std = mean_std([r["test_accuracy"] for r in runs])
        rows.append(
            {
                "method": method,
                "variant": variant,
                "target": target,
                "steps": steps,
                "seeds": sorted(r["seed"] for r in runs),
                "validation_accuracy": val,
                "validation_std": val_std,
                "test_accuracy": test,
                "test_std": test_std,
                "sparsity": statistics.fmean(r["sparsity"] for r in runs),
                "max_landing_error": max(abs(r["sparsity"] - target) for r in runs),
            }
        )
    comparisons = []
    for target, steps in sorted({(r["target"], r["steps"]) for r in rows}):
        here = [r for r in rows if (r["target"], r["steps"]) == (target, steps)]
        l0 = best_by_validation([r for r in here if r["method"] == "hf_l0"])
        base = best_by_validation([r for r in here if r["method"] in BASELINES])
        if l0 is None or base is None:
            continue
        pair = paired(*(groups[(r["method"], r["variant"], target, steps)] for r in (l0, base)))
        margin = 100 * (l0["test_accuracy"] - base["test_accuracy"])
        need = MARGIN_GOALS.get((target, steps))
        comparisons.append(
            {
                "target": target,
                "steps": steps,
                "variant": l0["variant"],
                "best_baseline": base["method"],
                "hf_l0_test": [l0["test_accuracy"], l0["test_std"], len(l0["seeds"])],
                "baseline_test": [base["test_accuracy"], base["test_std"], len(base["seeds"])],
                "margin_points": margin,
                "paired_points": None if pair is None else list(pair),
                "margin_goal": need,
                "margin_met": None if need is None else margin >= need,
                "landing_met": l0["max_landing_error"] <= LANDING_TOLERANCE,
            }
        )
    return {"groups": rows, "comparisons": comparisons}


def table(summary: dict[str, Any]) -> str:
    def label(r: dict[str, Any]) -> str:
        if r["method"] == "hf_l0":
            return f"hf-l0 {r['variant']}"
        return f"mask of hf-l0 {r['variant']}" if r["method"] == "mask" else r["method"]

    rows = [
        [
            f"{r['target']:g}",
            r["steps"],
            label(r),
            len(r["seeds"]),
            f"{r['validation_accuracy']:.4f} ± {r['validation_std']:.4f}",
            f"{r['test_accuracy']:.4f} ± {r['test_std']:.4f}",
            f"{r['sparsity']:.4f}",
        ]
        for r in summary["groups"]
    ]
    out = "**Runs** (mean ± std over seeds; settings are chosen on validation)\n\n" + markdown_table(
        ["target", "steps", "method", "seeds", "validation acc", "test acc", "sparsity"], rows
    )
    comp = []
    for c in summary["comparisons"]:
        pair = c["paired_points"]
        need = c["margin_goal"]
        comp.append(
            [
                f"{c['target']:g}",
                c["steps"],
                c["variant"],
                c["best_baseline"],
                f"{c['hf_l0_test'][0]:.4f} ± {c['hf_l0_test'][1]:.4f} ({c['hf_l0_test'][2]})",
                f"{c['baseline_test'][0]:.4f} ± {c['baseline_test'][1]:.4f} ({c['baseline_test'][2]})",
                f"{c['margin_points']:+.2f}" + ("" if need is None else f" (≥ {need:+g}) {goal(c['margin_met'])}"),
                "–" if pair is None else f"{pair[0]:+.2f} ± {pair[1]:.2f} ({pair[2]} seeds)",
                goal(c["landing_met"]),
            ]
        )
    out += "\n\n**hf-l0 (variant of highest validation accuracy) vs the best baseline**\n\n" + markdown_table(
        [
            "target",
            "steps",
            "hf-l0 variant",
            "best baseline",
            "hf-l0 test (seeds)",
            "baseline test (seeds)",
            "difference, points (goal)",
            "paired difference ± s.e., points",
            f"landing ± {LANDING_TOLERANCE}",
        ],
        comp,
    )
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    default = hf_l0.L0TrainingArguments.__dataclass_fields__["recovery_ratio"].default
    # the split alone: variants that set nothing but recovery_ratio ('default' is the library's ratio)
    hf = [
        r
        for r in summary["groups"]
        if r["method"] == "hf_l0" and set(parse_variant(r["variant"])) <= {"recovery_ratio"}
    ]
    for target, steps in sorted({(r["target"], r["steps"]) for r in hf}):
        points = sorted(
            (parse_variant(r["variant"]).get("recovery_ratio", default), r["validation_accuracy"], r["validation_std"])
            for r in hf
            if (r["target"], r["steps"]) == (target, steps)
        )
        ax.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            [p[2] for p in points],
            marker="o",
            capsize=3,
            label=f"hf-l0, target {target:g}, {steps} steps",
        )
    for r in summary["groups"]:
        if r["method"] in BASELINES:
            ax.axhline(r["validation_accuracy"], linestyle="--", linewidth=0.8, color="gray")
    ax.set_xlabel("recovery ratio (fraction of the steps after the freeze)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Search, then recover (dashed: baselines)")
    ax.grid(alpha=0.3)
    if hf:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect(args: argparse.Namespace, run: Run) -> dict[str, Any] | None:
    store = RunStore(run)
    records = [r for r in store.records() if r["settings"]["quick"] == args.quick and r["name"] != "dense"]
    records = accuracy_sparsity.runs_of_the_teacher(store, records)
    if not records:
        print(f"nothing to aggregate yet under {store.runs_dir}", flush=True)
        return None
    summary = summarize(records)
    plot(summary, run.path(".png"))
    return run.write({"format": 1, **summary, **provenance_summary(records)}, table(summary))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    set_threads(args.threads)
    methods = [m.strip().replace("hf-l0", "hf_l0") for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"hf_l0", "mask", *BASELINES})
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from hf-l0, mask, {', '.join(BASELINES)}.")
    for variant in args.variants:
        parse_variant(variant)  # refuse a bad variant before loading anything
    run = Run(NAME, args.seed, args.quick, args.output_dir)
    if args.collect:
        return collect(args, run)
    bench = Bench(args)
    for steps in args.steps:
        for target in args.targets:
            for seed in args.seeds:
                if "hf_l0" in methods:
                    for variant in args.variants:
                        bench.hf_l0(target, steps, seed, variant)
                for method in [m for m in methods if m != "hf_l0"]:
                    bench.baseline(method, target, steps, seed)
    return collect(args, run)


if __name__ == "__main__":
    main()
