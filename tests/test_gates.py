import math

import pytest
import torch

import hf_l0
from hf_l0 import HardConcreteGate, L0Config


def test_training_samples_are_stochastic_in_unit_interval_and_differentiable():
    gate = HardConcreteGate((4, 50), droprate_init=0.5).train()
    z1, z2 = gate(), gate()
    assert z1.shape == (4, 50)
    assert (z1 >= 0).all() and (z1 <= 1).all()
    assert not torch.equal(z1, z2)
    assert ((z1 == 0) | (z1 == 1)).any(), "the stretch-and-clamp must reach exact 0 / 1"
    z1.sum().backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0


def test_expected_l0_formula_and_initial_keep_probability():
    gate = HardConcreteGate(1000, droprate_init=0.3, init_std=0.0)
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    manual = torch.sigmoid(gate.log_alpha - beta * math.log(-gamma / zeta)).sum()
    assert torch.allclose(gate.expected_l0(), manual)
    assert gate.prob_nonzero()[0].item() == pytest.approx(0.7, abs=1e-6)
    gate.expected_l0().backward()
    assert (gate.log_alpha.grad > 0).all()


def test_sample_frequency_of_nonzero_matches_prob_nonzero():
    torch.manual_seed(0)
    gate = HardConcreteGate(1, droprate_init=0.4, init_std=0.0).train()
    samples = torch.stack([gate() for _ in range(20000)])
    assert (samples != 0).float().mean().item() == pytest.approx(0.6, abs=0.015)


def test_eval_is_deterministic_and_keeps_expected_count():
    torch.manual_seed(0)
    gate = HardConcreteGate((3, 40))
    with torch.no_grad():
        gate.log_alpha.normal_(0, 3)
    gate.eval()
    z1, z2 = gate(), gate()
    assert torch.equal(z1, z2)
    expected = round(gate.expected_l0().item())
    kept = gate.keep_mask()
    assert kept.sum().item() == expected
    # the survivors are exactly the largest log_alpha
    assert gate.log_alpha[kept].min() >= gate.log_alpha[~kept].max()
    # survivors take the paper's value; large log_alpha gives exactly 1
    with torch.no_grad():
        gate.log_alpha.fill_(10.0)
    assert torch.equal(gate(), torch.ones(3, 40))


def test_keep_per_row_and_binary():
    gate = HardConcreteGate((5, 12), binary=True)
    with torch.no_grad():
        gate.log_alpha.normal_(0, 2)
    gate.keep_per_row = 4
    z = gate.eval()()
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    assert (z.sum(-1) == 4).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(heads=False, ffn=False, hidden=False, layers=False), "gates nothing"),
        (dict(droprate_init=0.0), "droprate_init"),
        (dict(temperature=-1.0), "temperature"),
        (dict(limit_left=0.1), "limit_left < 0"),
        (dict(target_heads=2, heads=False), "needs its gates"),
        (dict(target_heads=2, layers=True), "set layers=False"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L0Config(**kwargs)


def test_config_roundtrip(tmp_path):
    config = L0Config(hidden=True, droprate_init=0.2, layers=True)
    config.save_pretrained(tmp_path)
    assert L0Config.from_pretrained(tmp_path) == config
    assert L0Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown L0Config fields"):
        L0Config.from_dict({"hiden": True})


def test_the_target_is_a_training_setting_not_a_config_field(tmp_path):
    """L0Config describes structure only: a target in it is refused with where to set it instead."""
    with pytest.raises(TypeError):
        L0Config(hidden=True, target_sparsity=0.6)
    with pytest.raises(ValueError, match="target_sparsity is not an L0Config field.*L0TrainingArguments"):
        L0Config.from_dict({"heads": True, "target_sparsity": 0.6})
    with pytest.raises(ValueError, match="target_sparsity is not an L0Config field"):
        hf_l0.L0TrainingArguments(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to=[],
            target_sparsity=0.5,
            l0_config={"heads": True, "target_sparsity": 0.6},
        )


def test_gate_scaling_gradients_equal_plain_multiplication():
    """The gate product keeps its output (not its input) for backward and recovers the input from it."""
    from hf_l0.gates.patch import _GateScale

    x = torch.randn(3, 5, 6, dtype=torch.double, requires_grad=True)
    for scale in (torch.rand(6, dtype=torch.double) + 0.05, torch.tensor(0.3, dtype=torch.double)):
        assert torch.autograd.gradcheck(_GateScale.apply, (x, scale.requires_grad_()))
    # An entry at exactly 0 (a hard concrete sample clamped shut, whose own gradient is 0) passes no gradient.
    scale = torch.tensor([0.0, 0.5, 1.0, 0.0, 0.2, 0.7], dtype=torch.double, requires_grad=True)
    reference = scale.detach().clone().requires_grad_()
    grad = torch.randn(3, 5, 6, dtype=torch.double)
    (_GateScale.apply(x, scale) * grad).sum().backward()
    x_grad = x.grad.clone()
    x.grad = None
    (x * reference * grad).sum().backward()
    assert torch.allclose(x_grad, x.grad)
    assert torch.allclose(scale.grad[scale != 0], reference.grad[scale != 0])
    assert (scale.grad[scale == 0] == 0).all()


def test_kept_gates_never_fall_to_zero_so_the_count_is_the_rounded_expected_l0():
    # a crowd below the paper's zero crossing (log_alpha = -2.4): P(z != 0) is about 0.28 each, so about 28 of 100 are
    # kept; the paper's value alone is 0 for all of them and would prune every one
    gate = HardConcreteGate(100)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.linspace(-2.6, -2.5, 100))
    gate.eval()
    values = gate()
    paper = (torch.sigmoid(gate.log_alpha) * (gate.limit_right - gate.limit_left) + gate.limit_left).clamp(0, 1)
    assert not paper.any()
    expected_count = round(gate.prob_nonzero().sum().item())
    assert expected_count > 0
    assert int((values != 0).sum()) == expected_count
    assert values[values != 0].min() > 0.04  # CoFi's soft value sigmoid(0.8 * log_alpha / beta) at -2.5: 0.047


