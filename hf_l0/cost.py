"""Forward FLOPs of a gated model, expected (differentiable) and deterministic, and the cost targets built on them.

Users prune to make a model faster; the parameter fraction maps to speed unevenly (attention scores cost per token
in proportion to the sequence length, embeddings and heads are a fixed cost). This module counts the multiply-adds
(x2) of one forward pass per token at a sequence length ``L``, as :func:`hf_l0.measure.forward_flops` does for any
model: every Linear / Conv1D applied to every token plus the attention scores and weighted sums.

Per sublayer, with the gates independent (as in :mod:`hf_l0.size`)::

    E[flops] = P(layer) * E[units] * (2 * W_u * E[d] + 4 * L * S_u)

with ``W_u`` the weight entries per unit and hidden dimension (input rows + output columns), ``S_u`` the query
width per unit (the head dimension; a KV group's query heads x head dimension on GQA models; 0 for FFN neurons) and
``E[d]`` the expected number of hidden dimensions. Outside the sublayers, every other Linear counts its weights
(twice), and the heads reading the residual stream (pooler, classifier, ``lm_head``) shrink with the hidden
dimensions. With P replaced by ``1[z != 0]`` of the deterministic gates the count equals
:func:`compact_flops` of the model :func:`hf_l0.prune_model` returns.

:class:`FlopsTarget` and :class:`hf_l0.latency.LatencyTarget` turn a cost into the *reduction* fraction
``1 - cost / dense cost`` that :class:`hf_l0.LagrangianController` drives through its ``metric`` hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .arch import get_adapter
from .gates import sublayer_gate_names
from .patch import get_gates, transformers_model
from .size import unit_probabilities
from .slicing import base_layer, out_features

TARGET_METRICS = ("params", "flops", "latency")
# (sublayer, its unit gate, its whole-sublayer gate), from the one gate table
SUBLAYER_GATES = tuple((kind, *sublayer_gate_names(kind)) for kind in ("attention", "ffn"))


@dataclass
class FlopsReport:
    """Forward FLOPs per token (float64 tensors; differentiable when expected)."""

    attention: torch.Tensor  # projections + attention scores and weighted sums
    ffn: torch.Tensor
    fixed: torch.Tensor  # every other Linear: pooler, classifier, lm_head (those reading the residual stream shrink)

    @property
    def total(self) -> torch.Tensor:
        return self.attention + self.ffn + self.fixed


def _linear_modules(model: nn.Module) -> list[nn.Module]:
    """Every Linear / Conv1D the forward pass applies (peft's LoRA factors excluded: merging removes them)."""
    return [m for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and ".lora_" not in f".{name}"]


_LAYOUT_ATTR = "_flops_layout"


def _layout(model: nn.Module) -> dict[str, Any]:
    """Per-layer unit counts, weights per unit and query width per unit, and the Linears outside the sublayers.

    Read once from the dense model the gates were attached to and kept on the gates module (as in :mod:`size`).
    """
    gates = get_gates(model)
    layout = gates.__dict__.get(_LAYOUT_ATTR)
    if layout is not None:
        return layout
    target = transformers_model(model)
    adapter = get_adapter(target)
    sublayer_ids: set[int] = set()
    layout = {"hidden_size": adapter.hidden_size}
    for kind, _, _ in SUBLAYER_GATES:
        rows = []
        for i in range(adapter.num_layers):
            sublayer = getattr(adapter, kind)(i)
            sublayer_ids.update(id(base_layer(p.module)) for p in sublayer.inputs)
            sublayer_ids.add(id(base_layer(sublayer.output)))
            rows.append(
                [sublayer.num_units, sublayer.weights_per_unit(), sublayer.unit_width if kind == "attention" else 0]
            )
        layout[kind] = [list(column) for column in zip(*rows)]
    consumers = adapter.residual_stream().consumers
    consumer_ids = {id(base_layer(c)) for c in consumers}
    layout["consumers_per_dim"] = sum(out_features(c) for c in consumers)
    layout["other_weights"] = sum(
        m.weight.numel() for m in _linear_modules(target) if id(m) not in sublayer_ids and id(m) not in consumer_ids
    )
    gates.__dict__[_LAYOUT_ATTR] = layout
    return layout


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive int (the sequence length the FLOPs are counted at).")


def _flops(model: nn.Module, seq_len: int, mode: str) -> FlopsReport:
    _check_seq_len(seq_len)
    layout = _layout(model)
    probs = unit_probabilities(model, mode)
    device = next(iter(get_gates(model).named_gates().values())).log_alpha.device
    one = torch.ones((), dtype=torch.float64, device=device)
    hidden = probs["hidden"].sum() if "hidden" in probs else one * layout["hidden_size"]
    totals = {}
    for kind, unit_gate, layer_gate in SUBLAYER_GATES:
        num_units, weights, score_width = torch.tensor(layout[kind], dtype=torch.float64, device=device)
        units = probs[unit_gate].sum(-1) if unit_gate in probs else num_units
        flops = units * (2.0 * weights * hidden + 4.0 * seq_len * score_width)
        if layer_gate in probs:
            flops = flops * probs[layer_gate]
        totals[kind] = flops.sum()
    fixed = 2.0 * (layout["other_weights"] + layout["consumers_per_dim"] * hidden)
    return FlopsReport(totals["attention"], totals["ffn"], fixed * one)


def expected_flops(model: nn.Module, seq_len: int) -> FlopsReport:
    """Expected forward FLOPs per token at ``seq_len`` under the hard concrete distributions (differentiable)."""
    return _flops(model, seq_len, "expected")


def deterministic_flops(model: nn.Module, seq_len: int) -> FlopsReport:
    """Forward FLOPs per token under the eval-mode gates: those of the model :func:`hf_l0.prune_model` returns."""
    return _flops(model, seq_len, "deterministic")


def full_flops(model: nn.Module, seq_len: int) -> FlopsReport:
    """Forward FLOPs per token of the dense model (every gate open)."""
    return _flops(model, seq_len, "full")


def compact_flops(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token at ``seq_len`` of an ungated (dense or pruned) model, from its modules' shapes.

    Counts what :func:`hf_l0.measure.forward_flops` counts (every Linear applied to every token, attention scores and
    weighted sums), per token; sublayers that pruning removed whole cost nothing.
    """
    _check_seq_len(seq_len)
    target = transformers_model(model)
    adapter = get_adapter(target)
    query_width = 0
    for i in range(adapter.num_layers):
        attention = adapter.attention(i)
        if attention is not None:
            query_width += attention.num_units * attention.unit_width
    weights = sum(m.weight.numel() for m in _linear_modules(target))
    return float(2 * weights + 4 * seq_len * query_width)


def flops_reduction(model: nn.Module, seq_len: int, deterministic: bool = False) -> torch.Tensor:
    """``1 - FLOPs / dense FLOPs`` of the whole forward pass (differentiable unless ``deterministic``)."""
    flops = deterministic_flops(model, seq_len) if deterministic else expected_flops(model, seq_len)
    return 1.0 - flops.total / full_flops(model, seq_len).total


class CostTarget:
    """A cost whose reduction the Lagrangian controller drives: ``target(model, deterministic) -> reduction``.

    Subclasses give :meth:`cost` (``mode`` = expected, deterministic, full or minimum, the last with every gate shut
    except what uniform targets keep) and a unit for the logs.
    """

    name = "cost"
    unit = ""
    scale = 1.0  # cost x scale is logged in ``unit``
    fixed_description = "the fixed cost"

    def cost(self, model: nn.Module, mode: str) -> torch.Tensor:
        raise NotImplementedError

    def fixed_cost(self, model: nn.Module) -> float:
        """What no gate can remove (with every structure gated)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, deterministic: bool = False) -> torch.Tensor:
        cost = self.cost(model, "deterministic" if deterministic else "expected")
        return 1.0 - cost / self.cost(model, "full").detach()

    def max_reduction(self, model: nn.Module) -> float:
        """The largest reduction the model's gates can reach (every gate shut; sizes only grow with each gate)."""
        return float(1.0 - self.cost(model, "minimum") / self.cost(model, "full"))

    def check_target(self, model: nn.Module, target: float) -> None:
        """Raise a ``ValueError`` naming the problem and the fix when ``target`` (a reduction) cannot be reached."""
        if not 0.0 < target < 1.0:
            raise ValueError(
                f"a {self.name} target of {target} is impossible: it is the fraction of the dense "
                f"{self.name} to remove (1 - compact / dense) and must lie strictly between 0 and 1."
            )
        full = float(self.cost(model, "full"))
        fixed_share = self.fixed_cost(model) / full
        if target > 1.0 - fixed_share + 1e-12:
            raise ValueError(
                f"a {self.name} reduction of {target} cannot be reached: {self.fixed_description} is "
                f"{fixed_share:.4f} of the dense {self.name}, and pruning heads, neurons and sublayers never removes "
                f"it. Choose a target of at most {1.0 - fixed_share:.4f}."
            )
        maximum = self.max_reduction(model)
        if target > maximum + 1e-12:
            structures = ", ".join(get_gates(model).named_gates())
            raise ValueError(
                f"a {self.name} reduction of {target} cannot be reached: with gates on {structures} this model can "
                f"lose at most {maximum:.4f} of its {self.name} (every gate shut). Gate more structures (layers "
                f"remove whole sublayers; drop uniform targets like target_heads) or lower the target to at most "
                f"{maximum:.4f}."
            )

    def log_values(self, model: nn.Module) -> dict[str, float]:
        """Expected and deterministic cost in :attr:`unit` (for the trainer's logs)."""
        with torch.no_grad():
            return {
                f"expected_{self.name}": float(self.cost(model, "expected")) * self.scale,
                f"deterministic_{self.name}": float(self.cost(model, "deterministic")) * self.scale,
                f"dense_{self.name}": float(self.cost(model, "full")) * self.scale,
            }

    def config_dict(self) -> dict[str, Any]:
        return {"metric": self.name}


class FlopsTarget(CostTarget):
    """Forward FLOPs per token at ``seq_len`` (logged in GFLOPs per token)."""

    name = "flops"
    unit = "GFLOPs / token"
    scale = 1e-9
    fixed_description = "the FLOPs outside attention and FFN (pooler, classifier, lm_head)"

    def __init__(self, seq_len: int) -> None:
        _check_seq_len(seq_len)
        self.seq_len = seq_len

    def cost(self, model: nn.Module, mode: str) -> torch.Tensor:
        return _flops(model, self.seq_len, mode).total

    def fixed_cost(self, model: nn.Module) -> float:
        return float(_flops(model, self.seq_len, "minimum").fixed)  # heads shrink only with hidden gates

    def config_dict(self) -> dict[str, Any]:
        return {"metric": self.name, "seq_len": self.seq_len}


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
    with ``threads`` torch threads, unless ``table`` (a :class:`hf_l0.latency.LatencyTable` or a path to one) is
    given.
    """
    if metric not in TARGET_METRICS:
        raise ValueError(f"target_metric={metric!r}: choose one of {', '.join(TARGET_METRICS)}.")
    if metric == "params":
        return None
    if metric == "flops":
        return FlopsTarget(seq_len)
    from .latency import LatencyTable, LatencyTarget, latency_table  # local: latency imports this module

    if table is None:
        table = latency_table(model, batch_size=batch_size, seq_len=seq_len, threads=threads, **table_kwargs)
    elif not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    return LatencyTarget(table)


# -- training arguments and the scripts' summary ---------------------------------------------------------------------
@dataclass
class CostTargetArguments:
    """The target's metric: what ``target_sparsity`` is a reduction of (a mixin of :class:`hf_l0.L0TrainingArguments`,
    so every field is also a command-line flag of the scripts)."""

    target_metric: str = field(
        default="params",
        metadata={
            "help": "What --target_sparsity removes: params (the fraction of attention + FFN parameters, CoFi), "
            "flops (the fraction of the forward FLOPs at --cost_seq_len tokens: 1 - compact / dense) or "
            "latency (the fraction of the forward time on this machine at --cost_batch_size x --cost_seq_len "
            "tokens with --cost_threads threads, predicted by a measured latency table).",
            "choices": list(TARGET_METRICS),
        },
    )
    cost_seq_len: int = field(default=128, metadata={"help": "flops / latency targets: the sequence length."})
    cost_batch_size: int = field(default=1, metadata={"help": "latency target: the batch size it is measured at."})
    cost_threads: int = field(default=1, metadata={"help": "latency target: torch threads it is measured with."})
    latency_table: str | None = field(
        default=None,
        metadata={
            "help": "latency target: a table written by `python -m hf_l0 latency-table` (JSON path). Default: "
            "measured on this machine at the start of training, or loaded from the cache."
        },
    )

    def validate_cost_target(self) -> None:
        if self.target_metric not in TARGET_METRICS:
            raise ValueError(f"target_metric={self.target_metric!r}: choose one of {', '.join(TARGET_METRICS)}.")
        for name in ("cost_seq_len", "cost_batch_size", "cost_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.latency_table is not None and self.target_metric != "latency":
            raise ValueError(
                f"latency_table is set but target_metric={self.target_metric!r}: it is read only for "
                "target_metric='latency'."
            )


def check_cost_arguments(model: nn.Module, args: Any) -> None:
    """The refusals of a FLOPs / latency target that need neither a table nor any timing (the gated ``model``'s
    structures and the arguments): run before a latency table is measured."""
    if getattr(args, "target_metric", "params") != "latency":
        return
    if hasattr(get_gates(model), "hidden"):
        raise ValueError(
            "a latency target does not support hidden-dimension gates: the latency table is measured at the dense "
            "hidden size. Set hidden=False (l0_structures without 'hidden') or use target_metric='flops'."
        )
    if args.latency_table is None and getattr(args, "world_size", 1) > 1:
        # every process would time its own table, and the snap would then move each rank's gates differently
        raise ValueError(
            "a latency target in a run of several processes needs one table for all: measure it first "
            "(python -m hf_l0 latency-table --model ... --batch-size B --seq-len L --threads T) and pass "
            "its path as --latency_table."
        )


def cost_target_from_args(model: nn.Module, args: Any) -> CostTarget | None:
    """The controller metric that ``args`` (an :class:`hf_l0.L0TrainingArguments`) ask for, after checking that the
    gated ``model`` can reach ``args.target_sparsity`` of it; None for the parameter sparsity (checked as well)."""
    metric = getattr(args, "target_metric", "params")
    if metric == "params":
        from .size import check_target_reachable

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
    target.check_target(model, args.target_sparsity)
    return target


def cost_target_summary(
    args: Any, target: CostTarget | None, dense: nn.Module, compact: nn.Module, repeats: int = 15
) -> tuple[dict[str, Any], list[tuple[str, Any, Any]]]:
    """For the scripts: the target against what the compact model reached, FLOPs counted and latency measured at the
    target's shape (dense and compact taking turns forward by forward, medians). Returns summary fields and table
    rows (quantity, dense, pruned); nothing for a parameter target."""
    if target is None:
        return {}, []
    from .latency import latency_inputs, predict_latency
    from .measure import latency_speedup

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
            (f"latency reduction (target {args.target_sparsity:.3f}, table predicts {predicted:.3f})", 0.0, measured)
        )
    else:
        rows.append((f"FLOPs reduction (target {args.target_sparsity:.3f})", 0.0, fields["reached_flops_reduction"]))
        rows.append(("latency reduction, measured", 0.0, measured))
    rows.append((f"CPU latency, batch {shape} (ms)", timing["dense_s"] * 1e3, timing["compact_s"] * 1e3))
    return fields, rows
