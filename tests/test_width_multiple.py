"""``L0Config.width_multiple``: every kept width is a multiple of N dimensions (or the full width) in the eval-mode
gates, hence in the compact model, its parameter count and the sparsity the controller's snap reaches."""

import itertools
import json
import math

import pytest
import torch
import transformers as tf
from conftest import CONFIGS, make_inputs, model_output
from helpers import randomize_

import hf_l0
from hf_l0 import HardConcreteGate, L0Config
from hf_l0.arch import get_adapter
from hf_l0.pruning.prune import pruned_copy
from hf_l0.training.lagrangian import snap_to_target

TOL = 1e-5


def tiny_model(family: str, auto_class: str, seed: int = 0, **config_fields):
    """A tiny random model of ``family`` (tests/conftest.py's config with ``config_fields`` changed), random biases."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    for name, value in config_fields.items():
        setattr(config, name, value)
    config._attn_implementation = "eager"
    if auto_class == "AutoModelForSequenceClassification":
        config.num_labels = 3
    return randomize_(getattr(tf, auto_class).from_config(config), seed).eval()


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def spread_gates(model, seed: int) -> None:
    """Random ``log_alpha`` with a different mean per layer, so the kept counts differ from layer to layer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            shape = gate.log_alpha.shape
            rows = torch.linspace(-1.5, 2.5, shape[0]).unsqueeze(-1) if len(shape) == 2 else -1.0
            gate.log_alpha.copy_(torch.randn(shape, generator=generator) * 2.0 + rows)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def row_counts(value: torch.Tensor) -> list[int]:
    return (value != 0).reshape(-1, value.shape[-1]).sum(-1).tolist()


# (family, task class, config changes, seed): Llama with 6 KV groups of 2 query heads (GQA), so that a step of 2 or 3
# groups leaves counts to choose; head_dim is 8 everywhere. width_multiple 12 (head step 3, FFN 37 = 3 blocks + 1)
# and 16 (head step 2) make the step of every gate kind > 1.
FAMILIES = [
    ("bert", "AutoModelForSequenceClassification", {}, 0),
    ("gpt2", "AutoModelForCausalLM", {}, 0),
    ("llama", "AutoModelForCausalLM", dict(num_attention_heads=12, num_key_value_heads=6, head_dim=8), 1),
]


