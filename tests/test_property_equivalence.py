"""Property check of the core promise: for random structure sets, families and gate patterns, the gated model in eval
mode computes what the pruned model computes, and the deterministic size is the pruned model's parameter count.

Seeded random draws (reproducible, every structure set meets every family and head): one dense model per (family,
head) is built once and deep-copied per draw, which costs far less than building it.
"""

from __future__ import annotations

import copy
import itertools
import random
import time

import torch
from conftest import TASK_MODELS, make_inputs, make_model

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model

TOL = 1e-5
STRUCTURE_SETS = [
    dict(zip(("heads", "ffn", "hidden", "layers"), flags))
    for flags in itertools.product((False, True), repeat=4)
    if any(flags)
]  # 15 sets
UNIFORM_DRAWS = 40  # extra draws with uniform targets (target_heads / _intermediate_size / _hidden_size)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _outputs(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    final = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return [*out.hidden_states, final]


def _draw_gates(model, rng: random.Random) -> None:
    """Random log_alpha (random spread and shift, so anything from nearly all open to nearly all shut), survivors with
    values strictly inside (0, 1), whole rows of units shut (a sublayer left with no head / neuron) and shut layer
    gates; at least one hidden dimension survives."""
    gates = hf_l0.get_gates(model)
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    with torch.no_grad():
        for name, gate in gates.named_gates():
            spread, shift = rng.uniform(0.5, 4.0), rng.uniform(-2.0, 3.0)
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=generator) * spread + shift)
            if name in ("heads", "ffn"):
                for row in range(gate.log_alpha.shape[0]):
                    if rng.random() < 0.25:
                        gate.log_alpha[row] = -10.0
            elif name in ("attention_layers", "ffn_layers"):
                for row in range(gate.log_alpha.shape[0]):
                    if rng.random() < 0.3:
                        gate.log_alpha[row] = rng.choice((-10.0, 10.0))
            elif name == "hidden":
                gate.log_alpha[rng.randrange(gate.log_alpha.numel())] = 10.0


def _uniform_config(rng: random.Random, model) -> L0Config:
    gates_of = {"heads": rng.random() < 0.8, "ffn": rng.random() < 0.8, "hidden": rng.random() < 0.5}
    if not any(gates_of.values()):
        gates_of["ffn"] = True
    units = (
        model.config.num_key_value_heads
        if hasattr(model.config, "num_key_value_heads")
        else model.config.num_attention_heads
    )
    return L0Config(
        **gates_of,
        layers=False,
        target_heads=rng.randint(0, units) if gates_of["heads"] else None,
        target_intermediate_size=rng.randint(0, 37 if model.config.model_type != "gpt2" else 128)
        if gates_of["ffn"]
        else None,
        target_hidden_size=rng.randint(1, model.config.hidden_size) if gates_of["hidden"] else None,
    )


def _check_one(base, config: L0Config, rng: random.Random, inputs) -> float:
    model = copy.deepcopy(base)
    dense_params = _params(model)
    patch_model(model, config)
    _draw_gates(model, rng)
    gated = _outputs(model, inputs)
    full, kept = hf_l0.full_size(model).total.item(), hf_l0.deterministic_size(model).total.item()
    sparsity = hf_l0.deterministic_sparsity(model).item()
    hidden = hf_l0.get_gates(model).deterministic().get("hidden")
    keep = hidden != 0 if hidden is not None else None
    prune_model(model)
    pruned = _outputs(model, inputs)
    assert dense_params - _params(model) == int(full - kept), (config, dense_params, _params(model), full, kept)
    structure = model.config.l0_structure
    assert 0.0 <= sparsity <= 1.0 and structure is not None
    mask = inputs["attention_mask"].bool()
    worst = 0.0
    # A dropped (identity) layer has no hidden state of its own. The gated states are the embeddings, each layer's
    # output and, last, the final norm's output (which replaces the last layer's); the pruned model's are the same for
    # the kept layers.
    dropped = structure.get("dropped_layers", [])
    if dropped:
        num_layers = len(gated) - 2  # gated: states 0..L, then the task output
        kept = [i for i in range(num_layers) if i not in dropped]
        positions = [0, *(i + 1 for i in kept[:-1]), num_layers, num_layers + 1]
        gated = [gated[j] for j in positions]
    assert len(gated) == len(pruned)
    for a, b in zip(gated, pruned):
        if keep is not None and a.shape[-1] == keep.numel() and b.shape[-1] == int(keep.sum()):
            assert (a[..., ~keep] == 0).all(), config
            a = a[..., keep]
        diff = (a - b).abs()[mask] if a.dim() == 3 else (a - b).abs()
        worst = max(worst, diff.max().item())
    assert worst <= TOL, (config, worst)
    return worst, len(dropped)


def test_random_structures_families_and_gates_prune_exactly():
    torch.manual_seed(0)
    bases = {
        (family, auto_class): make_model(family, auto_class, seed=i)
        for i, (family, auto_class) in enumerate(TASK_MODELS)
    }
    inputs = make_inputs(batch=2, length=7)
    rng = random.Random(12)
    draws = [(key, L0Config(**structures)) for key, structures in itertools.product(bases, STRUCTURE_SETS)]
    keys = list(bases)
    draws += [(keys[i % len(keys)], None) for i in range(UNIFORM_DRAWS)]
    start, worst, dropped = time.perf_counter(), 0.0, 0
    for key, config in draws:
        config = config if config is not None else _uniform_config(rng, bases[key])
        diff, dropped_here = _check_one(bases[key], config, rng, inputs)
        worst, dropped = max(worst, diff), dropped + dropped_here
    elapsed = time.perf_counter() - start
    assert len(draws) >= 200 and dropped > 0  # the draws reach decoder layers that pruning drops
    print(f"\n{len(draws)} draws, {dropped} layers dropped, max |gated - pruned| = {worst:.3g}, {elapsed:.1f} s")
