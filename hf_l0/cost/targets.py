"""Building the controller's cost target from the training arguments, and the scripts' summary of what it reached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..gates.patch import get_gates
from .base import TARGET_METRICS, CostTarget
from .flops import FlopsTarget, compact_flops
from .latency import LatencyTable, LatencyTarget, latency_inputs, latency_table, predict_latency
from .measure import latency_speedup
from .size import check_target_reachable


def make_cost_target(
    metric: str,
    model: nn.Module,
    *,
    seq_len: int = 128,
    batch_size: int = 1,
    threads: int = 1,
    table: Any = None,
    **table_kwargs: Any,
) -> CostTarget | None:
    """The controller metric for ``metric`` (None for ``params``: the controller's own parameter sparsity).

    ``latency`` measures (or loads from the cache) the latency table of ``model`` at ``batch_size`` x ``seq_len``
    with ``threads`` torch threads, unless ``table`` (a :class:`hf_l0.cost.latency.LatencyTable` or a path to one) is
    given.
    """
    if metric not in TARGET_METRICS:
        raise ValueError(f"target_metric={metric!r}: choose one of {', '.join(TARGET_METRICS)}.")
    if metric == "params":
        return None
    if metric == "flops":
        return FlopsTarget(seq_len)
    if table is None:
        table = latency_table(model, batch_size=batch_size, seq_len=seq_len, threads=threads, **table_kwargs)
    elif not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    return LatencyTarget(table)


# -- training arguments and the scripts' summary ---------------------------------------------------------------------
# One setting per meaning of "the target": exactly one of them is set (the metric follows from which).
TARGET_FIELDS = {"params": "target_sparsity", "flops": "target_flops_reduction", "latency": "target_speedup"}


@dataclass
class CostTargetArguments:
    """What the run prunes to: exactly one of ``target_sparsity`` (parameters), ``target_flops_reduction`` (FLOPs) or
    ``target_speedup`` (measured latency). A mixin of :class:`hf_l0.L0TrainingArguments`, so every field is also a
    command-line flag of the scripts."""

    target_sparsity: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of the attention + FFN parameters to remove, strictly between 0 and 1 (e.g. 0.6; "
            "CoFi's sparsity). Set this, --target_flops_reduction or --target_speedup."
        },
    )
    target_flops_reduction: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of the forward FLOPs at --cost_seq_len tokens to remove, strictly between 0 and 1 "
            "(1 - compact / dense; 0.5 halves the FLOPs)."
        },
    )
    target_speedup: float | None = field(
        default=None,
        metadata={
            "help": "Dense latency / compact latency to reach on this machine, > 1 (2: twice as fast), at "
            "--cost_batch_size x --cost_seq_len tokens with --cost_threads threads, predicted by a measured "
            "latency table."
        },
    )
    cost_seq_len: int = field(default=128, metadata={"help": "FLOPs / speedup targets: the sequence length."})
    cost_batch_size: int = field(default=1, metadata={"help": "speedup target: the batch size it is measured at."})
    cost_threads: int = field(default=1, metadata={"help": "speedup target: torch threads it is measured with."})
    latency_table: str | None = field(
        default=None,
        metadata={
            "help": "speedup target: a table written by `hf-l0 latency-table` (JSON path). Default: measured on "
            "this machine at the start of training, or loaded from the cache."
        },
    )

    @property
    def target_metric(self) -> str:
        """``params``, ``flops`` or ``latency``: the metric of the one target that is set."""
        return next((metric for metric, name in TARGET_FIELDS.items() if getattr(self, name) is not None), "params")

    @property
    def target_reduction(self) -> float:
        """The fraction of the metric to remove, what the controller drives: the sparsity, the FLOPs reduction, or
        ``1 - 1 / target_speedup``."""
        if self.target_speedup is not None:
            return 1.0 - 1.0 / self.target_speedup
        value = getattr(self, TARGET_FIELDS[self.target_metric])
        return float("nan") if value is None else float(value)

    def target_text(self) -> str:
        """The target as the user set it (for logs and titles)."""
        name = TARGET_FIELDS[self.target_metric]
        return f"{name}={getattr(self, name):g}"

    def validate_cost_target(self) -> None:
        given = [name for name in TARGET_FIELDS.values() if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                ("a target is required" if not given else f"{' and '.join(given)} are set: one target only")
                + ": set exactly one of --target_sparsity (fraction of attention + FFN parameters to remove, e.g. "
                "0.6), --target_flops_reduction (fraction of the FLOPs to remove, e.g. 0.5) or --target_speedup "
                "(dense / compact latency on this machine, e.g. 2)."
            )
        if self.target_flops_reduction is not None and not 0.0 < self.target_flops_reduction < 1.0:
            raise ValueError(
                f"target_flops_reduction={self.target_flops_reduction} is impossible: it is the fraction of the "
                "dense FLOPs to remove and must lie strictly between 0 and 1 (e.g. 0.5 halves them)."
            )
        if self.target_speedup is not None and not self.target_speedup > 1.0:
            raise ValueError(
                f"target_speedup={self.target_speedup} is impossible: it is dense latency / compact latency and "
                "must be > 1 (e.g. 2 for twice as fast)."
            )
        for name in ("cost_seq_len", "cost_batch_size", "cost_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.latency_table is not None and self.target_speedup is None:
            raise ValueError(
                f"latency_table is set but the target is {self.target_text()}: the table is read only for a "
                "--target_speedup."
            )


def check_cost_arguments(model: nn.Module, args: Any) -> None:
    """The refusals of a FLOPs / speedup target that need neither a table nor any timing (the gated ``model``'s
    structures and the arguments): run before a latency table is measured."""
    if args.target_metric != "latency":
        return
    if hasattr(get_gates(model), "hidden"):
        raise ValueError(
            "a speedup target does not support hidden-dimension gates: the latency table is measured at the dense "
            "hidden size. Set hidden=False (l0_structures without 'hidden') or use target_flops_reduction."
        )
    if args.latency_table is None and getattr(args, "world_size", 1) > 1:
        # every process would time its own table, and the snap would then move each rank's gates differently
        raise ValueError(
            "a speedup target in a run of several processes needs one table for all: measure it first "
            "(hf-l0 latency-table --model ... --batch-size B --seq-len L --threads T) and pass "
            "its path as --latency_table."
        )


def cost_target_from_args(model: nn.Module, args: Any) -> CostTarget | None:
    """The controller metric that ``args`` (an :class:`hf_l0.L0TrainingArguments`) ask for, after checking that the
    gated ``model`` can reach ``args.target_reduction`` of it; None for the parameter sparsity (checked as well)."""
    metric = args.target_metric
    if metric == "params":
        check_target_reachable(model, args.target_sparsity)
        return None
    check_cost_arguments(model, args)
    target = make_cost_target(
        metric,
        model,
        seq_len=args.cost_seq_len,
        batch_size=args.cost_batch_size,
        threads=args.cost_threads,
        table=args.latency_table,
    )
    target.check_target(model, args.target_reduction)
    return target


def cost_target_summary(
    args: Any, target: CostTarget | None, dense: nn.Module, compact: nn.Module, repeats: int = 15
) -> tuple[dict[str, Any], list[tuple[str, Any, Any]]]:
    """For the scripts: the target against what the compact model reached, FLOPs counted and latency measured at the
    target's shape (dense and compact taking turns forward by forward, medians). Returns summary fields and table
    rows (quantity, dense, pruned); nothing for a parameter target."""
    if target is None:
        return {}, []
    inputs = latency_inputs(dense, args.cost_batch_size, args.cost_seq_len)
    timing = latency_speedup(dense, compact, inputs, repeats=max(1, repeats // 3), rounds=3, threads=args.cost_threads)
    measured = 1.0 - timing["compact_s"] / timing["dense_s"]
    dense_flops, pruned_flops = compact_flops(dense, args.cost_seq_len), compact_flops(compact, args.cost_seq_len)
    shape = f"{args.cost_batch_size} x {args.cost_seq_len}, {args.cost_threads} thread(s)"
    fields = {
        "target_metric": target.name,
        "cost_seq_len": args.cost_seq_len,
        "cost_batch_size": args.cost_batch_size,
        "cost_threads": args.cost_threads,
        "dense_gflops_per_token": dense_flops * 1e-9,
        "pruned_gflops_per_token": pruned_flops * 1e-9,
        "reached_flops_reduction": 1.0 - pruned_flops / dense_flops,
        "target_dense_latency_ms": timing["dense_s"] * 1e3,
        "target_pruned_latency_ms": timing["compact_s"] * 1e3,
        "measured_latency_reduction": measured,
    }
    rows = [(f"GFLOPs / token at {args.cost_seq_len} tokens", dense_flops * 1e-9, pruned_flops * 1e-9)]
    if target.name == "latency":
        table = target.table
        predicted = 1.0 - predict_latency(table, compact) / table.predict_dense()
        fields["predicted_latency_reduction"] = predicted
        rows.append(
            (
                f"speedup (target {args.target_speedup:.2f}x, table predicts {1.0 / (1.0 - predicted):.2f}x)",
                1.0,
                timing["dense_s"] / timing["compact_s"],
            )
        )
    else:
        rows.append(
            (f"FLOPs reduction (target {args.target_flops_reduction:.3f})", 0.0, fields["reached_flops_reduction"])
        )
        rows.append(("latency reduction, measured", 0.0, measured))
    rows.append((f"CPU latency, batch {shape} (ms)", timing["dense_s"] * 1e3, timing["compact_s"] * 1e3))
    return fields, rows