@pytest.mark.parametrize("width_multiple", [12, 16])
@pytest.mark.parametrize("family, auto_class, config_fields, seed", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_kept_width_is_a_multiple_and_the_gated_model_equals_the_compact_one(
    family, auto_class, config_fields, seed, width_multiple
):
    model = tiny_model(family, auto_class, **config_fields)
    adapter = get_adapter(model)
    hidden_size, head_dim = adapter.hidden_size, adapter.head_dim()
    dense_units, dense_ffn = adapter.attention(0).num_units, adapter.ffn(0).num_units
    assert head_dim == head_dim_of(model.config)
    hf_l0.patch_model(model, L0Config(heads=True, ffn=True, hidden=True, width_multiple=width_multiple))
    spread_gates(model, seed)
    gates = hf_l0.get_gates(model)
    steps = {"heads": width_multiple // math.gcd(width_multiple, head_dim), "ffn": width_multiple}
    steps["hidden"] = width_multiple
    assert all(step > 1 for step in steps.values())
    for name, value in gates.deterministic().items():
        width, step = value.shape[-1], steps[name]
        assert gates.gates[name].unit_multiple == step
        counts = row_counts(value)
        assert all(count % step == 0 or count == width for count in counts), (name, step, counts)
        assert any(0 < count < width for count in counts), (name, counts)  # the rule had a count to choose
    assert len(set(row_counts(gates.deterministic()["ffn"]))) > 1  # layers keep different widths
    inputs = make_inputs()
    gated = model_output(model, inputs)
    full, kept = hf_l0.full_size(model).total.item(), hf_l0.deterministic_size(model).total.item()
    dense_params = params(model) - params(gates)

    compact = hf_l0.prune_model(model)
    mask = inputs["attention_mask"].bool()
    diff = (gated - model_output(compact, inputs)).abs()
    assert (diff[mask] if diff.dim() == 3 else diff).max().item() <= TOL
    assert dense_params - params(compact) == int(full - kept)  # the deterministic size is the compact model's
    structure = compact.config.l0_structure  # what the compact model is: each width a multiple, or the full one
    assert structure["hidden_size"] % width_multiple == 0 or structure["hidden_size"] == hidden_size
    for layer in structure["layers"]:
        units, ffn = layer["key_value_heads"], layer["intermediate_size"]
        assert units * structure["head_dim"] % width_multiple == 0 or units == dense_units, layer
        assert ffn % width_multiple == 0 or ffn == dense_ffn, layer


def best_total_and_score(log_alpha: torch.Tensor, allowed: list[int], k: int) -> tuple[int, dict[int, float]]:
    """Brute force over every choice of an allowed count per row: the distance to ``k`` of the closest total, and per
    total the largest sum of ``log_alpha`` kept (each row keeping its largest entries)."""
    ranked = log_alpha.sort(dim=-1, descending=True).values
    best_distance, best_score = None, {}
    for counts in itertools.product(allowed, repeat=log_alpha.shape[0]):
        total = sum(counts)
        score = sum(ranked[row, :count].sum().item() for row, count in enumerate(counts))
        best_score[total] = max(best_score.get(total, -math.inf), score)
        best_distance = abs(total - k) if best_distance is None else min(best_distance, abs(total - k))
    return best_distance, best_score


@pytest.mark.parametrize("seed", range(16))
def test_kept_total_is_the_closest_achievable_to_the_expected_count_with_the_best_ranked_blocks(seed):
    generator = torch.Generator().manual_seed(seed)
    gate = HardConcreteGate((3, 8)).eval()
    gate.unit_multiple = 4
    with torch.no_grad():
        gate.log_alpha.copy_(torch.randn(3, 8, generator=generator) * 3.0 + torch.randn(3, 1, generator=generator))
    log_alpha = gate.log_alpha.detach()
    k = round(gate.prob_nonzero().sum().item())
    keep = gate.keep_mask()
    assert all(count in (0, 4, 8) for count in keep.sum(-1).tolist())
    best_distance, best_score = best_total_and_score(log_alpha, [0, 4, 8], k)
    total = int(keep.sum())
    assert abs(total - k) == best_distance
    assert log_alpha[keep].sum().item() == pytest.approx(best_score[total])
    assert torch.equal(gate() != 0, keep)


@pytest.mark.parametrize("seed", range(8))
def test_a_width_that_is_no_multiple_ends_in_a_short_block_taken_after_the_full_ones(seed):
    """Width 10 in blocks of 4: a row keeps 0, 4, 8 or 10 of its best-ranked entries, and the total lies within half a
    block of the expected count."""
    generator = torch.Generator().manual_seed(seed)
    gate = HardConcreteGate((4, 10)).eval()
    gate.unit_multiple = 4
    with torch.no_grad():
        gate.log_alpha.copy_(torch.randn(4, 10, generator=generator) * 3.0 + torch.randn(4, 1, generator=generator))
    keep = gate.keep_mask()
    log_alpha = gate.log_alpha.detach()
    for row, kept in zip(log_alpha, keep):
        assert int(kept.sum()) in (0, 4, 8, 10)
        if 0 < kept.sum() < 10:
            assert row[kept].min() >= row[~kept].max()  # a prefix of the row's ranking
    assert abs(int(keep.sum()) - round(gate.prob_nonzero().sum().item())) <= 4 / 2


def test_a_kept_entry_never_underflows_to_zero_so_the_count_stays_a_multiple():
    """Blocks of 3 over [10, 10, 10, 10, 10, -200]: about 5 entries are expected, so both blocks stay (6 is closer
    than 3), and the last entry, whose soft value sigmoid(-240) is 0 in float32, keeps the smallest positive value."""
    gate = HardConcreteGate((1, 6)).eval()
    gate.unit_multiple = 3
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([[10.0, 10.0, 10.0, 10.0, 10.0, -200.0]]))
    assert torch.sigmoid(gate.log_alpha[0, -1] * (0.8 / gate.temperature)).item() == 0.0
    assert round(gate.prob_nonzero().sum().item()) == 5
    values = gate()
    assert int((values != 0).sum()) == 6
    assert values[0, -1].item() == torch.finfo(torch.float32).tiny


def test_an_expected_count_halfway_between_two_multiples_keeps_the_larger():
    gate = HardConcreteGate((1, 4)).eval()
    gate.unit_multiple = 4
    with torch.no_grad():  # P(z != 0) = 1/2 each: 2 expected, as far from 0 as from 4
        gate.log_alpha.fill_(gate.temperature * math.log(-gate.limit_left / gate.limit_right))
    assert round(gate.prob_nonzero().sum().item()) == 2
    assert gate.keep_mask().all()


def bert_for_snap(width_multiple: int):
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(
        tf.BertConfig(vocab_size=50, hidden_size=64, num_attention_heads=8, intermediate_size=1024, num_hidden_layers=4)
    ).eval()
    hf_l0.patch_model(model, L0Config(heads=True, ffn=True, width_multiple=width_multiple))
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.normal_(0.0, 2.0)
    return model


def test_snap_to_target_lands_within_half_a_percent_with_width_multiple():
    """Steps of 16 neurons (0.35% of the prunable parameters) and 2 heads (0.7%): the snap still lands within 0.005,
    on widths that stay multiples."""
    model = bert_for_snap(16)
    gates = hf_l0.get_gates(model)
    assert (gates.heads.unit_multiple, gates.ffn.unit_multiple) == (2, 16)
    for target in (0.3, 0.5, 0.75):
        reached = snap_to_target(model, target)
        assert reached == pytest.approx(hf_l0.deterministic_sparsity(model).item())
        assert abs(reached - target) <= 0.005
        values = gates.deterministic()
        assert all(count % 2 == 0 for count in row_counts(values["heads"]))
        assert all(count % 16 == 0 for count in row_counts(values["ffn"]))


def test_the_deterministic_sparsity_never_rises_as_a_common_shift_grows():
    """What the snap's bisection relies on: a constant shift keeps each row's block ranking and only grows k."""
    model = bert_for_snap(16)
    params_ = [gate.log_alpha for gate in hf_l0.get_gates(model).gates.values()]
    original = [p.detach().clone() for p in params_]
    reached = []
    with torch.no_grad():
        for shift in torch.linspace(-8.0, 8.0, 161).tolist():
            for p, o in zip(params_, original):
                p.copy_(o + shift)
            reached.append(hf_l0.deterministic_sparsity(model).item())
    assert all(later <= earlier for earlier, later in zip(reached, reached[1:]))
    assert reached[0] > 0.9 and reached[-1] < 0.05


def test_the_expected_size_is_the_sum_of_probabilities_whatever_the_multiple():
    plain, blocked = bert_for_snap(1), bert_for_snap(16)
    for a, b in zip(hf_l0.get_gates(plain).gates.values(), hf_l0.get_gates(blocked).gates.values()):
        assert torch.equal(a.log_alpha, b.log_alpha)
    assert hf_l0.expected_sparsity(plain).item() == hf_l0.expected_sparsity(blocked).item()
    assert hf_l0.deterministic_sparsity(plain).item() != hf_l0.deterministic_sparsity(blocked).item()


def test_width_multiple_round_trips_and_an_old_config_loads_with_one(tmp_path):
    config = L0Config(hidden=True, width_multiple=32)
    config.save_pretrained(tmp_path)
    loaded = L0Config.from_pretrained(tmp_path)
    assert loaded == config and loaded.width_multiple == 32
    old = config.to_dict()
    del old["width_multiple"]  # an l0_config.json written before the option existed
    (tmp_path / "l0_config.json").write_text(json.dumps(old))
    assert L0Config.from_pretrained(tmp_path).width_multiple == 1
    model = hf_l0.patch_model(tiny_model("llama", "AutoModelForCausalLM"), loaded)
    gates = hf_l0.get_gates(model)
    assert (gates.heads.unit_multiple, gates.ffn.unit_multiple, gates.hidden.unit_multiple) == (4, 32, 32)
    spread_gates(model, 0)
    compact = pruned_copy(model)  # the trainer's compact model: patched again from the config, gates loaded
    assert compact.config.l0_structure == hf_l0.prune_model(model).config.l0_structure
    assert compact.config.l0_structure["hidden_size"] == 32  # of 48


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width_multiple=0), r"width_multiple=0 must be a positive integer"),
        (dict(width_multiple=True), r"width_multiple=True must be a positive integer"),
        (
            dict(width_multiple=8, target_intermediate_size=20, layers=False),
            r"target_intermediate_size=20 is not a multiple of 8: width_multiple=8 .* Use 16 or 24",
        ),
        (
            dict(hidden=True, width_multiple=32, target_hidden_size=40, layers=False),
            r"target_hidden_size=40 is not a multiple of 32: .* Use 32 or 64",
        ),
    ],
)
def test_a_uniform_target_that_is_not_a_multiple_is_refused_with_the_nearest_valid_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L0Config(**kwargs)


