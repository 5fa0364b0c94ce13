import copy

import pytest
import torch
from conftest import make_inputs, make_model, model_output

import hf_l0
from hf_l0.arch import get_adapter
from hf_l0.pruning.baselines import (
    activation_scores,
    fisher_scores,
    importance_prune,
    keep_masks,
    magnitude_prune,
    magnitude_scores,
    set_gates_to_masks,
)
from hf_l0.pruning.slicing import base_layer, linear_axes, unit_rows

FAMILIES = [
    ("bert", "AutoModelForSequenceClassification"),
    ("gpt2", "AutoModelForCausalLM"),
    ("llama", "AutoModelForCausalLM"),
]


def _batches(model, count=2):
    batches = []
    for seed in range(count):
        inputs = make_inputs(seed=seed + 1)
        if hasattr(model, "lm_head"):  # causal LM: the loss of the next token
            labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        else:
            labels = torch.tensor([0, 2])
        batches.append({**inputs, "labels": labels})
    return batches


def _prunable(model) -> float:
    gated = hf_l0.patch_model(copy.deepcopy(model), hf_l0.L0Config(layers=True))
    return float(hf_l0.full_size(gated).prunable)


def _all_scores(model):
    return {
        "magnitude": magnitude_scores(model),
        "fisher": fisher_scores(model, _batches(model)),
        "activation": activation_scores(model, _batches(model)),
    }


@pytest.mark.parametrize("family,auto_class", FAMILIES)
def test_scores_have_the_gates_shapes_and_leave_the_model_alone(family, auto_class):
    model = make_model(family, auto_class)
    before = model_output(model, make_inputs())
    gated = hf_l0.patch_model(copy.deepcopy(model), hf_l0.L0Config(layers=True))
    gates = hf_l0.get_gates(gated)
    for method, scores in _all_scores(model).items():
        assert set(scores) == {"heads", "ffn"}, method
        for name, score in scores.items():
            assert score.shape == getattr(gates, name).log_alpha.shape, (method, name)
            assert score.dtype == torch.float32 and torch.isfinite(score).all() and (score >= 0).all()
            assert score.max() > 0, (method, name)
    assert not hf_l0.is_patched(model) and not model.training
    assert all(p.grad is None for p in model.parameters())  # the scorers leave no weight gradients behind
    torch.testing.assert_close(model_output(model, make_inputs()), before, rtol=0, atol=0)


def test_scorers_keep_a_patched_models_gates_and_mode():
    model = make_model("llama")
    dense_scores = fisher_scores(model, _batches(model))
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    model.train()
    state = {k: v.clone() for k, v in hf_l0.get_gates(model).state_dict().items()}
    patched_scores = fisher_scores(model, _batches(model))
    assert model.training and hf_l0.is_patched(model)
    assert all(torch.equal(v, hf_l0.get_gates(model).state_dict()[k]) for k, v in state.items())
    # The gates' own values (some 0 at init in eval mode) are ignored: the scores are the dense model's.
    for name in ("heads", "ffn"):
        torch.testing.assert_close(patched_scores[name], dense_scores[name])


@pytest.mark.parametrize("family,auto_class", FAMILIES)
@pytest.mark.parametrize("sparsity", [0.3, 0.75])
def test_importance_prune_hits_the_parameter_target(family, auto_class, sparsity):
    model = make_model(family, auto_class)
    dense, prunable = model.num_parameters(), _prunable(model)
    ffn = get_adapter(model).ffn(0)
    neuron = ffn.weights_per_unit() * model.config.hidden_size + ffn.biases_per_unit()
    compact = importance_prune(model, activation_scores(model, _batches(model, 1)), sparsity)
    removed = dense - compact.num_parameters()
    # Heads go by whole fractions, neurons fill up the budget: within half a neuron's parameters of the target.
    assert abs(removed - sparsity * prunable) <= neuron / 2


