"""One-shot structured pruning baselines, built on the same gates and surgery as L0 pruning.

Each baseline scores every attention unit (a head, or a KV group on GQA models: one KV head and its query heads) and
every FFN neuron, then :func:`importance_prune` removes the lowest-scoring ones under a parameter budget:

* :func:`magnitude_scores`: L2 norm of the weights each unit owns;
* :func:`fisher_scores`: Fisher / first-order Taylor importance (Kwon et al. 2022, LLM-Pruner): the squared gradient of
  a loss w.r.t. a multiplicative mask of ones on the unit's output, summed over calibration batches;
* :func:`activation_scores`: mean activation magnitude (Minitron, Muralidharan et al. 2024).

Scores are dicts ``{"heads": [layers, units], "ffn": [layers, neurons]}`` (float32, CPU), the layout of the gates in
:class:`hf_l0.L0Gates`, so they also initialize gates (:func:`hf_l0.init_gates_from_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..arch import Sublayer, get_adapter
from ..gates.config import L0Config
from ..gates.hard_concrete import GATE_KIND, GATE_KINDS
from ..gates.patch import get_gates, is_patched, patch_model, transformers_model, unpatch_model
from .prune import prune_model
from .slicing import base_layer, linear_axes

SCORED = tuple(kind.name for kind in GATE_KINDS if kind.level == "unit")  # the gate names a score dict holds
LossFn = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


def unit_weight_norms(sublayer: Sublayer) -> torch.Tensor:
    """L2 norm of all weights owned by each unit (its rows in the input projections and columns of the output)."""
    squares = torch.zeros(sublayer.num_units)
    for projection in sublayer.inputs:
        weight = base_layer(projection.module).weight.detach()
        rows = weight if linear_axes(projection.module)[0] == 0 else weight.t()  # [out features, in features]
        for offset, width in projection.blocks:  # unit u owns rows offset + u * width ... + width - 1 (unit_rows)
            block = rows[offset : offset + sublayer.num_units * width].float()
            squares += block.pow(2).reshape(sublayer.num_units, -1).sum(-1).cpu()
    weight = base_layer(sublayer.output).weight.detach()
    in_axis = linear_axes(sublayer.output)[1]
    per_feature = weight.pow(2).sum(dim=1 - in_axis)
    squares += per_feature.reshape(sublayer.num_units, sublayer.unit_width).sum(-1).float().cpu()
    return squares.sqrt()


def _sublayers(model: nn.Module) -> dict[str, list[Sublayer]]:
    adapter = get_adapter(transformers_model(model))
    sublayers = {
        name: [getattr(adapter, GATE_KIND[name].sublayer)(i) for i in range(adapter.num_layers)] for name in SCORED
    }
    if any(s is None for group in sublayers.values() for s in group):
        raise ValueError(f"{type(model).__name__} is already pruned (a sublayer was removed); score the dense model.")
    return sublayers


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """L2 norm of the weights each head (KV group) / neuron owns: its rows in the input projections and its columns
    in the output projection (peft adapters are ignored: the base weights are scored)."""
    return {name: torch.stack([unit_weight_norms(s) for s in group]) for name, group in _sublayers(model).items()}


@contextmanager
def unit_masks(model: nn.Module, requires_grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every gate of ``model`` outputs exactly 1 and the model is in eval mode (no dropout).

    Yields the head and FFN gate values, ``{"heads": ones [layers, units], "ffn": ones [layers, neurons]}``: with
    ``requires_grad`` the loss's gradient w.r.t. them is the gradient w.r.t. a multiplicative mask on each head's
    context vector (input of the attention output projection) and each neuron's activation (input of the FFN output
    projection). An unpatched model gets head + FFN gates for the block only; a patched model (e.g. inside
    `L0Trainer`) keeps its gates, whose own values are ignored here.
    """
    patched_here = not is_patched(model)
    if patched_here:
        patch_model(model, L0Config(heads=True, ffn=True, layers=False, hidden=False))
    gates = get_gates(model)
    ones = {name: torch.ones_like(gate.log_alpha.detach()) for name, gate in gates.named_gates()}
    masks = {name: ones[name].clone().requires_grad_(requires_grad) for name in SCORED if name in ones}

    def override(module: nn.Module, args: Any) -> None:
        # Runs after the gates' own refresh hook (registered earlier), so the hooks read these values instead.
        gates._values = {**ones, **masks}

    handle = transformers_model(model).register_forward_pre_hook(override)
    was_training = model.training
    model.eval()
    try:
        yield masks
    finally:
        handle.remove()
        gates._values = {}
        model.train(was_training)
        if patched_here:
            unpatch_model(model)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def task_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The default ``loss_fn``: the model's own loss (causal LM loss, classification loss, ...) on ``batch``."""
    loss = model(**batch).loss
    if loss is None:
        raise ValueError(
            "the model returned no loss: the calibration batches need labels, or pass "
            "loss_fn=lambda model, batch: ... returning a scalar loss."
        )
    return loss


