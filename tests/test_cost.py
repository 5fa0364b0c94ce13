"""FLOPs and latency cost models, and pruning to a FLOPs / latency target."""


import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model
from hf_l0.cost import (FlopsTarget, compact_flops, deterministic_flops, expected_flops, flops_reduction, full_flops,
                        make_cost_target)
from hf_l0.measure import forward_flops

from conftest import make_inputs, make_model

SEQ_LEN = 9
# (family, auto class): FlopCounterMode counts what actually runs, so only heads applied to every token (a BERT pooler
# reads one token per sequence; hf-l0 counts every Linear per token, as hf_l0.measure.forward_flops does).
PER_TOKEN_MODELS = [("bert", "AutoModelForTokenClassification"), ("gpt2", "AutoModelForCausalLM"),
                    ("llama", "AutoModelForCausalLM")]


def random_gates(model, seed: int) -> None:
    """Random log_alpha, a whole attention sublayer shut by its units and an FFN sublayer by its layer gate."""
    gates = hf_l0.get_gates(model)
    generator = torch.Generator().manual_seed(seed)
    layers = gates.heads.log_alpha.shape[0]
    with torch.no_grad():
        for gate in gates.gates().values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=generator) * 3.0)
        gates.heads.log_alpha[seed % layers] = -10.0
        if hasattr(gates, "ffn_layers"):
            gates.ffn_layers.log_alpha[(seed + 1) % layers] = -10.0
            gates.ffn.log_alpha[(seed + 1) % layers] = 10.0  # units open: only the layer gate removes it


def counted_flops(model, batch: int = 2, seq_len: int = SEQ_LEN) -> int:
    """FLOPs of the matrix products of one forward pass, as torch counts them while it runs."""
    inputs = make_inputs(seed=3, batch=batch, length=seq_len)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("family, auto_class", PER_TOKEN_MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_compact_flops_equal_deterministic_flops_and_what_runs(family, auto_class, seed):
    model = make_model(family, auto_class)
    dense_counted = counted_flops(model)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True, hidden=seed == 1 and family != "gpt2"))
    random_gates(model, seed)
    model.eval()
    dense = full_flops(model, SEQ_LEN).total
    predicted = deterministic_flops(model, SEQ_LEN).total
    assert 0 < float(predicted) < float(dense)
    compact = prune_model(model)
    structure = compact.config.l0_structure["layers"]
    assert any(layer["key_value_heads"] == 0 for layer in structure)
    assert any(layer["intermediate_size"] == 0 for layer in structure)
    assert float(predicted) == compact_flops(compact, SEQ_LEN)
    assert float(predicted) * 2 * SEQ_LEN == forward_flops(compact, SEQ_LEN, batch=2)
    # independent of hf-l0's own counting: torch's count of the products that run, dense and compact
    assert counted_flops(compact) == float(predicted) * 2 * SEQ_LEN
    assert dense_counted == float(dense) * 2 * SEQ_LEN


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_expected_flops_gradient_matches_finite_differences(family):
    auto_class = "AutoModelForSequenceClassification" if family == "bert" else "AutoModelForCausalLM"
    model = make_model(family, auto_class)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True, hidden=family != "gpt2"))
    random_gates(model, 0)
    gates = list(hf_l0.get_gates(model).gates().values())
    for gate in gates:
        gate.double()
    params = tuple(gate.log_alpha for gate in gates)

    def reduction(*log_alphas):
        originals = [gate.log_alpha for gate in gates]
        for gate, value in zip(gates, log_alphas):
            del gate.log_alpha
            gate.log_alpha = value  # a plain tensor that gradcheck perturbs
        try:
            return flops_reduction(model, SEQ_LEN)
        finally:
            for gate, original in zip(gates, originals):
                del gate.log_alpha
                gate.log_alpha = original

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(reduction, inputs, eps=1e-6, atol=1e-7)


def test_expected_flops_equal_deterministic_flops_when_gates_are_saturated():
    model = make_model("llama")
    patch_model(model, L0Config(heads=True, ffn=True, layers=True, hidden=True))
    random_gates(model, 2)
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates().values():
            gate.log_alpha.copy_(torch.where(gate.log_alpha > 0, 60.0, -60.0))
    model.eval()
    expected, deterministic = expected_flops(model, SEQ_LEN), deterministic_flops(model, SEQ_LEN)
    for part in ("attention", "ffn", "fixed"):
        assert float(getattr(expected, part).detach()) == pytest.approx(float(getattr(deterministic, part)), rel=1e-12)
    assert float(deterministic.total) < float(full_flops(model, SEQ_LEN).total)


def test_attention_scores_grow_with_the_sequence_length():
    model = patch_model(make_model("gpt2"), L0Config())
    short, long = full_flops(model, 8), full_flops(model, 64)
    assert float(long.ffn) == float(short.ffn) and float(long.fixed) == float(short.fixed)
    config = model.config
    assert float(long.attention - short.attention) == 4 * (64 - 8) * config.n_embd * config.n_layer


def test_bad_flops_targets_are_refused_with_the_reason():
    model = patch_model(make_model("gpt2"), L0Config(heads=True, ffn=False, layers=False))
    target = FlopsTarget(SEQ_LEN)
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            target.check_target(model, bad)
    fixed_share = target.fixed_cost(model) / float(full_flops(model, SEQ_LEN).total)
    with pytest.raises(ValueError, match="lm_head"):
        target.check_target(model, 1.0 - fixed_share / 2)  # beyond what even every gate shut removes
    maximum = target.max_reduction(model)
    assert maximum < 1.0 - fixed_share  # heads only: the FFN stays
    with pytest.raises(ValueError, match=f"at most {maximum:.4f}"):
        target.check_target(model, (maximum + 1.0 - fixed_share) / 2)
    target.check_target(model, maximum * 0.9)
    with pytest.raises(ValueError, match="target_metric='watts'"):
        make_cost_target("watts", model)