@pytest.mark.parametrize("family,auto_class", FAMILIES)
def test_pruned_model_equals_the_gated_model_with_the_same_mask(family, auto_class):
    model = make_model(family, auto_class)
    scores = fisher_scores(model, _batches(model, 1))
    masks = keep_masks(model, scores, 0.5)
    assert (~masks["heads"]).any() and (~masks["ffn"]).any()
    gated = hf_l0.patch_model(copy.deepcopy(model), hf_l0.L0Config(layers=False))
    set_gates_to_masks(gated, masks)
    for name, keep in masks.items():
        assert torch.equal(getattr(hf_l0.get_gates(gated), name).deterministic(), keep.float())
    expected = model_output(gated.eval(), make_inputs())
    compact = importance_prune(model, scores, 0.5)
    torch.testing.assert_close(model_output(compact, make_inputs()), expected, rtol=1e-5, atol=1e-5)


def _silence_inputs(sublayer, unit: int) -> None:
    """Zero every input-projection row (and bias) of one unit: its output (context / activation) is then 0."""
    with torch.no_grad():
        for projection in sublayer.inputs:
            layer = base_layer(projection.module)
            rows = unit_rows(projection.blocks, torch.tensor([unit]))
            layer.weight.index_fill_(linear_axes(layer)[0], rows, 0.0)
            if layer.bias is not None:
                layer.bias.index_fill_(0, rows, 0.0)


@pytest.mark.parametrize("family,auto_class", FAMILIES)
def test_silenced_units_score_zero_and_go_first(family, auto_class):
    model = make_model(family, auto_class)
    adapter = get_adapter(model)
    _silence_inputs(adapter.attention(1), 1)
    _silence_inputs(adapter.ffn(2), 5)
    for method, scores in _all_scores(model).items():
        if method == "magnitude":
            continue
        assert scores["heads"][1, 1] == 0 and scores["ffn"][2, 5] == 0, method
        assert (scores["heads"].flatten().sort().values[1] > 0) and (scores["ffn"].flatten().sort().values[1] > 0)
        masks = keep_masks(model, scores, 0.2)  # removes at least one head and one neuron: the silenced ones first
        assert not masks["heads"][1, 1] and not masks["ffn"][2, 5], method


def test_head_without_output_columns_has_zero_fisher_score():
    model = make_model("llama")
    attention = get_adapter(model).attention(0)
    with torch.no_grad():
        base_layer(attention.output).weight[:, : attention.unit_width] = 0.0  # KV group 0 of layer 0 writes nothing
    scores = fisher_scores(model, _batches(model))
    assert scores["heads"][0, 0] == 0 and (scores["heads"].flatten()[1:] > 0).all()
    assert not keep_masks(model, scores, 0.2)["heads"][0, 0]


@pytest.mark.parametrize("family,auto_class", [FAMILIES[0], FAMILIES[2]])
def test_fisher_score_is_the_squared_derivative_of_the_loss(family, auto_class):
    """Independent check: scaling a unit's output-projection columns by (1 + e) scales its output; the central
    difference of the loss in e, squared, is that unit's Fisher score on one batch."""
    # Default init (no random biases): the stock attention runs its softmax in float32 even in a float64 model, and
    # with random biases its rounding moves this difference quotient by up to 4% (random biases are what the
    # equivalence tests need; this test checks the score's definition)
    model = make_model(family, auto_class, randomize=False).double()
    batch = _batches(model, 1)[0]

    def loss_fn(m, batch):  # in float64 throughout (the stock causal LM loss upcasts to float32 only)
        logits = m(**{k: v for k, v in batch.items() if k != "labels"}).logits
        if logits.dim() == 3:
            logits, labels = logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
        else:
            labels = batch["labels"]
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)

    scores = fisher_scores(model, [batch], loss_fn=loss_fn)
    adapter = get_adapter(model)

    def loss_with_scale(sublayer, unit: int, scale: float) -> float:
        m = copy.deepcopy(model)
        s = (get_adapter(m).attention if sublayer.kind == "attention" else get_adapter(m).ffn)(sublayer.layer_idx)
        with torch.no_grad():
            columns = slice(unit * s.unit_width, (unit + 1) * s.unit_width)
            base_layer(s.output).weight[:, columns] *= scale
            return loss_fn(m, batch).item()

    eps = 3e-3  # the float32 softmax: smaller steps drown in its rounding
    for sublayer, name in ((adapter.attention(1), "heads"), (adapter.ffn(2), "ffn")):
        unit = int(scores[name][sublayer.layer_idx].argmax())  # a large score: far above the rounding noise
        derivative = (loss_with_scale(sublayer, unit, 1 + eps) - loss_with_scale(sublayer, unit, 1 - eps)) / (2 * eps)
        assert scores[name][sublayer.layer_idx, unit].item() == pytest.approx(derivative**2, rel=1e-3)