def fisher_scores(
    model: nn.Module, batches: Iterable[Mapping[str, Any]], loss_fn: LossFn | None = None
) -> dict[str, torch.Tensor]:
    """Fisher (squared first-order Taylor) importance of every head (KV group) and FFN neuron.

    For each batch, the gradient of ``loss_fn(model, batch)`` (default: the model's own loss, so batches carry
    ``labels``) w.r.t. a mask of ones on each unit's output (see :func:`unit_masks`) is squared; the score is its
    mean over the batches (Kwon et al. 2022 sum per example; the batch gradient is the recipe of the reference runs
    and costs one backward per batch). On GQA models a KV group has one mask, shared by its query heads: its gradient
    is the sum of theirs, the first-order change of the loss when the whole group goes. The model runs in eval mode;
    its weights get no ``.grad``.
    """
    device = next(model.parameters()).device
    loss_fn = task_loss if loss_fn is None else loss_fn
    with unit_masks(model, requires_grad=True) as masks:
        names = list(masks)
        sums = {name: torch.zeros_like(masks[name], dtype=torch.float64) for name in names}
        count = 0
        for batch in batches:
            loss = loss_fn(model, _to_device(batch, device))
            grads = torch.autograd.grad(loss, [masks[n] for n in names], allow_unused=True)
            for name, grad in zip(names, grads):
                if grad is not None:
                    sums[name] += grad.detach().double().pow(2)
            count += 1
    if count == 0:
        raise ValueError("fisher_scores got no calibration batches.")
    return {name: (total / count).float().cpu() for name, total in sums.items()}


