"""Least-squares mask tuning at the freeze (Kwon et al., 2022, "A fast post-training pruning framework").

Once the mask is fixed, every kept unit (head or FFN neuron) of a sublayer gets one scale, chosen by least squares so
that the sublayer's output projection, on the student's own inputs, reconstructs the dense teacher's output of the same
projection on one batch. Sublayers are tuned in order, each on the inputs its tuned predecessors give, and the scales
are folded into the output projection's columns, so the compact model stays exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..arch.base import get_adapter
from ..gates.hard_concrete import SUBLAYER_KINDS
from ..gates.patch import get_gates, transformers_model
from ..pruning.slicing import base_layer, linear_axes


def _capture(model: nn.Module, module: nn.Module, inputs: Mapping[str, Any], what: str) -> torch.Tensor:
    """The input (after the gates' pre-hooks) or the output of ``module`` in one forward of ``model``."""
    seen: list[torch.Tensor] = []

    def pre_hook(mod, args):
        seen.append(args[0].detach())

    def hook(mod, args, output):
        seen.append(output.detach())

    handle = module.register_forward_pre_hook(pre_hook) if what == "input" else module.register_forward_hook(hook)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return seen[0]


def _teacher_outputs(
    teacher: nn.Module, adapter: Any, inputs: Mapping[str, Any]
) -> dict[tuple[int, str], torch.Tensor]:
    """Every output projection's output of the teacher in one forward, by (layer, sublayer kind)."""
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for layer in range(adapter.num_layers):
        for kind in SUBLAYER_KINDS:
            sublayer = getattr(adapter, kind)(layer)
            if sublayer is not None:
                key = (layer, kind)
                handles.append(
                    sublayer.output.register_forward_hook(
                        lambda m, a, out, key=key: seen.__setitem__(key, out.detach())
                    )
                )
    try:
        teacher(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """The projection's weight as [out, in] (a view: scaling it scales the module's weight)."""
    weight = base_layer(module).weight
    return weight if linear_axes(module) == (0, 1) else weight.t()


@torch.no_grad()
def tune_mask_least_squares(
    model: nn.Module, teacher: nn.Module, inputs: Mapping[str, Any], damping: float = 1e-2
) -> dict[str, list[list[float]]]:
    """Scale every kept unit's columns of each output projection of the gated ``model`` (its mask frozen) by the
    least-squares solution that reconstructs ``teacher``'s projection output on ``inputs`` (one batch), sublayer by
    sublayer. ``damping`` (relative to the mean diagonal) pulls the scales towards 1 and keeps a nearly collinear
    system stable. Returns the scales by sublayer kind and layer. Not with hidden-dimension gates (the residual
    stream itself changes) nor on sharded parameters."""
    gates = get_gates(model)
    if hasattr(gates, "hidden"):
        raise ValueError("least-squares mask tuning reconstructs full hidden states: not with hidden-dimension gates.")
    student, dense = get_adapter(transformers_model(model)), get_adapter(teacher)
    tokens = inputs.get("attention_mask")
    keep = None if tokens is None else tokens.reshape(-1).bool()
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    was_training = model.training
    model.eval()
    targets = _teacher_outputs(teacher, dense, model_inputs)
    scales: dict[str, list[list[float]]] = {kind: [] for kind in SUBLAYER_KINDS}
    try:
        for layer in range(student.num_layers):
            for kind in SUBLAYER_KINDS:
                sublayer, target = getattr(student, kind)(layer), targets.get((layer, kind))
                if sublayer is None or target is None:
                    scales[kind].append([])
                    continue
                x = _capture(model, sublayer.output, model_inputs, "input")
                x, target = x.reshape(-1, x.shape[-1]).double(), target.reshape(-1, target.shape[-1]).double()
                if keep is not None and keep.numel() == x.shape[0]:
                    x, target = x[keep], target[keep]
                weight = _weight_out_in(sublayer.output)
                bias = base_layer(sublayer.output).bias
                residual = target - (0.0 if bias is None else bias.double())
                width, units = sublayer.unit_width, x.shape[-1] // sublayer.unit_width
                w = weight.double().reshape(weight.shape[0], units, width)
                xu = x.reshape(x.shape[0], units, width)
                kept = (xu != 0).any(dim=(0, 2)).nonzero().squeeze(-1)
                if kept.numel() == 0:
                    scales[kind].append([])
                    continue
                if width == 1:  # neurons: G = (X^T X) * (W^T W), g = sum_t x_t * (W^T r_t)
                    xk, wk = xu[:, kept, 0], w[:, kept, 0]
                    gram = (xk.t() @ xk) * (wk.t() @ wk)
                    rhs = ((residual @ wk) * xk).sum(0)
                else:  # heads: contributions c[t, u] = W_u x_{t, u}
                    contributions = torch.einsum("tuw,duw->tud", xu[:, kept], w[:, kept])
                    gram = torch.einsum("tud,tvd->uv", contributions, contributions)
                    rhs = torch.einsum("tud,td->u", contributions, residual)
                # ||C m - r||^2 + ridge ||m - 1||^2: shrinks towards the scales the unit has (1), never above the
                # reconstruction error it starts from
                ridge = damping * gram.diagonal().mean().clamp_min(1e-12)
                solution = torch.linalg.solve(gram + ridge * torch.eye(len(kept), dtype=gram.dtype), rhs + ridge)
                if not bool(torch.isfinite(solution).all()):
                    scales[kind].append([])
                    continue
                factor = torch.ones(units, dtype=weight.dtype, device=weight.device)
                factor[kept] = solution.to(weight.dtype)
                weight.mul_(factor.repeat_interleave(width))
                scales[kind].append(solution.tolist())
    finally:
        model.train(was_training)
    return scales
