"""Measuring compact models: CPU latency side by side, and the FLOPs that bound the ideal speedup."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .arch import get_adapter
from .patch import transformers_model


@torch.inference_mode()
def median_latency(model: nn.Module, inputs: Mapping[str, torch.Tensor], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time (seconds) of ``model(**inputs)`` over ``repeats`` runs, after ``warmup`` runs."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)


def latency_speedup(dense: nn.Module, compact: nn.Module, inputs: Mapping[str, torch.Tensor], repeats: int = 10,
                    rounds: int = 3, threads: int | None = None) -> dict[str, float]:
    """Dense and compact timed in alternating rounds of the same process (drifts in machine load hit both alike),
    with a fixed thread count (default: the current one); medians of the rounds' medians and dense / compact."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        dense_times, compact_times = [], []
        for _ in range(rounds):
            dense_times.append(median_latency(dense, inputs, repeats))
            compact_times.append(median_latency(compact, inputs, repeats))
    finally:
        torch.set_num_threads(previous)
    dense_s, compact_s = statistics.median(dense_times), statistics.median(compact_times)
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
