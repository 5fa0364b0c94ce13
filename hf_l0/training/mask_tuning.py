"""Least-squares mask tuning at the freeze (Kwon et al., 2022, "A fast post-training pruning framework").

Once the mask is fixed, every kept unit (head or FFN neuron) of a sublayer gets one scale, chosen by least squares so
that the sublayer's output projection, on the student's own inputs, reconstructs the dense teacher's output of the same
projection on a few calibration batches. Sublayers are tuned in order, each on the inputs its tuned predecessors give,
and the scales are folded into the output projection's columns, so the compact model stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """The projection's weight as [out, in] (a view: scaling it scales the module's weight)."""
    weight = base_layer(module).weight
    return weight if linear_axes(module) == (0, 1) else weight.t()


def _tokens(tensor: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
    """[tokens, features] of a captured activation, padding positions left out."""
    flat = tensor.reshape(-1, tensor.shape[-1]).double()
    mask = batch.get("attention_mask")
    return flat if mask is None or mask.numel() != flat.shape[0] else flat[mask.reshape(-1).bool()]


@torch.no_grad()
def tune_mask_least_squares(
    model: nn.Module, teacher: nn.Module, batches: Iterable[Mapping[str, Any]], damping: float = 1e-2
) -> dict[str, list[list[float]]]:
    """Scale every kept unit's columns of each output projection of the gated ``model`` (its mask frozen) by the
    least-squares solution that reconstructs ``teacher``'s projection output on ``batches`` (the normal equations
    summed over them), sublayer by sublayer. ``damping`` (relative to the mean diagonal) pulls the scales towards 1
    and keeps a nearly collinear system stable. Returns the scales by sublayer kind and layer. Not with
    hidden-dimension gates (the residual stream itself changes) nor on sharded parameters."""
    if hasattr(get_gates(model), "hidden"):
        raise ValueError("least-squares mask tuning reconstructs full hidden states: not with hidden-dimension gates.")
    student, dense = get_adapter(transformers_model(model)), get_adapter(teacher)
    batches = [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]
    was_training = model.training
    model.eval()
    scales: dict[str, list[list[float]]] = {kind: [] for kind in SUBLAYER_KINDS}
    try:
        for layer in range(student.num_layers):
            for kind in SUBLAYER_KINDS:
                sublayer, reference = getattr(student, kind)(layer), getattr(dense, kind)(layer)
                solution = None
                if sublayer is not None and reference is not None:
                    solution = _solve(model, teacher, sublayer, reference.output, batches, damping)
                scales[kind].append([] if solution is None else solution.tolist())
    finally:
        model.train(was_training)
    return scales


def _solve(
    model: nn.Module,
    teacher: nn.Module,
    sublayer: Any,
    reference: nn.Module,
    batches: list[dict[str, Any]],
    damping: float,
) -> torch.Tensor | None:
    """Tune one sublayer (see :func:`tune_mask_least_squares`): its kept units' scales, folded into its output
    projection, or None when it keeps no unit."""
    weight = _weight_out_in(sublayer.output)
    bias = base_layer(sublayer.output).bias
    width = sublayer.unit_width
    units = weight.shape[1] // width
    w = weight.double().reshape(weight.shape[0], units, width)
    # the normal equations over every unit, summed batch by batch (no activation is kept); a pruned unit's input is
    # 0, so its rows stay 0 and only the units seen active are solved for
    gram, rhs = w.new_zeros(units, units), w.new_zeros(units)
    active = torch.zeros(units, dtype=torch.bool, device=w.device)
    weight_gram = w[..., 0].t() @ w[..., 0] if width == 1 else None
    for batch in batches:
        x = _tokens(_capture(model, sublayer.output, batch, "input"), batch).reshape(-1, units, width)
        target = _tokens(_capture(teacher, reference, batch, "output"), batch)
        residual = target - (0.0 if bias is None else bias.double())
        active |= (x != 0).any(dim=(0, 2))
        if width == 1:  # neurons: G = (X^T X) * (W^T W), g = sum_t x_t * (W^T r_t)
            gram += (x[..., 0].t() @ x[..., 0]) * weight_gram
            rhs += ((residual @ w[..., 0]) * x[..., 0]).sum(0)
        else:  # heads: contributions c[t, u] = W_u x_{t, u}
            contributions = torch.einsum("tuw,duw->tud", x, w)
            gram += torch.einsum("tud,tvd->uv", contributions, contributions)
            rhs += torch.einsum("tud,td->u", contributions, residual)
    kept = active.nonzero().squeeze(-1)
    if kept.numel() == 0:
        return None
    gram, rhs = gram[kept][:, kept], rhs[kept]
    # ||C m - r||^2 + ridge ||m - 1||^2: shrinks towards the scales the units have (1), never above the reconstruction
    # error they start from
    ridge = damping * gram.diagonal().mean().clamp_min(1e-12)
    solution = torch.linalg.solve(gram + ridge * torch.eye(len(kept), dtype=gram.dtype), rhs + ridge)
    if not bool(torch.isfinite(solution).all()):
        return None
    factor = torch.ones(units, dtype=weight.dtype, device=weight.device)
    factor[kept] = solution.to(weight.dtype)
    weight.mul_(factor.repeat_interleave(width))
    return solution
