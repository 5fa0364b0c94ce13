import pytest
import torch

import hf_l0
from hf_l0.baselines import magnitude_prune

from conftest import make_model


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_magnitude_baseline_removes_the_requested_share(family):
    model = make_model(family, "AutoModelForSequenceClassification")
    dense = model.num_parameters()
    hf_l0.patch_model(model, hf_l0.L0Config())
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
    compact = magnitude_prune(model, 0.5)
    for layer in compact.model.layers:
        kept = layer.mlp.down_proj.weight
        assert kept.shape[1] < 37
        assert (kept.abs().amax(0) > 0).all()  # no all-zero neuron survived
    assert sum(layer.mlp.down_proj.weight.shape[1] for layer in compact.model.layers) == 3 * 37 - int(0.5 * 3 * 37)
    assert all(layer.mlp.down_proj.weight.abs().max() > 1.0 for layer in compact.model.layers)


def test_magnitude_baseline_rejects_impossible_sparsity():
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(make_model("gpt2"), 1.0)
