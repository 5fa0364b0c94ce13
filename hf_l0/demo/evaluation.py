"""The evaluation loops of the example scripts, shared with the benchmarks so both report the same numbers.

Accuracy and F1 are computed here with numpy rather than with the ``evaluate`` library: its stock metrics
(``evaluate.load("accuracy")``) are fetched from the Hub, and the scripts run offline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import default_data_collator


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 (positive class for 2 labels, macro otherwise), computed locally with numpy."""
    predictions = logits.argmax(-1)
    result = {"accuracy": float((predictions == labels).mean())}
    classes = [1] if logits.shape[-1] == 2 else list(range(logits.shape[-1]))
    f1s = []
    for c in classes:
        tp = float(((predictions == c) & (labels == c)).sum())
        fp = float(((predictions == c) & (labels != c)).sum())
        fn = float(((predictions != c) & (labels == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    result["f1"] = float(np.mean(f1s))
    return result


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """``Trainer(compute_metrics=...)``: :func:`metrics_from_logits` of an ``EvalPrediction``."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return metrics_from_logits(np.asarray(logits), np.asarray(eval_pred.label_ids))


@torch.no_grad()
def classifier_logits(
    model: nn.Module, dataset: Sequence[dict], collator: Callable[[list[dict]], dict], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Plain eval loop (no Trainer): the logits and labels of every example of ``dataset``, in order."""
    model.eval()
    logits, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        labels.append(batch.pop("labels").numpy())
        logits.append(model(**batch).logits.float().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_classifier(
    model: nn.Module, dataset: Sequence[dict], collator: Callable[[list[dict]], dict], batch_size: int = 64
) -> dict[str, float]:
    """Accuracy and F1 of :func:`classifier_logits`: the same numbers for the dense, gated and compact models."""
    return metrics_from_logits(*classifier_logits(model, dataset, collator, batch_size))


@torch.no_grad()
def perplexity(model: nn.Module, dataset: Sequence[dict], batch_size: int = 8) -> float:
    """exp of the mean causal-LM loss over ``dataset`` (blocks with ``labels``), batch by batch."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = default_data_collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        n = batch["input_ids"].shape[0]
        total += float(model(**batch).loss) * n
        count += n
    return math.exp(total / max(count, 1))
