"""FLOPs and latency cost models, and pruning to a FLOPs / latency target."""

import copy
import itertools
import os

import pytest
import torch
from conftest import VOCAB, make_inputs, make_model
from torch.utils.flop_counter import FlopCounterMode

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model
from hf_l0.cost.base import SUBLAYER_GATES
from hf_l0.cost.flops import (
    FlopsTarget,
    compact_flops,
    deterministic_flops,
    expected_flops,
    flops_reduction,
    full_flops,
)
from hf_l0.cost.latency import (
    LatencyTable,
    LatencyTarget,
    _model_shape,
    _table_key,
    compact_layers,
    expected_latency,
    latency_table,
    predict_latency,
)
from hf_l0.cost.measure import forward_flops
from hf_l0.cost.size import dropped_layers, size_layout
from hf_l0.cost.targets import make_cost_target

SEQ_LEN = 9
# (family, auto class): FlopCounterMode counts what actually runs, so only heads applied to every token (a BERT pooler
# reads one token per sequence; hf-l0 counts every Linear per token, as hf_l0.cost.measure.forward_flops does).
PER_TOKEN_MODELS = [
    ("bert", "AutoModelForTokenClassification"),
    ("gpt2", "AutoModelForCausalLM"),
    ("llama", "AutoModelForCausalLM"),
]


def random_gates(model, seed: int) -> None:
    """Random log_alpha, a whole attention sublayer shut by its units and an FFN sublayer by its layer gate."""
    gates = hf_l0.get_gates(model)
    generator = torch.Generator().manual_seed(seed)
    layers = gates.heads.log_alpha.shape[0]
    with torch.no_grad():
        for gate in gates.gates.values():
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
    gates = list(hf_l0.get_gates(model).gates.values())
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
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.copy_(torch.where(gate.log_alpha > 0, 60.0, -60.0))
    model.eval()
    expected, deterministic = expected_flops(model, SEQ_LEN), deterministic_flops(model, SEQ_LEN)
    for part in ("attention", "ffn", "fixed"):
        assert float(getattr(expected, part).detach()) == pytest.approx(float(getattr(deterministic, part)), rel=1e-12)
    assert float(deterministic.total) < float(full_flops(model, SEQ_LEN).total)


def test_attention_scores_grow_with_the_sequence_length():
    model = patch_model(make_model("gpt2"), L0Config(layers=True))
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


def test_flops_target_with_hidden_gates_accepts_what_shrinking_the_heads_reaches():
    """Hidden gates shrink the heads that read the residual stream (``lm_head`` here), so the FLOPs no gate removes
    are those at the fewest hidden dimensions, not the dense heads' FLOPs: a target beyond the dense heads' share is
    reachable, and a gate pattern that reaches it is built and pruned below."""
    model = make_model("llama")
    dense = compact_flops(model, SEQ_LEN)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True, hidden=True))
    target = FlopsTarget(SEQ_LEN)
    full = full_flops(model, SEQ_LEN)
    beyond_dense_heads = 1.0 - float(full.fixed) / float(full.total)
    gates = hf_l0.get_gates(model)
    with torch.no_grad():  # keep 4 hidden dimensions, one KV group and 4 neurons per layer
        for gate in gates.gates.values():
            gate.log_alpha.fill_(10.0)
        gates.hidden.log_alpha[4:] = -10.0
        gates.ffn.log_alpha[:, 4:] = -10.0
        gates.heads.log_alpha[:, 1:] = -10.0
    model.eval()
    reached = 1.0 - compact_flops(prune_model(copy.deepcopy(model)), SEQ_LEN) / dense
    assert reached > beyond_dense_heads
    assert target.fixed_cost(model) < float(full.fixed)
    target.check_target(model, (beyond_dense_heads + reached) / 2)  # reachable, so accepted
    no_hidden = patch_model(make_model("llama"), L0Config(heads=True, ffn=True, layers=True))
    with pytest.raises(ValueError, match="lm_head"):  # without hidden gates the heads stay whole: refused
        target.check_target(no_hidden, (beyond_dense_heads + reached) / 2)


