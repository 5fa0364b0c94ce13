#!/usr/bin/env python
"""Latency and FLOPs targets: does the compact model land on them, and is it more accurate at equal latency?

MiniLM on rotten_tomatoes, every run `L0Trainer` with one budget (``--prune_steps``, learning rate, batch, seed,
logit distillation from the dense teacher):

1. The dense teacher is ``accuracy_sparsity.py``'s dense stage (``<models_dir>/dense`` and its run file
   ``<output_dir>/accuracy_sparsity/runs/dense.json``): reused when present, fine-tuned and saved there otherwise.
2. Per batch size of ``--latency_batch_sizes`` (x ``--latency_seq_len`` tokens, ``--latency_threads`` threads): the
   dense model's latency table (``hf_l0.cost.latency.latency_table``, cached under
   ``<output_dir>/latency_targets/tables``) and one run per ``--latency_targets`` speedup S, pruned to the latency
   reduction 1 - 1/S that the table predicts (``target_speedup=S``). Its compact model is timed against the dense
one at that batch size. 3. Shared by the batch sizes: one run per ``--flops_targets`` reduction
   (``target_flops_reduction``, FLOPs per token at ``--latency_seq_len``) and per ``--param_targets`` sparsity
   (``target_sparsity``, the comparison). Their compact models are saved (``<models_dir>/latency_targets/<run>``)
   and timed at each batch size in its own run file, by whichever process runs that batch size.

Timings are medians of dense and compact taking turns forward by forward (``hf_l0.cost.measure.latency_speedup``), so
only their ratios mean something: the speedup, and the latency error measured / target - 1 where the target latency
is the dense latency measured alongside, divided by S. A target the model cannot reach (below the fixed cost's
share: ``L0Trainer`` refuses it with a ValueError) is stored as a refused run with the message, without training.

Every run writes its own file under ``<output_dir>/latency_targets/runs/`` as soon as it ends; a run whose file exists
with the same settings is skipped (``--overwrite`` reruns it), so an interrupted process restarts with the same
command, and processes with different ``--latency_batch_sizes`` fill one store (the shared runs go to whichever
process claims them first, the other times them when they are done). The aggregate ``latency_targets.{json,md,png}``
is rebuilt from the run files present; ``--collect`` only rebuilds it. Timings taken during training share the cores
with the other process: once both are done, ``--retime`` (with nothing else running) times every compact model again
and the aggregate judges those timings. See benchmarks/README.md for the long runs.

    python benchmarks/latency_targets.py --latency_batch_sizes 1 --threads 1
    python benchmarks/latency_targets.py --latency_batch_sizes 32 --threads 1
    python benchmarks/latency_targets.py --retime --threads 1    # afterwards, alone
    python benchmarks/latency_targets.py --quick --output_dir /tmp/bench   # seconds, tiny random BERT
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import DataCollatorWithPadding  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks import accuracy_sparsity  # noqa: E402
from benchmarks.accuracy_sparsity import (  # noqa: E402
    accuracies,
    dense_location,
    dense_stage,
    load_model_and_data,
    runs_line,
)
from benchmarks.common import (  # noqa: E402
    ROOT,
    Run,
    RunStore,
    add_gate_arguments,
    add_run_store_arguments,
    aggregate_run,
    benchmark_parser,
    goal,
    hf_l0_trainer,
    load_average,
    markdown_table,
    provenance_summary,
    record_trajectory,
    run_name,
    set_threads,
)
from hf_l0.cost.flops import compact_flops  # noqa: E402
from hf_l0.cost.latency import LatencyTable, latency_inputs, latency_table, predict_latency  # noqa: E402
from hf_l0.cost.measure import latency_speedup  # noqa: E402
from hf_l0.cost.targets import TARGET_FIELDS  # noqa: E402
from hf_l0.pruning.structure import apply_structure  # noqa: E402

NAME = "latency_targets"
LATENCY_TOLERANCE = 0.05  # |measured latency / target latency - 1|
FLOPS_TOLERANCE = 0.01  # |reached FLOPs / target FLOPs - 1|
SHARED = ("params", "flops")  # trained once, timed at every batch size
REFUSALS = ("cannot be reached", "is impossible")  # the ValueErrors of an unreachable target (hf_l0.cost.flops / size)
POLL_SECONDS = 30.0
# The budget and the dense stage are accuracy_sparsity's: the same teacher, and params runs comparable to its hf-l0's.
SHARED_DEFAULTS = accuracy_sparsity.parse_args([])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = SHARED_DEFAULTS
    p = benchmark_parser(__doc__, "tiny random BERT, a handful of examples and steps, batch sizes 1 and 2")
    p.add_argument(
        "--models_dir",
        default=None,
        help="the dense teacher (dense/, shared with accuracy_sparsity.py) and the compact models of the shared runs "
        "(latency_targets/<run>/); default <output_dir>/models, git-ignored",
    )
    p.add_argument(
        "--latency_targets",
        type=float,
        nargs="+",
        default=[2.0, 3.0, 5.0],
        help="speedups S over the dense model: each run targets the latency reduction 1 - 1/S, i.e. dense latency / S "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--flops_targets",
        type=float,
        nargs="*",
        default=[0.5, 0.667, 0.8],
        help="FLOPs reductions 1 - compact / dense (FLOPs per token at --latency_seq_len; default: %(default)s; none: "
        "no FLOPs runs)",
    )
    p.add_argument(
        "--param_targets",
        type=float,
        nargs="+",
        default=[0.5, 0.7, 0.85],
        help="parameter sparsities (attention + FFN), the comparison at equal measured latency (default: %(default)s)",
    )
    p.add_argument(
        "--latency_batch_sizes",
        type=int,
        nargs="+",
        default=[1, 32],
        help="batch sizes the latency targets are set (and every compact model timed) at; each its own table and "
        "runs (default: %(default)s). One process per batch size can share the store.",
    )
    p.add_argument("--latency_seq_len", type=int, default=128, help="tokens per sequence of the latency / FLOPs cost")
    p.add_argument("--latency_threads", type=int, default=1, help="torch threads of the table and of the timings")
    p.add_argument("--latency_repeats", type=int, default=5, help="timed forwards per model and round (3 rounds)")
    add_run_store_arguments(p)
    p.add_argument(
        "--retime",
        action="store_true",
        help="train nothing: time every stored compact model again against the dense teacher, at the batch size of "
        "each timing, and rebuild the aggregate from these timings. Run it when nothing else runs: the timings taken "
        "during training share the cores with the other process (they stay in the run files)",
    )
    p.add_argument("--dense_model", default=None, help="see accuracy_sparsity.py (default: its dense stage)")
    p.add_argument("--dense_epochs", type=float, default=d.dense_epochs, help="the dense stage, if it must run")
    p.add_argument("--dense_learning_rate", type=float, default=d.dense_learning_rate)
    p.add_argument("--prune_steps", type=int, default=d.prune_steps, help="optimizer steps of every run")
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument(
        "--batch_size",
        type=int,
        default=d.batch_size,
        help="training batch (the timings' batch: --latency_batch_sizes)",
    )
    p.add_argument("--max_length", type=int, default=d.max_length, help="training / evaluation truncation")
    p.add_argument("--gate_learning_rate", type=float, default=d.gate_learning_rate)
    p.add_argument("--sparsity_warmup_ratio", type=float, default=d.sparsity_warmup_ratio)
    p.add_argument("--sparsity_final_phase_ratio", type=float, default=d.sparsity_final_phase_ratio)
    p.add_argument("--distill_alpha", type=float, default=d.distill_alpha)
    p.add_argument("--distill_temperature", type=float, default=d.distill_temperature)
    p.add_argument(
        "--l0_structures",
        default="heads,ffn,layers",
        help="gated structures of every run (default heads,ffn,layers: the layer gates remove whole attention / FFN "
        "sublayers, and with them their per-sublayer dispatch time, which no head or neuron gate removes; without "
        "them a high latency target at batch 1 is often out of reach)",
    )
    add_gate_arguments(p)
    args = p.parse_args(argv)
    args.stage = "all"  # what dense_stage reads: this script never stops after the dense stage
    args.distill_layerwise = d.distill_layerwise  # accuracy_sparsity's hf-l0 run, which these runs share settings with
    for speedup in args.latency_targets:
        if speedup <= 1.0:
            p.error(f"--latency_targets {speedup:g}: a speedup over the dense model, above 1 (2 = half its latency).")
    return args


# --- the runs ------------------------------------------------------------------------------------------------------


@dataclass
class Context(accuracy_sparsity.Context):
    """What every run of one invocation shares: accuracy_sparsity's (data, dense teacher, store, the hf-l0 run's
    settings and trainer arguments) plus the latency tables."""

    tables: dict[int, LatencyTable] = field(default_factory=dict)

    def overwrite(self, name: str) -> bool:
        """``--overwrite``, except for a run another process (or this one) wrote since this process started: with
        --overwrite on every process, a shared run one of them has just rerun must not run again."""
        stored = self.store.get(name)
        fresh = stored is not None and stored["provenance"]["started_utc"] >= self.store.run.started.isoformat(
            timespec="seconds"
        )
        return self.args.overwrite and not fresh

    def run_settings(self, metric: str, target: float) -> dict[str, Any]:
        """What a training run's result depends on: accuracy_sparsity's hf-l0 run, plus the cost it targets."""
        a = self.args
        return {
            **self.settings("hf_l0", target, a.prune_steps),
            "metric": metric,
            "cost_seq_len": None if metric == "params" else a.latency_seq_len,
        }

    def timing_settings(self, batch_size: int) -> dict[str, Any]:
        a, table = self.args, self.tables[batch_size]
        return {
            "quick": a.quick,
            "latency_batch_size": batch_size,
            "latency_seq_len": a.latency_seq_len,
            "latency_threads": a.latency_threads,
            "latency_repeats": a.latency_repeats,
            # the table's file is named by its key (shape, torch, ...); its dense time tells a re-measured one apart
            "table": [Path(table.path).name, table.dense_s],
        }

    def train(self, name: str, metric: str, target: float, batch_size: int | None) -> tuple[Any, dict[str, Any]]:
        """One `L0Trainer` run to ``target`` (a reduction of ``metric``): the trainer, and what its record holds
        (``refused`` and the message when the trainer refuses the target: then nothing trains)."""
        a = self.args
        # the reduction as the setting of its metric (a latency reduction r is the speedup 1 / (1 - r))
        value = 1.0 / (1.0 - target) if metric == "latency" else target
        cost = {TARGET_FIELDS[metric]: value, "cost_seq_len": a.latency_seq_len}
        if metric == "latency":
            table = self.tables[batch_size]
            cost.update(cost_batch_size=batch_size, cost_threads=a.latency_threads, latency_table=table.path)
        try:
            trainer = hf_l0_trainer(
                a,
                self.trainer_arguments(name, a.prune_steps),
                self.dense,
                self.splits["train"],
                self.collator,
                processing_class=self.tokenizer,
                sparsity_warmup_ratio=a.sparsity_warmup_ratio,
                sparsity_final_phase_ratio=a.sparsity_final_phase_ratio,
                distill_layerwise=a.distill_layerwise,
                l0_structures=a.l0_structures,
                **cost,
            )
        except ValueError as error:
            if not any(phrase in str(error) for phrase in REFUSALS):
                raise
            print(f"{name}: refused: {error}", flush=True)
            return None, {"refused": str(error)}
        start = time.perf_counter()
        trainer.train()
        compact = trainer.compact_model()
        dense_flops = compact_flops(self.dense, a.latency_seq_len)
        flops_reduction = 1.0 - compact_flops(compact, a.latency_seq_len) / dense_flops
        result = {
            "refused": None,
            **accuracies(compact, self.splits, self.collator),
            "parameter_sparsity": float(hf_l0.deterministic_sparsity(trainer.model)),
            "parameters": compact.num_parameters(),
            "flops_reduction": flops_reduction,
            "train_seconds": time.perf_counter() - start,
            "structure": compact.config.l0_structure,
            **record_trajectory(trainer, self.store.root, name),
        }
        if metric == "flops":  # reached FLOPs / target FLOPs - 1, the landing error the FLOPs goal bounds
            result["flops_error"] = (1.0 - flops_reduction) / (1.0 - target) - 1.0
        return trainer, result

    def save_compact(self, trainer: Any, name: str) -> str:
        """Save the run's compact model (prune_at_end) under ``<models_dir>/latency_targets/<name>``; its path,
        relative to the repository when inside it (the run files are committed and must not name this machine)."""
        path = (self.models_dir / NAME / name).resolve()
        trainer.save_model(str(path))
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    def time(self, compact: torch.nn.Module, batch_size: int) -> dict[str, Any]:
        """The compact model against the dense one at ``batch_size``: predicted and measured latency (ratios)."""
        a, table = self.args, self.tables[batch_size]
        inputs = latency_inputs(self.dense, batch_size, a.latency_seq_len)
        timing = latency_speedup(
            self.dense, compact, inputs, repeats=a.latency_repeats, rounds=3, threads=a.latency_threads
        )
        return {
            "predicted_latency_reduction": 1.0 - predict_latency(table, compact) / table.predict_dense(),
            "dense_ms": timing["dense_s"] * 1e3,
            "compact_ms": timing["compact_s"] * 1e3,
            "measured_speedup": timing["speedup"],
            "measured_latency_reduction": 1.0 - timing["compact_s"] / timing["dense_s"],
        }


def latency_run_name(speedup: float, batch_size: int, steps: int) -> str:
    return f"latency-x{speedup:g}-b{batch_size}-s{steps}"


def run_latency(ctx: Context, speedup: float, batch_size: int) -> dict[str, Any]:
    """hf-l0 to the latency ``dense / speedup`` at ``batch_size``, timed there (or its stored record)."""
    a = ctx.args
    name, target = latency_run_name(speedup, batch_size, a.prune_steps), 1.0 - 1.0 / speedup
    settings = {**ctx.run_settings("latency", target), "target_speedup": speedup, **ctx.timing_settings(batch_size)}
    done = ctx.store.finished(name, settings, ctx.overwrite(name))
    if done:
        return done
    started = datetime.now(timezone.utc)
    head = {"metric": "latency", "target": target, "target_speedup": speedup, "batch_size": batch_size}
    trainer, result = ctx.train(name, "latency", target, batch_size)
    if trainer is not None:
        result["model_path"] = ctx.save_compact(trainer, name)  # for --retime
        timing = ctx.time(trainer.compact_model(), batch_size)
        # measured / target latency - 1 = (dense / speedup_measured) / (dense / speedup_target) - 1
        result.update(timing, latency_error=speedup / timing["measured_speedup"] - 1.0)
    print({k: v for k, v in result.items() if k not in ("trajectory", "structure")}, flush=True)
    return ctx.store.write(name, settings, {**head, "steps": a.prune_steps, **result}, started)


def run_shared(ctx: Context, metric: str, target: float, quiet: bool = False) -> dict[str, Any] | None:
    """hf-l0 to ``target`` of ``metric`` (params or flops), its compact model saved for the timings; None while
    another process runs it."""
    a = ctx.args
    name = run_name(metric, target, a.prune_steps)
    settings = ctx.run_settings(metric, target)
    done = ctx.store.finished(name, settings, ctx.overwrite(name))
    if done:
        return done
    if not ctx.store.claim(name):
        if not quiet:
            print(f"{name}: running in another process, timed when it is done", flush=True)
        return None
    try:
        done = ctx.store.finished(name, settings, ctx.overwrite(name))  # written between the look and the claim?
        if done:
            return done
        started = datetime.now(timezone.utc)
        trainer, result = ctx.train(name, metric, target, None)
        if trainer is not None:  # the compact model, timed by every batch size's process
            result["model_path"] = ctx.save_compact(trainer, name)
        print({k: v for k, v in result.items() if k not in ("trajectory", "structure")}, flush=True)
        head = {"metric": metric, "target": target, "steps": a.prune_steps}
        return ctx.store.write(name, settings, {**head, **result}, started)
    finally:
        ctx.store.release(name)


def run_timing(ctx: Context, trained: dict[str, Any], batch_size: int) -> dict[str, Any] | None:
    """A shared run's compact model timed at ``batch_size`` (or the stored timing of that very training run)."""
    if trained["refused"]:
        return None
    name = f"{trained['name']}-b{batch_size}"
    settings = {"trained": [trained["name"], trained["provenance"]["started_utc"]], **ctx.timing_settings(batch_size)}
    stored = ctx.store.get(name)
    # a timing of an earlier training of this run is stale, not a conflict: time the model there now
    stale = stored is not None and stored["settings"].get("trained") != settings["trained"]
    done = ctx.store.finished(name, settings, ctx.overwrite(name) or stale)
    if done:
        return done
    started = datetime.now(timezone.utc)
    compact = hf_l0.from_pretrained(_model_dir(trained)).eval()
    result = {
        "metric": trained["metric"],
        "target": trained["target"],
        "steps": trained["steps"],
        "batch_size": batch_size,
        "of": trained["name"],
        **ctx.time(compact, batch_size),
    }
    print(result, flush=True)
    return ctx.store.write(name, settings, result, started)


