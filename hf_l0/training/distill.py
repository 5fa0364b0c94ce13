"""Distillation from the dense fine-tuned teacher (CoFi): logit KL with temperature, optional layerwise loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def logit_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T^2``, averaged over examples (or unmasked tokens).

    The ``T^2`` factor (Hinton et al.) keeps the gradient scale independent of the temperature. ``mask`` ([batch,
    seq] for token-level logits) selects the positions that count, e.g. those with a label.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: the teacher must predict the same labels/vocabulary."
        )
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_item = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    if mask is not None:
        mask = mask.to(per_item.dtype)
        return (per_item * mask).sum() / mask.sum().clamp_min(1.0) * temperature**2
    return per_item.mean() * temperature**2


class LayerwiseDistiller(nn.Module):
    """CoFi's layer distillation: MSE between a learned linear map of each student layer's hidden states and the
    matched teacher layer's (layer ``i`` to layer ``i``: the student is the pruned teacher, so layers correspond).

    Each map starts as the identity, so the loss starts at the student/teacher difference itself. The maps are
    trained with the model and belong in the optimizer and the checkpoint (:class:`hf_l0.L0Trainer` does both).
    """

    def __init__(self, hidden_size: int, num_layers: int, layers: list[int] | None = None) -> None:
        super().__init__()
        self.layers = list(range(1, num_layers + 1)) if layers is None else list(layers)  # 0 is the embeddings
        bad = [i for i in self.layers if not 0 <= i <= num_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: hidden states are numbered 0 (embeddings) to {num_layers}.")
        self.maps = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in self.layers)
        for linear in self.maps:
            nn.init.eye_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        student_hidden: tuple[torch.Tensor, ...],
        teacher_hidden: tuple[torch.Tensor, ...],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over matched layers of the MSE at the unmasked positions (``mask`` [batch, seq], 1 = real token)."""
        losses = []
        for linear, i in zip(self.maps, self.layers):
            student = linear(student_hidden[i].to(linear.weight.dtype))
            error = (student - teacher_hidden[i].to(student.dtype)).pow(2).mean(-1)
            if mask is not None:
                m = mask.to(error.dtype)
                losses.append((error * m).sum() / m.sum().clamp_min(1.0))
            else:
                losses.append(error.mean())
        return torch.stack(losses).mean()


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Raise before training when the teacher cannot teach this student (different labels or vocabulary)."""
    s, t = student.config, teacher.config
    if getattr(s, "model_type", None) != getattr(t, "model_type", None):
        raise ValueError(
            f"teacher model_type {t.model_type!r} differs from the student's {s.model_type!r}: "
            "distill from the dense fine-tuned version of the same model."
        )
    if getattr(s, "problem_type", None) != "regression" and type(student).__name__.endswith(
        "ForSequenceClassification"
    ):
        if s.num_labels != t.num_labels:
            raise ValueError(
                f"teacher predicts {t.num_labels} labels but the student {s.num_labels}: its logits "
                "cannot be distilled. Use a teacher fine-tuned on the same label set."
            )
        s_labels, t_labels = dict(s.id2label), dict(t.id2label)
        generic = all(str(v).startswith("LABEL_") for v in (*s_labels.values(), *t_labels.values()))
        if not generic and s_labels != t_labels:
            raise ValueError(
                f"teacher labels {t_labels} do not match the student's {s_labels}: the logits would "
                "be compared label by label in the wrong order. Use a teacher fine-tuned on this data."
            )
    if getattr(s, "vocab_size", None) != getattr(t, "vocab_size", None):
        raise ValueError(f"teacher vocab_size {t.vocab_size} differs from the student's {s.vocab_size}.")
    if s.hidden_size != t.hidden_size or s.num_hidden_layers != t.num_hidden_layers:
        raise ValueError(
            f"teacher shape (hidden {t.hidden_size}, {t.num_hidden_layers} layers) differs from the "
            f"student's (hidden {s.hidden_size}, {s.num_hidden_layers} layers): the student must be the "
            "gated copy of the dense teacher."
        )


class DistillationLoss:
    """CoFi's training loss against a frozen teacher: ``alpha`` x logit KL (temperature ``T``) + (1 - ``alpha``) x the
    model's task loss [+ ``layer_weight`` x the :class:`LayerwiseDistiller` loss].

    :class:`hf_l0.L0Trainer` computes its distillation loss with it, and a baseline that fine-tunes an already pruned
    model can use the very same loss (``benchmarks/`` do), so both get the same training signal. The teacher is put
    in eval mode without gradients here; ``layerwise`` (trainable layer maps) belongs in the caller's optimizer.
    """

    def __init__(
        self,
        teacher: nn.Module,
        alpha: float = 0.9,
        temperature: float = 2.0,
        layerwise: LayerwiseDistiller | None = None,
        layer_weight: float = 1.0,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill alpha={alpha} must lie in [0, 1] (weight of the logit KL).")
        if temperature <= 0:
            raise ValueError(f"distill temperature={temperature} must be > 0.")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature
        self.layerwise, self.layer_weight = layerwise, layer_weight

    def __call__(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """The loss of one batch and the student's outputs (``inputs`` may hold labels; the teacher never sees them)."""
        layerwise = self.layerwise is not None
        outputs = model(**inputs, output_hidden_states=layerwise)
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            teacher_outputs = self.teacher(**teacher_inputs, output_hidden_states=layerwise)
        mask = inputs.get("attention_mask") if outputs.logits.dim() == 3 else None
        loss = self.alpha * logit_kl(outputs.logits, teacher_outputs.logits, self.temperature, mask)
        if self.alpha < 1.0:
            if outputs.get("loss") is None:
                raise ValueError(
                    "distill_alpha < 1 mixes in the task loss, but the model returned none: the batches "
                    "need labels (or set --distill_alpha 1)."
                )
            loss = loss + (1.0 - self.alpha) * outputs.loss
        if layerwise:
            layer_loss = self.layerwise(
                outputs.hidden_states, teacher_outputs.hidden_states, inputs.get("attention_mask")
            )
            loss = loss + self.layer_weight * layer_loss
        return loss, outputs