# -- latency tables ----------------------------------------------------------------------------------------------------
def synthetic_table(model) -> LatencyTable:
    """A table with made-up, uneven times (no measuring): the cost model must follow whatever the machine says."""
    shape = _model_shape(model)
    units, neurons = shape["attention_units"], shape["intermediate_size"]
    attention_units = list(range(units + 1))
    ffn_units = [0, 1, neurons // 3, neurons // 2, neurons]
    key = _table_key(shape, 1, SEQ_LEN, 1, torch.float32, attention_units, ffn_units, 1, 1)
    return LatencyTable(
        key=key,
        attention_units=attention_units,
        attention_s=[0.0] + [1e-3 + 2e-4 * u + 1e-5 * u * u for u in attention_units[1:]],
        ffn_units=ffn_units,
        ffn_s=[0.0, 4e-4, 9e-4, 2.2e-3, 3e-3],
        fixed_s=2e-3,
        dense_s=0.02,
        layer_s=1e-4,
    )


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_expected_latency_gradient_and_deterministic_latency_of_the_compact_model(family):
    model = make_model(family, "AutoModelForSequenceClassification")
    table = synthetic_table(model)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    random_gates(model, 1)
    gates = list(hf_l0.get_gates(model).gates.values())
    for gate in gates:
        gate.double()

    def reduction(*log_alphas):
        originals = [gate.log_alpha for gate in gates]
        for gate, value in zip(gates, log_alphas):
            del gate.log_alpha
            gate.log_alpha = value
        try:
            return LatencyTarget(table)(model)
        finally:
            for gate, original in zip(gates, originals):
                del gate.log_alpha
                gate.log_alpha = original

    inputs = tuple(gate.log_alpha.detach().clone().requires_grad_(True) for gate in gates)
    assert torch.autograd.gradcheck(reduction, inputs, eps=1e-6, atol=1e-7)
    model.eval()
    deterministic = float(expected_latency(model, table, deterministic=True))
    assert table.fixed_s < deterministic < table.predict_dense()
    compact = prune_model(copy.deepcopy(model))
    layers = compact_layers(compact)
    assert any(u == 0 for u, _ in layers) and any(n == 0 for _, n in layers)  # removed sublayers cost 0
    assert predict_latency(table, compact) == pytest.approx(deterministic, rel=1e-12)


def test_expected_latency_equals_deterministic_latency_when_gates_are_saturated():
    model = make_model("gpt2")
    table = synthetic_table(model)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    random_gates(model, 0)
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.copy_(torch.where(gate.log_alpha > 0, 60.0, -60.0))
    model.eval()
    expected = float(expected_latency(model, table).detach())
    assert expected == pytest.approx(float(expected_latency(model, table, deterministic=True)), rel=1e-12)


def test_a_dropped_decoder_layer_takes_its_dispatch_time_with_it():
    model = make_model("llama", "AutoModelForSequenceClassification")
    table = synthetic_table(model)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    random_gates(model, 0)  # layer 0 loses its attention (by its units: Llama's o_proj has no bias to keep)
    with torch.no_grad():
        hf_l0.get_gates(model).ffn_layers.log_alpha[0] = -10.0  # ... and its FFN: the layer is the identity
    model.eval()
    deterministic = float(expected_latency(model, table, deterministic=True))
    dropped = prune_model(copy.deepcopy(model))
    kept = prune_model(copy.deepcopy(model), drop_empty_layers=False)
    assert dropped.config.l0_structure["dropped_layers"] == [0]
    assert predict_latency(table, dropped) == pytest.approx(deterministic, rel=1e-12)
    assert predict_latency(table, kept) - deterministic == pytest.approx(table.layer_s, rel=1e-9)


def test_expected_latency_counts_every_layer_expected_to_drop_while_the_compact_model_keeps_one():
    """With every sublayer almost surely shut, the expected count of dropped layers is ~all of them (a sum of
    probabilities, unclamped, so its gradient lives); the deterministic count keeps one layer, as prune_model does."""
    model = make_model("llama", "AutoModelForSequenceClassification")
    table = synthetic_table(model)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.fill_(-60.0)
    layers = model.config.num_hidden_layers
    expected = float(expected_latency(model, table).detach())
    assert expected == pytest.approx(table.fixed_s - layers * table.layer_s, rel=1e-9)
    deterministic = float(expected_latency(model.eval(), table, deterministic=True))
    assert deterministic == pytest.approx(table.fixed_s - (layers - 1) * table.layer_s, rel=1e-9)


def test_latency_table_is_cached_by_batch_size_and_threads(tmp_path):
    model = make_model("bert", "AutoModelForSequenceClassification")
    settings = {
        "seq_len": 8,
        "cache_dir": tmp_path,
        "attention_grid": [0, 2, 4],
        "ffn_grid": [0, 18, 37],
        "repeats": 2,
        "rounds": 1,
        "progress": False,
    }
    first = latency_table(model, batch_size=1, threads=1, **settings)
    assert not first.loaded and os.path.isfile(first.path)
    assert first.attention_units == [0, 2, 4] and first.attention_s[0] == 0.0
    assert all(b >= a for a, b in zip(first.ffn_s, first.ffn_s[1:]))
    again = latency_table(model, batch_size=1, threads=1, **settings)
    assert again.loaded and again.path == first.path and again.to_dict() == first.to_dict()
    other_batch = latency_table(model, batch_size=2, threads=1, **settings)
    other_threads = latency_table(model, batch_size=1, threads=2, **settings)
    assert not other_batch.loaded and not other_threads.loaded
    assert len({first.path, other_batch.path, other_threads.path}) == 3
    assert latency_table(model, batch_size=2, threads=1, **settings).loaded
    # a gated model has the same table as its dense original
    patch_model(model, L0Config(layers=True))
    assert latency_table(model, batch_size=1, threads=1, **settings).loaded


def additive_timings(monkeypatch, model, fixed: float, empty_layer: float, grids: dict[str, list[int]]):
    """Replace the timer by a known additive model: ``fixed`` + per layer 2 ms per attention unit and 0.1 ms per
    neuron, ``empty_layer`` for a layer with neither sublayer. Returns (per-layer time functions, dense time, the
    sorted call names of each timing round)."""
    import hf_l0.cost.latency as latency

    layers = model.config.num_hidden_layers
    per_layer = {"attention": lambda u: 0.002 * u, "ffn": lambda n: 0.0001 * n}
    dense = fixed + layers * (per_layer["attention"](grids["attention"][-1]) + per_layer["ffn"](grids["ffn"][-1]))
    timed = []

    def fake_time_rounds(calls, repeats, rounds, warmup, progress):
        timed.append(sorted(calls))
        medians = {"empty_layer": empty_layer, "dense": dense}
        for name in calls:
            if ":" in name:
                kind, units = name.split(":")
                medians[name] = fixed + layers * per_layer[kind](int(units))
        return medians

    monkeypatch.setattr(latency, "_time_rounds", fake_time_rounds)
    return per_layer, dense, timed


def test_latency_table_turns_whole_model_timings_into_per_layer_times(monkeypatch):
    """Each width is timed in the whole model (every layer at that width): the table's time per layer is that
    model's time less the fixed time, over the number of layers. Timings here come from a known additive model."""
    import hf_l0.cost.latency as latency

    model = make_model("bert", "AutoModelForSequenceClassification")
    fixed, empty_layer = 0.010, 0.001
    grids = {"attention": [0, 2, 4], "ffn": [0, 18, 37]}
    per_layer, dense, timed = additive_timings(monkeypatch, model, fixed, empty_layer, grids)
    table = latency.measure_latency_table(
        model, seq_len=8, attention_grid=grids["attention"], ffn_grid=grids["ffn"], progress=False
    )
    assert timed == [sorted(["attention:0", "attention:2", "attention:4", "ffn:18", "ffn:37", "empty_layer", "dense"])]
    assert table.fixed_s == fixed and table.layer_s == empty_layer and table.dense_s == dense
    for kind, times in (("attention", table.attention_s), ("ffn", table.ffn_s)):
        assert times == pytest.approx([per_layer[kind](u) for u in grids[kind]], abs=1e-15)
    assert table.predict_dense() == pytest.approx(dense)


def test_latency_table_caps_the_empty_layer_time_at_the_fixed_times_share_per_layer(monkeypatch):
    """An empty layer timed alone above the fixed time's share per layer (a slow spell, or dispatch that overlaps
    inside the whole model) would make the fixed latency left with every droppable layer gone negative: ``layer_s``
    is capped at that share, so the fixed cost stays the time of one layer's dispatch and the rest."""
    import hf_l0.cost.latency as latency

    model = make_model("llama", "AutoModelForSequenceClassification")
    layers = model.config.num_hidden_layers
    fixed = 0.010
    share = fixed / layers
    grids = {"attention": [0, 1, 2], "ffn": [0, 18, 37]}
    additive_timings(monkeypatch, model, fixed, empty_layer=2 * share, grids=grids)
    table = latency.measure_latency_table(
        model, seq_len=8, attention_grid=grids["attention"], ffn_grid=grids["ffn"], progress=False
    )
    assert table.raw["empty_layer"] == 2 * share and table.layer_s == pytest.approx(share, rel=1e-12)
    gated = patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    assert LatencyTarget(table).fixed_cost(gated) == pytest.approx(share, rel=1e-9)  # one layer's share stays


def test_non_decreasing_fit_pools_violators_into_size_weighted_means():
    from hf_l0.cost.latency import _non_decreasing

    assert _non_decreasing([3.0, 2.0, 1.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert _non_decreasing([1.0, 2.0, 2.0, 5.0]) == [1.0, 2.0, 2.0, 5.0]  # already non-decreasing: unchanged
    # 4 and 2 pool to 3 (two values); 0 then joins that block of two: (2 * 3 + 0) / 3 = 2, not (3 + 0) / 2
    assert _non_decreasing([1.0, 4.0, 2.0, 0.0]) == pytest.approx([1.0, 2.0, 2.0, 2.0])
    # the least-squares fit keeps each pooled block's sum, so the total; a brute-force check of optimality on a grid
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        values = (torch.rand(5, generator=generator) * 4).round().tolist()
        fitted = _non_decreasing(values)
        assert all(b >= a - 1e-12 for a, b in zip(fitted, fitted[1:]))
        assert sum(fitted) == pytest.approx(sum(values))
        error = sum((f - v) ** 2 for f, v in zip(fitted, values))
        candidates = itertools.combinations_with_replacement([x / 4 for x in range(17)], len(values))
        assert error <= min(sum((c - v) ** 2 for c, v in zip(cand, values)) for cand in candidates) + 1e-12


def test_bad_latency_targets_are_refused_with_the_reason():
    model = make_model("llama", "AutoModelForSequenceClassification")
    table = synthetic_table(model)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    target = LatencyTarget(table)
    # what no gate removes: the fixed time, less the dispatch of every layer but one (a decoder drops empty layers)
    share = (table.fixed_s - 2 * table.layer_s) / table.predict_dense()
    assert target.fixed_cost(model) / table.predict_dense() == pytest.approx(share)
    with pytest.raises(ValueError, match=f"fixed latency .* is {share:.4f} of the dense latency"):
        target.check_target(model, 1.0 - share / 2)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        target.check_target(model, 1.0)
    target.check_target(model, (1.0 - share) * 0.9)
    heads_only = patch_model(
        make_model("llama", "AutoModelForSequenceClassification"), L0Config(ffn=False, layers=False)
    )
    maximum = LatencyTarget(table).max_reduction(heads_only)
    with pytest.raises(ValueError, match=f"at most {maximum:.4f}"):
        LatencyTarget(table).check_target(heads_only, (maximum + 1.0 - share) / 2)
    hidden = patch_model(make_model("llama", "AutoModelForSequenceClassification"), L0Config(hidden=True, layers=True))
    with pytest.raises(ValueError, match="hidden-dimension gates"):
        LatencyTarget(table)(hidden)
    other = patch_model(make_model("gpt2"), L0Config(layers=True))
    with pytest.raises(ValueError, match="another model shape"):
        LatencyTarget(table)(other)


def test_latency_table_command_measures_then_loads(tmp_path, capsys):
    from hf_l0.cli import main

    make_model("bert", "AutoModelForSequenceClassification").save_pretrained(tmp_path / "model")
    argv = [
        "latency-table",
        "--model",
        str(tmp_path / "model"),
        "--batch-size",
        "1",
        "--seq-len",
        "8",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--rounds",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "BertForSequenceClassification (3 layers), batch 1 x 8 tokens, 1 thread(s)" in first and "saved to" in first
    assert main(argv) == 0
    assert "loaded from" in capsys.readouterr().out


# -- training to a cost target -----------------------------------------------------------------------------------------
def test_trainer_prunes_to_a_flops_target(tmp_path):
    import transformers as tf
    from datasets import Dataset

    from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=3,
    )
    model = tf.BertForSequenceClassification(config)
    dense_flops = compact_flops(model, 16)
    ids = torch.randint(2, VOCAB, (128, 12), generator=torch.Generator().manual_seed(0))
    train = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": (ids[:, 0] % 3).tolist()}
    )
    target = 0.4
    args = L0TrainingArguments(
        output_dir=str(tmp_path),
        target_flops_reduction=target,
        cost_seq_len=16,
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=10,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        l0_structures="heads,ffn,layers",
        seed=0,
        data_seed=0,
    )
    trainer = L0Trainer(model=model, args=args, train_dataset=train)
    assert trainer.controller.metric is trainer.cost_target
    trainer.train()
    compact = trainer.compact_model()
    reached = 1.0 - compact_flops(compact, 16) / dense_flops
    assert abs(reached - target) <= 0.01, reached
    logs = [h for h in trainer.state.log_history if "lambda_1" in h]
    assert logs and {"expected_flops", "deterministic_flops", "deterministic_param_sparsity"} <= set(logs[-1])
    assert logs[-1]["deterministic_flops"] == pytest.approx(
        dense_flops * (1 - logs[-1]["deterministic_sparsity"]) * 1e-9
    )


def test_one_target_per_meaning_and_bad_target_arguments_are_refused(tmp_path):
    from hf_l0.training.trainer import L0TrainingArguments

    def args(**kw):
        return L0TrainingArguments(output_dir=str(tmp_path), **kw)

    assert (args(target_sparsity=0.5).target_metric, args(target_sparsity=0.5).target_reduction) == ("params", 0.5)
    assert args(target_flops_reduction=0.4).target_metric == "flops"
    assert args(target_flops_reduction=0.4).target_reduction == 0.4
    speedup = args(target_speedup=2.5)
    assert speedup.target_metric == "latency" and speedup.target_reduction == pytest.approx(0.6)
    assert speedup.target_text() == "target_speedup=2.5"
    with pytest.raises(ValueError, match="a target is required: set exactly one of --target_sparsity"):
        args()
    with pytest.raises(ValueError, match="target_sparsity and target_speedup are set: one target only"):
        args(target_sparsity=0.5, target_speedup=2)
    with pytest.raises(ValueError, match=r"target_speedup=1.0 is impossible.*must be > 1"):
        args(target_speedup=1.0)
    with pytest.raises(ValueError, match=r"target_flops_reduction=1.2 is impossible"):
        args(target_flops_reduction=1.2)
    with pytest.raises(ValueError, match="read only for a --target_speedup"):
        args(target_flops_reduction=0.5, latency_table="table.json")
    with pytest.raises(ValueError, match="cost_seq_len=0"):
        args(target_flops_reduction=0.5, cost_seq_len=0)


def test_latency_target_in_several_processes_needs_one_table():
    from types import SimpleNamespace

    from hf_l0.cost.targets import cost_target_from_args

    model = patch_model(make_model("gpt2"), L0Config(layers=True))
    args = SimpleNamespace(
        target_metric="latency",
        target_reduction=0.3,
        latency_table=None,
        world_size=2,
        cost_seq_len=8,
        cost_batch_size=1,
        cost_threads=1,
    )
    with pytest.raises(ValueError, match="pass its path as --latency_table"):
        cost_target_from_args(model, args)


def test_default_latency_cache_dir_follows_hf_l0_cache_else_the_home_cache(monkeypatch, tmp_path):
    from hf_l0.cost.latency import default_cache_dir

    monkeypatch.setenv("HF_L0_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "latency"
    monkeypatch.delenv("HF_L0_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "hf_l0" / "latency"


def test_default_grid_times_every_small_width_else_zero_one_and_even_steps():
    from hf_l0.cost.latency import default_grid

    assert default_grid(4) == [0, 1, 2, 3, 4]
    assert default_grid(16) == list(range(17))
    assert default_grid(17) == [0, 1, 3, 4, 6, 7, 8, 10, 11, 13, 14, 16, 17]  # round() of 17 j / 12
    assert default_grid(120) == [0, 1, *range(10, 121, 10)]
    assert default_grid(100, points=4) == [0, 1, 25, 50, 75, 100]


def test_interpolation_is_float64_and_clamped_to_the_grid():
    table = synthetic_table(make_model("bert", "AutoModelForSequenceClassification"))
    xs, ys = table.ffn_units, table.ffn_s
    third = xs[2] + (xs[3] - xs[2]) / 3.3  # between two grid points, not a float32 number
    assert float(torch.tensor(third, dtype=torch.float32)) != third
    expected = ys[2] + (ys[3] - ys[2]) / 3.3
    for units in (third, torch.tensor([third], dtype=torch.float64), torch.tensor([float(xs[2])])):
        value = table.ffn_time(units)
        assert value.dtype == torch.float64
    assert float(table.ffn_time(third)) == pytest.approx(expected, rel=1e-13, abs=0)
    assert float(table.ffn_time(torch.tensor(float(xs[1])))) == pytest.approx(ys[1], rel=1e-13, abs=0)
    assert float(table.ffn_time(-5.0)) == ys[0] and float(table.ffn_time(xs[-1] + 100.0)) == ys[-1]


def test_latency_table_summary_and_target_config():
    model = make_model("bert", "AutoModelForSequenceClassification")
    table = synthetic_table(model)
    table.attention_units, table.attention_s = [0, 2, 4], [0.0, 0.0015, 0.0021]
    table.ffn_units, table.ffn_s = [0, 37], [0.0, 0.0042]
    table.path = "/cache/table.json"
    lines = table.summary().split("\n")
    dense = table.predict_dense() * 1e3
    assert lines == [
        f"latency table: BertForSequenceClassification ({table.num_layers} layers), batch 1 x {SEQ_LEN} tokens, "
        f"1 thread(s), float32, torch {torch.__version__}",
        "  fixed (embeddings, norms, head, layer dispatch): 2.000 ms",
        "  attention units -> ms per layer: 0: 0.000, 2: 1.500, 4: 2.100",
        "  FFN neurons -> ms per layer: 0: 0.000, 37: 4.200",
        f"  dense model: predicted {dense:.3f} ms, measured 20.000 ms",
        "  saved to /cache/table.json",
    ]
    table.loaded = True
    assert table.summary().endswith("\n  loaded from /cache/table.json")
    table.path = None
    assert table.summary().split("\n")[-1].startswith("  dense model")
    assert LatencyTarget(table).config_dict() == {
        "metric": "latency",
        "table": None,
        "batch_size": 1,
        "seq_len": SEQ_LEN,
        "threads": 1,
    }


def test_expected_latency_is_the_sum_over_gate_probabilities_and_deterministic_that_of_the_kept_units():
    model = make_model("gpt2")
    table = synthetic_table(model)
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    random_gates(model, 3)
    gates = hf_l0.get_gates(model)
    named = dict(gates.named_gates())
    kinds = {kind: (getattr(table, f"{kind}_time"), units, layer) for kind, units, layer in SUBLAYER_GATES}

    def by_hand(probs, mode):
        total = table.fixed_s
        for time_of, units, layer in kinds.values():
            total += float((time_of(probs[units].sum(-1)) * probs[layer]).sum())
        # GPT-2 is pre-norm: prune_model drops a layer whose sublayers both output zero, its dispatch time with it
        return total - table.layer_s * float(dropped_layers(probs, size_layout(model), mode))

    expected = {name: gate.prob_nonzero().double() for name, gate in named.items()}
    kept = {name: (value != 0).double() for name, value in gates.deterministic().items()}
    assert float(expected_latency(model, table)) == pytest.approx(by_hand(expected, "expected"), rel=1e-12)
    assert float(expected_latency(model, table, deterministic=True)) == pytest.approx(
        by_hand(kept, "deterministic"), rel=1e-12
    )
    assert by_hand(expected, "expected") != pytest.approx(by_hand(kept, "deterministic"), rel=1e-6)


def test_latency_table_checks_name_the_problem_and_the_fix_and_run_once_per_table(monkeypatch):
    import warnings

    from hf_l0.cost import latency

    model = make_model("bert", "AutoModelForSequenceClassification")
    table = synthetic_table(model)
    hidden = patch_model(make_model("bert", "AutoModelForSequenceClassification"), L0Config(hidden=True))
    with pytest.raises(ValueError) as refused:
        expected_latency(hidden, table)
    assert str(refused.value) == (
        "a latency target does not support hidden-dimension gates: the latency table is measured at the dense hidden "
        "size. Set hidden=False (l0_structures without 'hidden') or use target_metric='flops'."
    )
    relu = _bert(hidden_act="relu")
    patch_model(relu, L0Config())
    table.key = {**table.key, "config": latency.config_digest(patch_model(_bert(), L0Config()))}
    with pytest.raises(ValueError) as refused:
        expected_latency(relu, table)
    assert str(refused.value) == (
        "the latency table was measured for a model of this shape with another configuration (activation, position "
        "embeddings, attention implementation, ...): its times do not hold for this one. Build the table for this "
        "model."
    )
    gated = patch_model(_bert(), L0Config())
    here = latency.machine_identity()
    for path, recorded, where in (
        ("/t.json", {"processor": "elsewhere"}, " /t.json was measured on {'processor': 'elsewhere'}"),
        (None, None, " was measured on an unrecorded machine"),
    ):
        table = synthetic_table(model)
        table.key = {**table.key, "config": latency.config_digest(gated)}
        if recorded is None:
            table.key.pop("machine", None)
        else:
            table.key["machine"] = recorded
        table.path = path
        with pytest.warns(UserWarning) as caught:
            expected_latency(gated, table)
        assert [str(w.message) for w in caught] == [
            f"the latency table{where}, this is {here}: its times may not hold here. Measure a table on this machine "
            "(python -m hf_l0 latency-table ...)."
        ]
        if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds a frame between the caller and the module
            assert caught[0].filename == __file__  # points at the caller of expected_latency
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            expected_latency(gated, table)  # checked once per model and table: no second warning
            table.key["config"] = "another"  # nor a second check
            expected_latency(gated, table)
    table = synthetic_table(model)
    table.key = {**table.key, "config": latency.config_digest(gated), "machine": here}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected_latency(gated, table)  # the same machine: no warning


def test_predict_latency_refuses_a_model_of_another_depth():
    table = synthetic_table(make_model("bert", "AutoModelForSequenceClassification"))
    layers = table.num_layers
    table.key = {**table.key, "shape": {**table.key["shape"], "num_layers": layers + 1}}
    with pytest.raises(ValueError) as refused:
        predict_latency(table, _bert())
    assert str(refused.value) == (
        f"the model has {layers} layers (and 0 dropped) but the latency table was measured for {layers + 1}."
    )


def _bert(**config_fields):
    model = make_model("bert", "AutoModelForSequenceClassification")
    for name, value in config_fields.items():
        setattr(model.config, name, value)
    return model


def test_latency_tables_are_not_shared_across_configurations_or_machines(tmp_path, monkeypatch):
    from hf_l0.cost import latency

    measured, keys = [], []
    table_key = latency._table_key

    def spy_key(*args, **kwargs):
        keys.append(table_key(*args, **kwargs))
        return keys[-1]

    def fake_measure(model, *args, **kwargs):  # no timing: a made-up table under the key latency_table computed
        measured.append(model.config.hidden_act)
        table = synthetic_table(model)
        table.key = keys[-1]
        return table

    monkeypatch.setattr(latency, "_table_key", spy_key)
    monkeypatch.setattr(latency, "measure_latency_table", fake_measure)

    def table_for(model):
        return latency_table(model, seq_len=SEQ_LEN, cache_dir=tmp_path, progress=False)

    gelu, relu = _bert(), _bert(hidden_act="relu", position_embedding_type="relative_key")
    assert _model_shape(gelu) == _model_shape(relu)  # the sizes alone do not tell them apart
    first = table_for(gelu)
    table_for(relu)
    assert measured == ["gelu", "relu"] and len(list(tmp_path.iterdir())) == 2
    # labels, the task type and the cache switch a training run sets do not change the computation: reused
    table_for(_bert(id2label={0: "a", 1: "b", 2: "c"}, problem_type="single_label_classification", use_cache=False))
    assert measured == ["gelu", "relu"]
    # another processor: measured anew, and a table from there given explicitly is used with a warning
    monkeypatch.setattr(latency, "machine_identity", lambda: {"processor": "elsewhere", "cpus": 64})
    table_for(gelu)
    assert measured == ["gelu", "relu", "gelu"]
    gated = _bert()
    patch_model(gated, L0Config())
    with pytest.warns(UserWarning, match="was measured on .*this is .*elsewhere"):
        hf_l0.expected_latency(gated, first)
    # a table of the other configuration, given explicitly, is refused
    relu_gated = _bert(hidden_act="relu")
    patch_model(relu_gated, L0Config())
    with pytest.raises(ValueError, match="another configuration"):
        hf_l0.expected_latency(relu_gated, first)


# -- what the scripts and the trainer report about a cost target ------------------------------------------------------
def test_cost_target_summary_reports_the_target_against_what_the_compact_model_reached(monkeypatch):
    from types import SimpleNamespace

    from hf_l0.cost import targets

    dense = make_model("bert", "AutoModelForSequenceClassification")
    gated = patch_model(copy.deepcopy(dense), L0Config(heads=True, ffn=True, layers=True))
    random_gates(gated, 0)
    compact = prune_model(gated.eval())
    calls = []

    def fake_speedup(dense_model, compact_model, inputs, repeats, rounds, threads):
        calls.append((dense_model, compact_model, inputs["input_ids"].shape, repeats, rounds, threads))
        return {"dense_s": 0.004, "compact_s": 0.001}

    monkeypatch.setattr(targets, "latency_speedup", fake_speedup)
    args = SimpleNamespace(
        cost_batch_size=2, cost_seq_len=SEQ_LEN, cost_threads=1, target_flops_reduction=0.25, target_speedup=3.5
    )
    assert targets.cost_target_summary(args, None, dense, compact) == ({}, [])
    assert calls == []
    dense_flops, pruned_flops = compact_flops(dense, SEQ_LEN), compact_flops(compact, SEQ_LEN)
    reached = 1.0 - pruned_flops / dense_flops
    fields, rows = targets.cost_target_summary(args, FlopsTarget(SEQ_LEN), dense, compact, repeats=10)
    assert calls == [(dense, compact, torch.Size([2, SEQ_LEN]), 3, 3, 1)]
    assert fields == {
        "target_metric": "flops",
        "cost_seq_len": SEQ_LEN,
        "cost_batch_size": 2,
        "cost_threads": 1,
        "dense_gflops_per_token": pytest.approx(dense_flops * 1e-9, rel=1e-12),
        "pruned_gflops_per_token": pytest.approx(pruned_flops * 1e-9, rel=1e-12),
        "reached_flops_reduction": pytest.approx(reached, rel=1e-12),
        "target_dense_latency_ms": pytest.approx(4.0),
        "target_pruned_latency_ms": pytest.approx(1.0),
        "measured_latency_reduction": pytest.approx(0.75),
    }
    assert 0.0 < reached < 1.0
    assert rows == [
        (f"GFLOPs / token at {SEQ_LEN} tokens", pytest.approx(dense_flops * 1e-9), pytest.approx(pruned_flops * 1e-9)),
        ("FLOPs reduction (target 0.250)", 0.0, pytest.approx(reached)),
        ("latency reduction, measured", 0.0, pytest.approx(0.75)),
        ("CPU latency, batch 2 x 9, 1 thread(s) (ms)", pytest.approx(4.0), pytest.approx(1.0)),
    ]
    assert targets.cost_target_summary(args, FlopsTarget(SEQ_LEN), dense, compact, repeats=2)[0]
    assert calls[-1][3] == 1  # at least one repeat
    table = synthetic_table(dense)
    predicted = 1.0 - predict_latency(table, compact) / table.predict_dense()
    fields, rows = targets.cost_target_summary(args, LatencyTarget(table), dense, compact)
    assert calls[-1][3:] == (5, 3, 1)
    assert fields["target_metric"] == "latency"
    assert fields["predicted_latency_reduction"] == pytest.approx(predicted, rel=1e-12)
    assert rows[1:] == [
        (f"speedup (target 3.50x, table predicts {1.0 / (1.0 - predicted):.2f}x)", 1.0, pytest.approx(4.0)),
        ("CPU latency, batch 2 x 9, 1 thread(s) (ms)", pytest.approx(4.0), pytest.approx(1.0)),
    ]


def test_cost_targets_log_and_describe_themselves():
    model = make_model("gpt2")
    patch_model(model, L0Config(heads=True, ffn=True, layers=True))
    random_gates(model, 2)
    model.eval()
    target = FlopsTarget(SEQ_LEN)
    expected, kept, dense = (float(f(model, SEQ_LEN).total) for f in (expected_flops, deterministic_flops, full_flops))
    assert len({expected, kept, dense}) == 3
    assert target.log_values(model) == {
        "expected_flops": pytest.approx(expected * 1e-9, rel=1e-12),
        "deterministic_flops": pytest.approx(kept * 1e-9, rel=1e-12),
        "dense_flops": pytest.approx(dense * 1e-9, rel=1e-12),
    }
    assert float(flops_reduction(model, SEQ_LEN)) == pytest.approx(1.0 - expected / dense, rel=1e-12)
    assert float(flops_reduction(model, SEQ_LEN, deterministic=True)) == pytest.approx(1.0 - kept / dense, rel=1e-12)
    assert float(target(model, deterministic=True)) == pytest.approx(1.0 - kept / dense, rel=1e-12)
    assert float(target(model).detach()) == pytest.approx(1.0 - expected / dense, rel=1e-12)
    assert target.config_dict() == {"metric": "flops", "seq_len": SEQ_LEN}
    table = synthetic_table(model)
    table.path = "/t.json"
    assert LatencyTarget(table).log_values(model) == {
        "expected_latency": pytest.approx(float(expected_latency(model, table).detach()) * 1e3, rel=1e-12),
        "deterministic_latency": pytest.approx(float(expected_latency(model, table, deterministic=True)) * 1e3),
        "dense_latency": pytest.approx(table.predict_dense() * 1e3, rel=1e-9),
    }
    from hf_l0.cost.base import CostTarget

    assert CostTarget().config_dict() == {"metric": "cost"}


def test_make_cost_target_builds_each_metric_and_refuses_others(tmp_path):
    model = make_model("bert", "AutoModelForSequenceClassification")
    assert make_cost_target("params", model) is None
    flops = make_cost_target("flops", model, seq_len=7)
    assert isinstance(flops, FlopsTarget) and flops.seq_len == 7
    table = synthetic_table(model)
    assert make_cost_target("latency", model, table=table).table is table
    table.save(tmp_path / "table.json")
    loaded = make_cost_target("latency", model, table=str(tmp_path / "table.json"))
    assert loaded.table.loaded and loaded.table.to_dict() == table.to_dict()
    with pytest.raises(ValueError) as refused:
        make_cost_target("energy", model)
    assert str(refused.value) == "target_metric='energy': choose one of params, flops, latency."


def test_a_flops_target_on_its_bound_is_accepted_and_past_it_refused_with_the_bound_named():
    """Heads and FFN gated, every unit shut leaves only the fixed FLOPs, so both bounds are ``1 - fixed share``. A
    target on the bound (or a rounding error above it) is reachable; the refusals name the bound and the structures."""
    model = patch_model(make_model("gpt2"), L0Config(heads=True, ffn=True, layers=False))
    target = FlopsTarget(SEQ_LEN)
    fixed_share = target.fixed_cost(model) / float(full_flops(model, SEQ_LEN).total)
    bound = 1.0 - fixed_share
    assert target.max_reduction(model) == bound  # the two checks meet at the same bound
    target.check_target(model, bound)
    target.check_target(model, bound + 1e-12)  # within the rounding tolerance
    past = bound + 1e-6
    with pytest.raises(ValueError) as refused:
        target.check_target(model, past)
    assert str(refused.value) == (
        f"a flops reduction of {past} cannot be reached: the FLOPs outside attention and FFN (pooler, classifier, "
        f"lm_head) is {fixed_share:.4f} of the dense flops, and pruning heads, neurons and sublayers never removes "
        f"it. Choose a target of at most {bound:.4f}."
    )
    two_heads_kept = patch_model(make_model("gpt2"), L0Config(heads=True, ffn=True, layers=False, target_heads=2))
    maximum = target.max_reduction(two_heads_kept)
    assert maximum + 1e-6 < bound
    target.check_target(two_heads_kept, maximum)
    target.check_target(two_heads_kept, maximum + 1e-12)
    past = maximum + 1e-6
    with pytest.raises(ValueError) as refused:
        target.check_target(two_heads_kept, past)
    assert str(refused.value) == (
        f"a flops reduction of {past} cannot be reached: with gates on heads, ffn this model can lose at most "
        f"{maximum:.4f} of its flops (every gate shut). Gate more structures (layers remove whole sublayers; drop "
        f"uniform targets like target_heads) or lower the target to at most {maximum:.4f}."
    )


def test_cost_modes_outside_the_four_are_refused():
    from hf_l0.cost.size import unit_probabilities

    model = patch_model(make_model("gpt2"), L0Config())
    for mode in ("Deterministic", None, "dense"):
        with pytest.raises(ValueError) as refused:
            unit_probabilities(model, mode)
        assert str(refused.value) == f"mode={mode!r}: choose one of expected, deterministic, full, minimum."


def test_flops_are_float64_and_counted_at_a_positive_int_sequence_length():
    model = patch_model(make_model("gpt2"), L0Config(heads=True, ffn=True, layers=True))
    for report in (full_flops(model, 1), expected_flops(model, 1), deterministic_flops(model, 1)):
        assert {t.dtype for t in (report.attention, report.ffn, report.fixed)} == {torch.float64}
    assert FlopsTarget(1).seq_len == 1
    for bad in (0, -3, 2.0, "8"):
        with pytest.raises(ValueError) as refused:
            full_flops(model, bad)
        assert str(refused.value) == (
            f"seq_len={bad!r} must be a positive int (the sequence length the FLOPs are counted at)."
        )


def test_flops_layout_is_read_once_and_lora_factors_are_not_counted():
    from peft import LoraConfig, get_peft_model

    from hf_l0.cost import flops

    plain = patch_model(make_model("gpt2"), L0Config())
    assert flops._layout(plain) is flops._layout(plain)  # kept on the gates: the controller reads it every step
    lora = get_peft_model(make_model("gpt2"), LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    patch_model(lora, L0Config())
    assert float(full_flops(lora, SEQ_LEN).total) == float(full_flops(plain, SEQ_LEN).total)  # merged away later


def test_check_cost_arguments_refusals_name_the_fix():
    from types import SimpleNamespace

    from hf_l0.cost.targets import check_cost_arguments

    model = patch_model(make_model("gpt2"), L0Config(layers=True))

    def args(**fields):
        return SimpleNamespace(**{"target_metric": "latency", "latency_table": None, **fields})

    for accepted in (args(), args(world_size=1), args(latency_table="t.json", world_size=4)):
        check_cost_arguments(model, accepted)  # one process, or one table for all: nothing to refuse
    check_cost_arguments(model, SimpleNamespace(target_metric="flops", latency_table=None, world_size=4))
    with pytest.raises(ValueError) as refused:
        check_cost_arguments(model, args(world_size=2))
    assert str(refused.value) == (
        "a speedup target in a run of several processes needs one table for all: measure it first (hf-l0 "
        "latency-table --model ... --batch-size B --seq-len L --threads T) and pass its path as --latency_table."
    )
    hidden = patch_model(make_model("gpt2"), L0Config(hidden=True))
    with pytest.raises(ValueError) as refused:
        check_cost_arguments(hidden, args())
    assert str(refused.value) == (
        "a speedup target does not support hidden-dimension gates: the latency table is measured at the dense hidden "
        "size. Set hidden=False (l0_structures without 'hidden') or use target_flops_reduction."
    )


def test_latency_targets_measure_their_table_at_the_asked_shape_unless_one_is_given(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from hf_l0.cost import targets

    model = patch_model(make_model("gpt2"), L0Config(layers=True))
    table = synthetic_table(model)
    measured = []

    def fake_latency_table(model, **kwargs):
        measured.append((model, kwargs))
        return table

    monkeypatch.setattr(targets, "latency_table", fake_latency_table)
    assert make_cost_target("latency", model).table is table
    assert measured == [(model, {"batch_size": 1, "seq_len": 128, "threads": 1})]  # the documented defaults
    assert make_cost_target("flops", model).seq_len == 128
    make_cost_target("latency", model, seq_len=16, batch_size=4, threads=2, repeats=3)
    assert measured[-1] == (model, {"batch_size": 4, "seq_len": 16, "threads": 2, "repeats": 3})
    args = SimpleNamespace(
        target_metric="latency",
        target_reduction=0.05,
        latency_table=None,
        cost_seq_len=SEQ_LEN,
        cost_batch_size=3,
        cost_threads=2,
    )
    assert targets.cost_target_from_args(model, args).table is table
    assert measured[-1] == (model, {"batch_size": 3, "seq_len": SEQ_LEN, "threads": 2})
    table.save(tmp_path / "table.json")
    args.latency_table = str(tmp_path / "table.json")
    given = targets.cost_target_from_args(model, args)
    assert len(measured) == 3 and given.table.loaded  # the given table, nothing measured


def test_cost_target_arguments_default_to_the_parameter_metric_and_name_each_bad_value(tmp_path):
    import math

    from hf_l0.cost.targets import CostTargetArguments
    from hf_l0.training.trainer import L0TrainingArguments

    unset = CostTargetArguments()
    assert unset.target_metric == "params" and math.isnan(unset.target_reduction)
    options = (
        ": set exactly one of --target_sparsity (fraction of attention + FFN parameters to remove, e.g. 0.6), "
        "--target_flops_reduction (fraction of the FLOPs to remove, e.g. 0.5) or --target_speedup (dense / compact "
        "latency on this machine, e.g. 2)."
    )
    for fields, problem in (
        ({}, "a target is required"),
        (
            {"target_sparsity": 0.5, "target_speedup": 2.0},
            "target_sparsity and target_speedup are set: one target only",
        ),
    ):
        with pytest.raises(ValueError) as refused:
            L0TrainingArguments(output_dir=str(tmp_path), **fields)
        assert str(refused.value) == problem + options
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError) as refused:
            L0TrainingArguments(output_dir=str(tmp_path), target_flops_reduction=bad)
        assert str(refused.value) == (
            f"target_flops_reduction={bad} is impossible: it is the fraction of the dense FLOPs to remove and must "
            "lie strictly between 0 and 1 (e.g. 0.5 halves them)."
        )
    with pytest.raises(ValueError) as refused:
        L0TrainingArguments(output_dir=str(tmp_path), target_speedup=0.5)
    assert str(refused.value) == (
        "target_speedup=0.5 is impossible: it is dense latency / compact latency and must be > 1 (e.g. 2 for twice "
        "as fast)."
    )