def _model_dir(record: dict[str, Any]) -> Path:
    """Where a run's saved compact model is: its ``model_path``, relative to the repository unless absolute."""
    path = Path(record["model_path"])
    return path if path.is_absolute() else ROOT / path


def _saved_model(record: dict[str, Any]) -> Path | None:
    """The run's saved compact model if it is on this machine."""
    if not record.get("model_path"):
        return None
    path = _model_dir(record)
    return path if (path / "config.json").is_file() else None


def retime(ctx: Context) -> None:
    """Every stored timing measured again here (see ``--retime``): the training run's saved compact model (or, when
    it is not on this machine, its ``structure`` cut from the dense teacher), timed against the dense teacher as
    during training, and added to the run file as ``retimed``."""
    records = ctx.store.records()
    trained = {r["name"]: r for r in records if "of" not in r}
    timed = [r for r in records if not r.get("refused") and "measured_speedup" in r]
    print(f"retiming {len(timed)} compact models; load average {load_average()}", flush=True)
    for i, record in enumerate(timed):
        source = trained.get(record.get("of", record["name"]))
        if source is None or record["batch_size"] not in ctx.tables:
            continue  # a timing whose training record is gone, or of a batch size this invocation has no table of
        saved = _saved_model(source)
        # the saved model when it is here (speed depends a little on the weights), else its shape cut from the dense
        compact = (
            hf_l0.from_pretrained(saved) if saved else apply_structure(copy.deepcopy(ctx.dense), source["structure"])
        ).eval()
        timing = ctx.time(compact, record["batch_size"])
        timing["timed_model"] = "saved" if saved else "structure"
        if record["metric"] == "latency":
            timing["latency_error"] = record["target_speedup"] / timing["measured_speedup"] - 1.0
        timing["load_average"] = load_average()
        ctx.store.amend(record["name"], "retimed", timing)
        print(
            f"[{i + 1}/{len(timed)}] {record['name']} at batch {record['batch_size']}: "
            f"{record['measured_speedup']:.3f}x during training, {timing['measured_speedup']:.3f}x now",
            flush=True,
        )


