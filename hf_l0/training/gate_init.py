"""Gates that start ordered by an importance score instead of all alike.

With a short pruning budget the gates have few steps to find out which heads and neurons matter; starting them
ordered by a cheap importance score (:mod:`hf_l0.pruning.baselines`) hands them that ranking at step 0. The start stays
"near all open": the mean ``P(z != 0)`` of every gate tensor is exactly what the uniform start gives
(``1 - droprate_init``, 0.99 by default), so the expected size at init, and with it the Lagrangian's start, do not
change; only the ordering does.

From a custom loop::

    scores = hf_l0.fisher_scores(model, calibration_batches)   # before or after patch_model
    hf_l0.patch_model(model, config)
    hf_l0.init_gates_from_scores(model, scores)

`L0Trainer` does the same on the first ``gate_init_batches`` training batches with ``gate_init="fisher"``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..gates.patch import get_gates, transformers_model
from ..pruning.baselines import LossFn, activation_scores, fisher_scores, magnitude_scores
from .distill import logit_kl

GATE_INITS = ("uniform", "fisher", "taylor", "activation", "magnitude")  # "taylor" is another name for "fisher"
DEFAULT_SCALE = 1.0


def _standardized_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks of ``scores`` (ties share their mean rank), shifted and scaled to mean 0 and standard deviation 1."""
    flat = scores.detach().flatten().double()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=torch.float64)
    _, inverse = torch.unique(flat, return_inverse=True)
    counts = torch.bincount(inverse).double()
    ranks = (torch.zeros_like(counts).index_add_(0, inverse, ranks) / counts)[inverse]
    std = ranks.std(unbiased=False)
    centered = ranks - ranks.mean()
    return (centered / std if std > 0 else centered).reshape(scores.shape)


@torch.no_grad()
def init_gates_from_scores(
    model: nn.Module, scores: Mapping[str, torch.Tensor], scale: float = DEFAULT_SCALE, keep_open: float | None = None
) -> None:
    """Set the ``log_alpha`` of a patched model's gates from importance scores: more important, more open.

    ``scores`` maps gate names (``"heads"``, ``"ffn"``; e.g. from :func:`hf_l0.fisher_scores`) to tensors of the
    gates' shapes; gates without a score keep their values. For each scored gate tensor,
    ``log_alpha = base + scale * r``, with ``r`` the scores' ranks standardized to mean 0 and standard deviation 1
    over the whole tensor (so any monotone rescaling of the scores gives the same gates, and heads and neurons are
    ordered within their own kind only), and ``base`` solved so that the mean ``P(z != 0)`` equals ``keep_open``
    (default: the uniform start's, ``1 - droprate_init`` of the model's `L0Config`). Standardized ranks span
    ``sqrt(12 (n - 1) / (n + 1))`` (about ±1.7), so the default ``scale=1.0`` puts the most important unit about
    3.5 log-odds above the least important one: a head start of a few steps at the trainer's gate learning rates
    (Adam moves each log_alpha by about ``gate_learning_rate`` per step), which training can still overturn.
    """
    if scale < 0 or not math.isfinite(scale):
        raise ValueError(f"scale={scale} must be a finite number >= 0 (0 gives the uniform start).")
    gates = get_gates(model)
    named = gates.gates
    droprate_init = transformers_model(model).l0_config.droprate_init
    for name, score in scores.items():
        gate = named.get(name)
        if gate is None:
            raise ValueError(f"scores[{name!r}] has no gate: the model has gates {sorted(named)}.")
        if tuple(score.shape) != tuple(gate.log_alpha.shape):
            raise ValueError(
                f"scores[{name!r}] has shape {tuple(score.shape)}, the gate {tuple(gate.log_alpha.shape)}"
                ": were the scores computed on another model?"
            )
        if not torch.isfinite(score).all():
            raise ValueError(f"scores[{name!r}] holds NaN or infinite values.")
        offset = gate.temperature * math.log(-gate.limit_left / gate.limit_right)  # P(z != 0) = sigmoid(la - off)
        target = 1.0 - droprate_init if keep_open is None else keep_open
        if not 0.0 < target < 1.0:
            raise ValueError(f"keep_open={target} must lie strictly between 0 and 1.")
        spread = scale * _standardized_ranks(score).to(gate.log_alpha.device)
        low, high = -60.0, 60.0  # the mean of sigmoid(base + spread - offset) rises monotonically with base
        for _ in range(100):
            base = (low + high) / 2
            if torch.sigmoid(base + spread.double() - offset).mean() < target:
                low = base
            else:
                high = base
        gate.log_alpha.copy_((low + high) / 2 + spread)


def gate_scores(
    method: str, model: nn.Module, batches: Iterable[Mapping[str, Any]] | None = None, loss_fn: LossFn | None = None
) -> dict[str, torch.Tensor]:
    """The scores of one of :data:`GATE_INITS` (other than ``"uniform"``) on ``model`` and calibration ``batches``."""
    if method in ("fisher", "taylor"):
        return fisher_scores(model, batches, loss_fn)
    if method == "activation":
        return activation_scores(model, batches)
    if method == "magnitude":
        return magnitude_scores(model)
    raise ValueError(f"gate_init={method!r}: choose one of {', '.join(GATE_INITS)}.")


def gate_init_callback(trainer: Any) -> Any:
    """A `TrainerCallback` that initializes an `L0Trainer`'s gates from importance scores on its first
    ``args.gate_init_batches`` training batches when training begins (not when it resumes: a checkpoint's gates are
    kept). The batches are read under a forked RNG, so training sees the same batches as without it."""
    from transformers import TrainerCallback  # imported here: it pulls in accelerate, which `import hf_l0` avoids

    class GateInitCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any):
            if state.global_step > 0 or getattr(trainer, "_gates_initialized", False):
                return
            model = trainer._gated_model()
            batches = None
            if args.gate_init != "magnitude":
                loader = train_dataloader if train_dataloader is not None else trainer.get_train_dataloader()
                devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
                with torch.random.fork_rng(devices=devices):
                    batches = list(itertools.islice(iter(loader), args.gate_init_batches))
            scores = gate_scores(args.gate_init, model, batches, _trainer_loss(trainer))
            init_gates_from_scores(model, scores, scale=args.gate_init_scale)
            trainer._gates_initialized = True

    return GateInitCallback()


def _trainer_loss(trainer: Any) -> LossFn:
    """The task loss of the batches; without labels (e.g. pure distillation), the logit KL to the trainer's teacher."""

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        outputs = model(**batch)
        if outputs.get("loss") is not None:
            return outputs.loss
        if trainer.teacher is None:
            raise ValueError(
                "gate_init needs a loss on the calibration batches: they carry no labels and the trainer "
                "has no teacher to distill from; add labels or use gate_init='activation'."
            )
        with torch.no_grad():
            teacher_logits = trainer.teacher(**batch).logits
        mask = batch.get("attention_mask") if outputs.logits.dim() == 3 else None
        return logit_kl(outputs.logits, teacher_logits, trainer.args.distill_temperature, mask)

    return loss_fn
