"""Measuring compact models: CPU latency side by side, and the FLOPs that bound the ideal speedup."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..arch import get_adapter
from ..gates.patch import transformers_model


@torch.inference_mode()
def latency_speedup(
    dense: nn.Module,
    compact: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    repeats: int = 10,
    rounds: int = 3,
    threads: int | None = None,
    warmup: int = 2,
) -> dict[str, float]:
    """Median wall time of ``model(**inputs)`` for both models and dense / compact, with a fixed thread count
    (default: the current one).

    The two models take turns forward by forward (``repeats * rounds`` each, after ``warmup`` each), so a slow spell
    of a shared machine hits both alike instead of one model's whole block of runs.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    modes = (dense.training, compact.training)
    dense.eval()
    compact.eval()
    try:
        times: tuple[list[float], list[float]] = ([], [])
        for step in range(warmup + repeats * rounds):
            for model, record in ((dense, times[0]), (compact, times[1])):
                start = time.perf_counter()
                model(**inputs)
                if step >= warmup:
                    record.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
        dense.train(modes[0])
        compact.train(modes[1])
    dense_s, compact_s = statistics.median(times[0]), statistics.median(times[1])
    return {"dense_s": dense_s, "compact_s": compact_s, "speedup": dense_s / compact_s, "threads": threads or previous}


def forward_flops(model: nn.Module, seq_len: int, batch: int = 1) -> int:
    """Multiply-add FLOPs (x2) of one forward pass: every Linear / Conv1D applied to every token, plus the attention
    scores and weighted sums (4 * seq_len^2 * query width per layer). Embedding lookups and norms are ignored."""
    model = transformers_model(model)
    tokens = batch * seq_len
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))
    adapter = get_adapter(model)
    query_width = 0
    for i in range(adapter.num_layers):
        attention = adapter.attention(i)
        if attention is not None:
            query_width += attention.num_units * attention.unit_width
    return 2 * tokens * weights + 4 * batch * seq_len * seq_len * query_width
