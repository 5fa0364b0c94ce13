"""Helpers shared by the example scripts: packaged-asset names, latency timing, the summary table."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cost.measure import latency_speedup
from . import assets

PACKAGED_PREFIX = "hf_l0:"
PACKAGED_MODELS = {
    "minilm": lambda: (str(assets.minilm_dir()), None),
    "smollm2": lambda: (str(assets.smollm2_gguf().parent), assets.smollm2_gguf().name),
}


def resolve_model_path(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``hf_l0:minilm`` / ``hf_l0:smollm2`` name the packaged models (offline); anything else passes through."""
    if not name.startswith(PACKAGED_PREFIX):
        return name, gguf_file
    key = name[len(PACKAGED_PREFIX) :]
    if key not in PACKAGED_MODELS:
        raise ValueError(
            f"unknown packaged model {name!r}; choose from {', '.join(PACKAGED_PREFIX + k for k in PACKAGED_MODELS)}."
        )
    path, packaged_gguf = PACKAGED_MODELS[key]()
    return path, gguf_file or packaged_gguf


def parse_arguments(parser: Any, argv: list[str] | None = None) -> tuple:
    """Parse the scripts' dataclasses from flags, or from one JSON file of them (as transformers' example scripts
    do), and set up logging."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return tuple(parsed)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compare_latency(
    dense: nn.Module, compact: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 20, threads: int | None = None
) -> dict[str, float]:
    """Side-by-side CPU latency (:func:`hf_l0.cost.measure.latency_speedup`, the models taking turns) in the summary's
    fields."""
    timing = latency_speedup(dense, compact, inputs, repeats=max(1, repeats // 3), rounds=3, threads=threads)
    return {
        "dense_latency_ms": timing["dense_s"] * 1e3,
        "pruned_latency_ms": timing["compact_s"] * 1e3,
        "speedup": timing["speedup"],
        "latency_threads": timing["threads"],
    }


def summary_table(rows: list[tuple[str, Any, Any]], title: str) -> str:
    """A plain-text table: (quantity, dense, pruned)."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return "" if value is None else str(value)

    cells = [("", "dense", "pruned")] + [(name, fmt(a), fmt(b)) for name, a, b in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [title, line]
    for i, row in enumerate(cells):
        out.append(
            "| "
            + " | ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths)))
            + " |"
        )
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def report(
    args: Any, summary: dict[str, Any], metric_rows: list[tuple[str, Any, Any]], batch_shape: str, title: str
) -> str:
    """The scripts' closing table: the task metrics, then parameters, sparsity and measured speed; printed, and
    ``summary`` written to ``summary.json`` in the output directory (main process only)."""
    table = summary_table(
        [
            *metric_rows,
            ("parameters", summary["dense_parameters"], summary["pruned_parameters"]),
            # a FLOPs or speedup target is shown in the metric rows (hf_l0.cost.targets.cost_target_summary)
            (
                "attention+FFN sparsity"
                + (
                    f" (target {args.target_sparsity:.3f})"
                    if getattr(args, "target_metric", "params") == "params"
                    else ""
                ),
                0.0,
                summary["reached_sparsity"],
            ),
            (f"CPU latency, batch {batch_shape} (ms)", summary["dense_latency_ms"], summary["pruned_latency_ms"]),
            ("speedup", 1.0, summary["speedup"]),
        ],
        title=title,
    )
    table += f"\nsaved to: {summary['saved_to']}   wall time: {summary['wall_seconds'] / 60:.1f} min"
    if args.should_save:
        write_json(os.path.join(args.output_dir, "summary.json"), summary)
    print(table, flush=True)
    return table


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Atomic JSON write (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