@torch.no_grad()
def activation_scores(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Activation importance (Minitron): per head, the mean L2 norm of its context vector (input of the attention
    output projection, one head_dim slice per head); per neuron, the mean ``|activation|`` at the input of the FFN
    output projection. Means run over all tokens of the batches (padding excluded when a batch has an
    ``attention_mask`` of the activations' shape). On GQA models a KV group's score is the sum of its query heads'.
    """
    device = next(model.parameters()).device
    adapter = get_adapter(transformers_model(model))
    head_dim, group = adapter.head_dim(), adapter.query_heads_per_unit()
    sublayers = _sublayers(model)
    sums = {name: torch.zeros(len(subs), subs[0].num_units, dtype=torch.float64) for name, subs in sublayers.items()}
    tokens = {name: torch.zeros(len(subs), 1, dtype=torch.float64) for name, subs in sublayers.items()}
    current: dict[str, torch.Tensor | None] = {"mask": None}

    def make_hook(name: str, i: int, sublayer: Sublayer) -> Callable:
        def pre_hook(module: nn.Module, args: Any) -> None:
            x = args[0].detach().double()
            if name == "heads":  # [..., units, heads per unit, head_dim] -> norm per head, summed over the group
                per_unit = x.reshape(*x.shape[:-1], sublayer.num_units, group, head_dim).norm(dim=-1).sum(-1)
            else:
                per_unit = x.abs()
            per_unit = per_unit.reshape(-1, sublayer.num_units)
            mask = current["mask"]
            if mask is not None and mask.numel() == per_unit.shape[0]:
                weight = mask.reshape(-1, 1).to(per_unit)
                sums[name][i] += (per_unit * weight).sum(0).cpu()
                tokens[name][i] += weight.sum().cpu()
            else:
                sums[name][i] += per_unit.sum(0).cpu()
                tokens[name][i] += per_unit.shape[0]

        return pre_hook

    with unit_masks(model):
        # Registered after the gates' hooks: they see the (all-ones) gated input, i.e. the dense activation.
        handles = [
            s.output.register_forward_pre_hook(make_hook(name, i, s))
            for name, subs in sublayers.items()
            for i, s in enumerate(subs)
        ]
        try:
            count = 0
            for batch in batches:
                batch = _to_device(batch, device)
                current["mask"] = batch.get("attention_mask")
                model(**batch)
                count += 1
        finally:
            for handle in handles:
                handle.remove()
    if count == 0:
        raise ValueError("activation_scores got no calibration batches.")
    return {name: (sums[name] / tokens[name].clamp_min(1)).float() for name in sums}


def _unit_costs(sublayers: list[Sublayer], hidden_size: int) -> tuple[int, int]:
    """(parameters per unit, parameters that stay with the sublayer: its output bias) of one layer's sublayer."""
    s = sublayers[0]
    return s.weights_per_unit() * hidden_size + s.biases_per_unit(), s.output_bias() * hidden_size


def keep_masks(model: nn.Module, scores: Mapping[str, torch.Tensor], target_sparsity: float) -> dict[str, torch.Tensor]:
    """Boolean masks ``{"heads", "ffn"}`` of the units :func:`importance_prune` keeps (``model`` is not changed).

    Heads (KV groups) and neurons are ranked globally across layers, each kind on its own scores. The fraction
    ``floor(target_sparsity * units)`` of heads goes first (lowest scores); then as many of the lowest-scoring neurons
    as bring the removed parameters closest to ``target_sparsity`` of the attention + FFN parameters (the output
    biases, which stay, included in the total) — within half a neuron's parameters of the target.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity={target_sparsity} must lie in [0, 1).")
    sublayers = _sublayers(model)
    hidden = get_adapter(transformers_model(model)).hidden_size
    for name, subs in sublayers.items():
        expected = (len(subs), subs[0].num_units)
        if name not in scores:
            raise ValueError(f"scores lack {name!r}: pass a dict with 'heads' and 'ffn' (e.g. from fisher_scores).")
        if tuple(scores[name].shape) != expected:
            raise ValueError(
                f"scores[{name!r}] has shape {tuple(scores[name].shape)}, the model needs {expected} "
                "(layers, units): were the scores computed on another model?"
            )
        if not torch.isfinite(scores[name]).all():
            raise ValueError(f"scores[{name!r}] holds NaN or infinite values.")
    costs = {name: _unit_costs(subs, hidden) for name, subs in sublayers.items()}
    units = {name: scores[name].numel() for name in SCORED}
    total = sum(len(sublayers[n]) * (units[n] // len(sublayers[n]) * costs[n][0] + costs[n][1]) for n in SCORED)
    remove = {"heads": math.floor(target_sparsity * units["heads"])}
    left = target_sparsity * total - remove["heads"] * costs["heads"][0]
    remove["ffn"] = min(max(round(left / costs["ffn"][0]), 0), units["ffn"])
    masks = {}
    for name in SCORED:
        flat = scores[name].detach().flatten().float()
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        # Stable order: among equal scores the later unit goes first, so ties break the same way on every run.
        order = torch.sort(flat, stable=True, descending=True).indices
        keep[order[: flat.numel() - remove[name]]] = True
        masks[name] = keep.reshape(scores[name].shape)
    return masks


def set_gates_to_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set a patched model's head / FFN gates so the deterministic (eval) gates are exactly ``masks`` (1 or 0)."""
    gates = get_gates(model)
    with torch.no_grad():
        for name, keep in masks.items():
            gate = getattr(gates, name)
            # Closed at -20, open at +20: the deterministic rule then keeps exactly the open ones, at value 1.
            gate.log_alpha.copy_(torch.where(keep.to(gate.log_alpha.device), 20.0, -20.0))


def importance_prune(model: nn.Module, scores: Mapping[str, torch.Tensor], target_sparsity: float) -> nn.Module:
    """Remove the lowest-scoring heads (KV groups) and FFN neurons of the dense, unpatched ``model`` down to
    ``target_sparsity`` of its attention + FFN parameters (see :func:`keep_masks`) and return the compact model
    (:func:`hf_l0.prune_model`: same class, kept weights unchanged)."""
    masks = keep_masks(model, scores, target_sparsity)
    patch_model(model, L0Config(heads=True, ffn=True, layers=False, hidden=False))
    set_gates_to_masks(model, masks)
    return prune_model(model)


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Structured magnitude pruning: :func:`importance_prune` with :func:`magnitude_scores`."""
    return importance_prune(model, magnitude_scores(model), sparsity)