def test_a_head_target_is_checked_against_the_head_step_when_patching():
    """head_dim 8 and width_multiple 16: heads come in pairs; bert has 4 heads, so 3 is refused, 2 and 4 are kept."""
    with pytest.raises(ValueError, match=r"target_heads=3 is not a multiple of 2: .*units of 8 dimensions.*Use 2 or 4"):
        hf_l0.patch_model(
            tiny_model("bert", "AutoModelForSequenceClassification"),
            L0Config(width_multiple=16, target_heads=3, layers=False),
        )
    for heads in (2, 4):
        model = hf_l0.patch_model(
            tiny_model("bert", "AutoModelForSequenceClassification"),
            L0Config(width_multiple=16, target_heads=heads, target_intermediate_size=16, layers=False),
        )
        spread_gates(model, 0)
        values = hf_l0.get_gates(model).deterministic()
        assert row_counts(values["heads"]) == [heads] * 3 and row_counts(values["ffn"]) == [16] * 3


@pytest.mark.parametrize("uniform", [False, True], ids=["free", "uniform"])
def test_the_largest_reachable_sparsity_is_what_all_gates_shut_deliver(uniform):
    """Shut gates keep 0 units per row, or a uniform target's count (a multiple): the "minimum" size is reachable."""
    targets = dict(target_heads=2, target_intermediate_size=16, layers=False) if uniform else {}
    model = hf_l0.patch_model(
        tiny_model("bert", "AutoModelForSequenceClassification"), L0Config(width_multiple=16, **targets)
    )
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.fill_(-20.0)
    reached = hf_l0.deterministic_sparsity(model).item()
    assert hf_l0.max_reachable_sparsity(model) == pytest.approx(reached, abs=1e-12)