def test_fisher_scores_take_a_loss_function():
    model = make_model("llama")
    batches = [make_inputs(seed=3)]  # no labels: the model's own loss is None
    with pytest.raises(ValueError, match="labels"):
        fisher_scores(model, batches)
    calls = []

    def one_logit(m, batch):
        calls.append(batch)
        return m(**batch).logits[..., 5].sum()

    scores = fisher_scores(model, batches, loss_fn=one_logit)
    assert len(calls) == 1 and scores["heads"].max() > 0 and scores["ffn"].max() > 0


def test_importance_prune_rejects_bad_scores_and_sparsity():
    model = make_model("gpt2")
    scores = magnitude_scores(model)
    with pytest.raises(ValueError, match="shape"):
        importance_prune(model, {**scores, "heads": scores["heads"][:, :2]}, 0.5)
    with pytest.raises(ValueError, match="lack 'ffn'"):
        importance_prune(model, {"heads": scores["heads"]}, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        importance_prune(model, {**scores, "ffn": scores["ffn"] * float("nan")}, 0.5)
    with pytest.raises(ValueError, match="no calibration batches"):
        activation_scores(model, [])
    assert not hf_l0.is_patched(model)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_magnitude_baseline_removes_the_requested_share(family):
    model = make_model(family, "AutoModelForSequenceClassification")
    dense = model.num_parameters()
    hf_l0.patch_model(model, hf_l0.L0Config(layers=True))
    prunable = hf_l0.full_size(model).prunable.item()
    hf_l0.unpatch_model(model)
    compact = magnitude_prune(model, 0.5)
    removed = (dense - compact.num_parameters()) / prunable
    assert removed == pytest.approx(0.5, abs=0.02)


def test_magnitude_baseline_keeps_the_largest_units():
    model = make_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, :5] *= 100.0  # neurons 0-4 of every layer are the heaviest
            layer.mlp.up_proj.weight[30:] = 0.0  # neurons 30-36 carry almost nothing
            layer.mlp.gate_proj.weight[30:] = 0.0
            layer.mlp.down_proj.weight[:, 30:] = 0.0
    scores = magnitude_scores(model)
    removed_neurons = int((~keep_masks(model, scores, 0.5)["ffn"]).sum())
    assert removed_neurons >= 3 * 7  # every near-empty neuron goes
    compact = magnitude_prune(model, 0.5)
    for layer in compact.model.layers:
        kept = layer.mlp.down_proj.weight
        assert kept.shape[1] < 37
        assert (kept.abs().amax(0) > 0).all()  # no all-zero neuron survived
    assert sum(layer.mlp.down_proj.weight.shape[1] for layer in compact.model.layers) == 3 * 37 - removed_neurons
    assert all(layer.mlp.down_proj.weight.abs().max() > 1.0 for layer in compact.model.layers)


def test_magnitude_baseline_rejects_impossible_sparsity():
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(make_model("gpt2"), 1.0)