# --- aggregate -----------------------------------------------------------------------------------------------------


def accuracy_at(speedups: list[float], accuracy: list[float], at: np.ndarray) -> np.ndarray:
    order = np.argsort(speedups)
    return np.interp(at, np.asarray(speedups)[order], np.asarray(accuracy)[order])


def points(runs: list[dict[str, Any]], metric: str, batch_size: int) -> list[dict[str, Any]]:
    """(measured speedup, accuracies) of ``metric``'s compact models at ``batch_size``, by speedup."""
    trained = {r["name"]: r for r in runs if r.get("kind") == "train"}
    out = []
    for r in runs:
        if r["metric"] != metric or r.get("batch_size") != batch_size or r.get("refused"):
            continue
        source = trained.get(r["of"]) if r.get("kind") == "timing" else r
        if source is None:
            continue  # a timing whose training record is gone
        out.append(
            {
                "target": r["target"],
                "measured_speedup": r["measured_speedup"],
                "test_accuracy": source["test_accuracy"],
                "validation_accuracy": source["validation_accuracy"],
            }
        )
    return sorted(out, key=lambda p: p["measured_speedup"])


def equal_latency(params: list[dict[str, Any]], latency: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Both methods' test accuracy interpolated (linearly in the measured speedup) at 5 speedups both cover."""
    if not params or not latency:
        return []
    low = max(params[0]["measured_speedup"], latency[0]["measured_speedup"])
    high = min(params[-1]["measured_speedup"], latency[-1]["measured_speedup"])
    if low > high:
        return []
    grid = np.linspace(low, high, 5 if high > low else 1)
    curves = {
        label: accuracy_at([p["measured_speedup"] for p in ps], [p["test_accuracy"] for p in ps], grid)
        for label, ps in (("params", params), ("latency", latency))
    }
    return [
        {
            "speedup": float(s),
            "params_test_accuracy": float(curves["params"][i]),
            "latency_test_accuracy": float(curves["latency"][i]),
            "met": bool(curves["latency"][i] >= curves["params"][i]),
        }
        for i, s in enumerate(grid)
    ]


def summarize(runs: list[dict[str, Any]], batch_sizes: list[int]) -> dict[str, Any]:
    """The goals: latency landing per batch size, FLOPs landing, accuracy at equal measured latency."""
    per_batch = []
    for b in batch_sizes:
        targets = sorted(
            (r for r in runs if r["metric"] == "latency" and r["batch_size"] == b), key=lambda r: r["target"]
        )
        rows = [
            {
                "target_speedup": r["target_speedup"],
                "target": r["target"],
                "refused": r["refused"],
                **{k: r.get(k) for k in ("predicted_latency_reduction", "measured_speedup", "latency_error")},
                **{k: r.get(k) for k in ("test_accuracy", "parameter_sparsity", "flops_reduction")},
                "measured_speedup_during_training": r.get("timing_during_training", {}).get("measured_speedup"),
                "met": None if r["refused"] else abs(r["latency_error"]) <= LATENCY_TOLERANCE,
            }
            for r in targets
        ]
        params, latency = points(runs, "params", b), points(runs, "latency", b)
        per_batch.append(
            {
                "batch_size": b,
                "latency_targets": rows,
                "points": {m: points(runs, m, b) for m in ("params", "latency", "flops")},
                "equal_latency": equal_latency(params, latency),
            }
        )
    flops = [
        {
            "target": r["target"],
            "refused": r["refused"],
            **{k: r.get(k) for k in ("flops_reduction", "flops_error", "test_accuracy", "parameter_sparsity")},
            "met": None if r["refused"] else abs(r["flops_error"]) <= FLOPS_TOLERANCE,
        }
        for r in sorted(runs, key=lambda r: r["target"])
        if r["metric"] == "flops" and r.get("kind") == "train"
    ]
    return {"per_batch_size": per_batch, "flops_targets": flops}


def plot(results: dict[str, Any], path: Path) -> None:
    panels = results["per_batch_size"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    styles = {
        "params": ("o--", "params-targeted"),
        "latency": ("s-", "latency-targeted"),
        "flops": ("^:", "FLOPs-targeted"),
    }
    for ax, panel in zip(axes[0], panels):
        for metric, (style, label) in styles.items():
            ps = panel["points"][metric]
            if ps:
                ax.plot([p["measured_speedup"] for p in ps], [p["test_accuracy"] for p in ps], style, label=label)
        ax.plot([1.0], [results["dense"]["test_accuracy"]], "k*", markersize=10, label="dense")
        ax.set_xlabel(f"measured speedup over dense (batch {panel['batch_size']} x {results['latency']['seq_len']})")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"batch {panel['batch_size']}, {results['latency']['threads']} thread(s)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle(f"{results['model']}: accuracy vs measured speedup ({results['budget']['prune_steps']} steps per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _met(value: bool | None) -> str:
    return "–" if value is None else goal(value)


def table(results: dict[str, Any]) -> str:
    lat = results["latency"]
    budget = results["budget"]
    parts = [
        f"**Latency and FLOPs targets** — {results['model']}, rotten_tomatoes test split ({results['test_size']} "
        f"reviews, dense test accuracy {results['dense']['test_accuracy']:.3f}); {budget['prune_steps']} steps per "
        f"run (batch {budget['batch_size']}, learning rate {budget['learning_rate']}, structures "
        f"{budget['l0_structures']}, distillation from the dense teacher"
        + (
            f", recovery stage: the last {budget['recovery_ratio']:g} of the steps train the frozen mask"
            if budget.get("recovery_ratio")
            else ""
        )
        + f"). Latency at batch B x {lat['seq_len']} "
        f"tokens, {lat['threads']} thread(s); measured speedups are medians of dense and compact taking turns, "
        "so only ratios are reported."
    ]
    timed = [r for r in results["runs"] if r.get("measured_speedup") is not None]
    retimed = [r["retimed"] for r in timed if r.get("retimed")]
    if retimed:
        when = ", ".join(sorted({t["started_utc"] for t in retimed}))
        parts[0] += (
            f" {len(retimed)} of {len(timed)} timings were measured again once training was done, with nothing else "
            f"running (`--retime`, started {when}); these are the ones reported and judged, the first timing (while "
            'the other process trained) is in the column "speedup timed during training".'
        )
    for panel in results["per_batch_size"]:
        b = panel["batch_size"]
        rows = [
            [f"÷{r['target_speedup']:g}", r["target"]]
            + (
                [f"refused: {r['refused']}", "–", "–", "–", "–", "–"]
                if r["refused"]
                else [
                    r["predicted_latency_reduction"],
                    r["measured_speedup"],
                    f"{r['latency_error']:+.3f} {_met(r['met'])}",
                    r["measured_speedup_during_training"],
                    r["test_accuracy"],
                    r["parameter_sparsity"],
                ]
            )
            for r in panel["latency_targets"]
        ]
        if rows:
            parts.append(
                f"**Batch {b}: latency targets** (goal: |measured / target latency − 1| ≤ {LATENCY_TOLERANCE:g})\n\n"
                + markdown_table(
                    [
                        "target latency",
                        "target reduction",
                        "predicted reduction",
                        "measured speedup",
                        "measured / target − 1",
                        "speedup timed during training",
                        "test acc",
                        "param sparsity",
                    ],
                    rows,
                )
            )
        compared = panel["equal_latency"]
        if compared:
            parts.append(
                f"**Batch {b}: accuracy at equal measured speedup** (linear interpolation; goal: latency-targeted ≥ "
                "params-targeted)\n\n"
                + markdown_table(
                    ["speedup", "params-targeted test acc", "latency-targeted test acc", "goal"],
                    [
                        [c["speedup"], c["params_test_accuracy"], c["latency_test_accuracy"], _met(c["met"])]
                        for c in compared
                    ],
                )
            )
        elif panel["points"]["params"] or panel["points"]["latency"]:
            parts.append(f"**Batch {b}:** the params- and latency-targeted runs share no measured speedup range yet.")
    if results["flops_targets"]:
        parts.append(
            f"**FLOPs targets** ({lat['seq_len']} tokens; goal: |reached / target FLOPs − 1| ≤ {FLOPS_TOLERANCE:g})"
            "\n\n"
            + markdown_table(
                ["target reduction", "reached reduction", "reached / target − 1", "test acc", "param sparsity"],
                [
                    [r["target"], f"refused: {r['refused']}", "–", "–", "–"]
                    if r["refused"]
                    else [
                        r["target"],
                        r["flops_reduction"],
                        f"{r['flops_error']:+.4f} {_met(r['met'])}",
                        r["test_accuracy"],
                        r["parameter_sparsity"],
                    ]
                    for r in results["flops_targets"]
                ],
            )
        )
    return "\n\n".join(parts) + runs_line(results)


def collect(args: argparse.Namespace, run: Run) -> dict[str, Any] | None:
    """Rebuild ``latency_targets.{json,md,png}`` from every run file present (of this mode and ``--prune_steps``)."""
    store = RunStore(run)
    dense = RunStore(Run("accuracy_sparsity", args.seed, args.quick, args.output_dir)).get("dense")
    records = [
        r for r in store.records() if r["settings"].get("quick") == args.quick and r.get("steps") == args.prune_steps
    ]
    if dense is None or not records:
        print(f"nothing to aggregate yet under {store.runs_dir}", flush=True)
        return None
    # a timing names the training run whose compact model it timed; one of an earlier training of it is left out
    trained_at = {r["name"]: r["provenance"]["started_utc"] for r in records if "of" not in r}
    records = [r for r in records if "of" not in r or trained_at.get(r["of"]) == r["settings"]["trained"][1]]
    for r in records:
        r["kind"] = "timing" if "of" in r else "train"
        if "retimed" in r:  # timed again with nothing else running: these are the timings the goals read
            r["timing_during_training"] = {k: r[k] for k in r["retimed"] if k in r}
            r.update({k: v for k, v in r["retimed"].items() if k != "provenance"})
            r["retimed"] = {k: r["retimed"]["provenance"][k] for k in ("command", "started_utc")}
    runs = [{**aggregate_run(r), "name": r["name"], "kind": r["kind"]} for r in records]
    batch_sizes = sorted({r["batch_size"] for r in runs if r.get("batch_size") is not None})
    timed = next((r["settings"] for r in records if "latency_seq_len" in r["settings"]), {})
    trained = next((r["settings"] for r in records if r["kind"] == "train"), {})
    results: dict[str, Any] = {
        "format": 1,
        "model": dense["model"],
        "test_size": dense["test_size"],
        "dense": {k: dense[k] for k in ("validation_accuracy", "test_accuracy", "parameters")},
        "latency": {
            "seq_len": timed.get("latency_seq_len", args.latency_seq_len),
            "threads": timed.get("latency_threads", args.latency_threads),
            "batch_sizes": batch_sizes,
            "tables": sorted({r["settings"]["table"][0] for r in records if "table" in r["settings"]}),
        },
        "budget": {
            "prune_steps": args.prune_steps,
            **{k: trained.get(k) for k in ("batch_size", "max_length", "learning_rate", "gate_learning_rate")},
            **{k: trained.get(k) for k in ("distill_alpha", "distill_temperature", "l0_structures", "teacher")},
            "recovery_ratio": trained.get("recovery_ratio", 0),
        },
        "tolerances": {"latency": LATENCY_TOLERANCE, "flops": FLOPS_TOLERANCE},
        **summarize(runs, batch_sizes),
        "runs": runs,
        **provenance_summary([*records, dense]),
    }
    plot(results, run.path(".png"))
    return run.write(results, table(results))


# --- main ------------------------------------------------------------------------------------------------------------


def check_teacher(dense_store: RunStore, args: argparse.Namespace, models_dir: Path) -> None:
    """Stop before the dense stage would replace accuracy_sparsity's teacher record (its runs name that teacher, so
    they would no longer resume): when ``runs/dense.json`` names another model than this one, or one not here."""
    record = dense_store.get("dense")
    path, shown = dense_location(args, models_dir)
    if record is None or (record["model_path"] == shown and (path / "config.json").is_file()):
        return
    problem = "is not on this machine" if record["model_path"] == shown else f"is not the teacher asked for ({shown})"
    raise SystemExit(
        f"{dense_store.path('dense')} names the dense teacher {record['model_path']}, which {problem}: run from the "
        f"checkout that holds it (git-ignored), or copy it to {path}; or choose another --output_dir (a store of its "
        "own, with its own dense stage)."
    )


def wait_for(ctx: Context, pending: list[tuple[str, float]]) -> None:
    """The shared runs another process claimed: time each at this process's batch sizes once it is written (or run
    it here if that process died before writing it)."""
    while pending:
        for metric, target in list(pending):
            trained = run_shared(ctx, metric, target, quiet=True)  # stored by now, or taken over from a dead process
            if trained is not None:
                for b in ctx.args.latency_batch_sizes:
                    run_timing(ctx, trained, b)
                pending.remove((metric, target))
        if pending:
            time.sleep(1.0 if ctx.args.quick else POLL_SECONDS)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    set_threads(args.threads)
    table_options: dict[str, Any] = {}
    if args.quick:  # accuracy_sparsity's quick budget (so its quick dense stage is shared), tiny shapes
        args.prune_steps, args.dense_epochs = max(1, args.prune_steps // 50), 0.25
        args.param_targets, args.flops_targets = args.param_targets[:1], args.flops_targets[:1]
        if args.latency_batch_sizes == [1, 32]:
            args.latency_batch_sizes = [1, 2]
        args.latency_seq_len, args.latency_repeats = min(args.latency_seq_len, 16), 1
        # medians of a few timings: one timing of a tiny model under load can put the fixed time above the dense one
        table_options = {"repeats": 2, "rounds": 3, "progress": False}
    run = Run(NAME, args.seed, args.quick, args.output_dir)
    if args.collect:
        return collect(args, run)
    store = RunStore(run)
    models_dir = Path(args.models_dir or Path(args.output_dir) / "models")
    dense_store = RunStore(Run("accuracy_sparsity", args.seed, args.quick, args.output_dir))
    check_teacher(dense_store, args, models_dir)
    model, tokenizer, splits = load_model_and_data(args)
    dense, dense_record = dense_stage(args, dense_store, models_dir, model, splits, tokenizer)
    tables = {
        b: latency_table(
            dense,
            batch_size=b,
            seq_len=args.latency_seq_len,
            threads=args.latency_threads,
            cache_dir=store.root / "tables",
            **table_options,
        )
        for b in args.latency_batch_sizes
    }
    for t in tables.values():
        print(t.summary(), flush=True)
    if args.quick:  # a tiny model's time is mostly fixed cost: a reachable speedup, and one the trainer refuses
        reachable = 0.5 * min(1.0 - t.fixed_s / t.predict_dense() for t in tables.values())
        args.latency_targets = [round(1.0 / (1.0 - reachable), 2), 1000.0]
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
        tables=tables,
    )
    if args.retime:
        retime(ctx)
        return collect(args, run)
    for b in args.latency_batch_sizes:
        for speedup in args.latency_targets:
            run_latency(ctx, speedup, b)
    pending = []
    for metric, targets in (("params", args.param_targets), ("flops", args.flops_targets)):
        for target in targets:
            trained = run_shared(ctx, metric, target)
            if trained is None:
                pending.append((metric, target))
                continue
            for b in args.latency_batch_sizes:
                run_timing(ctx, trained, b)
    wait_for(ctx, pending)
    return collect(args, run)


if __name__ == "__main__":
    main()