def test_one_gate_table_drives_the_gates_a_config_creates():
    """Every gate of a patched model is one GATE_KINDS entry switched on by its L0Config flag, in table order; the
    sizes' per-layer counts are a declared attribute computed at patch time (not a hidden cache)."""
    from conftest import make_model

    from hf_l0.cost.layout import SizeLayout
    from hf_l0.gates.config import STRUCTURES
    from hf_l0.gates.hard_concrete import GATE_KINDS, sublayer_gate_names

    assert {kind.switch for kind in GATE_KINDS} == set(STRUCTURES)
    assert sublayer_gate_names("attention") == ("heads", "attention_layers")
    assert sublayer_gate_names("ffn") == ("ffn", "ffn_layers")
    configs = (
        L0Config(hidden=True, layers=True),
        L0Config(heads=False, layers=False),
        L0Config(ffn=False, hidden=True, layers=True),
    )
    for config in configs:
        model = hf_l0.patch_model(make_model("bert"), config)
        gates = hf_l0.get_gates(model)
        assert list(gates.gates) == [k.name for k in GATE_KINDS if getattr(config, k.switch)]
        pairs = list(gates.named_gates())  # (name, module) pairs, like nn.Module's named_* methods
        assert [name for name, _ in pairs] == list(gates.gates) and all(gates.gates[n] is g for n, g in pairs)
        assert isinstance(gates.size_layout, SizeLayout)
        hf_l0.expected_sparsity(model)
        assert "_size_layout" not in vars(gates)


def test_deterministic_sparsity_is_what_pruning_keeps_and_has_no_gradient():
    from conftest import make_model

    model = hf_l0.patch_model(make_model("llama"), L0Config(layers=True))
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.normal_(0.0, 3.0)
    reached = hf_l0.deterministic_sparsity(model)
    assert 0.0 < reached.item() < 1.0 and not reached.requires_grad
    assert hf_l0.expected_sparsity(model).requires_grad


def test_default_structures_are_heads_and_ffn(tmp_path):
    # Whole-sublayer gates are opt-in (they move the size a sublayer at a time); the library and the training
    # arguments agree on the default.
    assert L0Config().structures == ("heads", "ffn")
    args = hf_l0.L0TrainingArguments(output_dir=str(tmp_path), report_to="none", target_sparsity=0.5)
    assert args.resolved_l0_config().structures == L0Config().structures