def test_a_llama_pruned_with_width_multiple_32_needs_no_gguf_padding_in_q8_0(tmp_path):
    """The same gates without the option need hidden, head and FFN padding; with it the Q8_0 file needs none."""
    gguf = pytest.importorskip("gguf", reason="the deploy extra is not installed: pip install -e '.[deploy]'")

    def compact(width_multiple: int):
        torch.manual_seed(0)
        config = tf.LlamaConfig(
            vocab_size=101,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=16,
            num_key_value_heads=8,  # KV groups of 2 query heads x head_dim 8: 16 columns
            intermediate_size=192,
        )
        model = randomize_(tf.LlamaForCausalLM(config).eval())
        hf_l0.patch_model(model, L0Config(hidden=True, width_multiple=width_multiple))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for gate in hf_l0.get_gates(model).gates.values():
                gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=generator) * 2.0 + 1.0)
        return hf_l0.prune_model(model)

    padded = hf_l0.export_gguf(compact(1), tmp_path / "plain.gguf", dtype="q8_0")
    assert padded.padding["hidden"] > 0 and padded.padding["heads"] > 0 and padded.padding["ffn"] > 0
    model = compact(32)
    layers = model.config.l0_structure["layers"]
    assert all(layer["key_value_heads"] and layer["intermediate_size"] for layer in layers)  # no stand-in
    assert any(layer["key_value_heads"] < 8 for layer in layers) and all(
        layer["intermediate_size"] < 192 for layer in layers
    )
    assert model.config.l0_structure["hidden_size"] < 128
    result = hf_l0.export_gguf(model, tmp_path / "q8_0.gguf", dtype="q8_0")
    assert result.padding == {"hidden": 0, "heads": 0, "ffn": 0, "weights": 0}
    assert gguf.GGUFReader(str(result.path)).fields["general.architecture"].contents() == "deci"
