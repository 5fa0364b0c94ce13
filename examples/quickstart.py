"""Patch the packaged MiniLM with L0 gates, close half of its heads and FFN neurons, prune, and check that the compact
model computes exactly what the gated one did. No training: this shows the mechanics (see scripts/ for training).

    python examples/quickstart.py
"""

import argparse
import csv

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_l0
from hf_l0.cost.measure import latency_speedup
from hf_l0.demo import assets
from hf_l0.gates.patch import get_gates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per model and round")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    dense = AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2).eval()
    with open(assets.movie_reviews_csv(), newline="") as f:
        texts = [row["text"] for row, _ in zip(csv.DictReader(f), range(32))]
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")

    model = AutoModelForSequenceClassification.from_pretrained(assets.minilm_dir(), num_labels=2).eval()
    model.load_state_dict(dense.state_dict())
    hf_l0.patch_model(model, hf_l0.L0Config(heads=True, ffn=True, layers=True))
    gates = get_gates(model)
    with torch.no_grad():  # stand-in for training: random gates that close about half of the heads and neurons
        for gate in (gates.heads, gates.ffn):
            gate.log_alpha.copy_(torch.randn_like(gate.log_alpha) * 3 - 1.6)
    with torch.inference_mode():
        gated_logits = model(**batch).logits
    print(f"sparsity of attention+FFN under the eval-mode gates: {hf_l0.deterministic_sparsity(model).item():.3f}")

    hf_l0.prune_model(model)
    with torch.inference_mode():
        pruned_logits = model(**batch).logits
    dense_params, compact_params = dense.num_parameters(), model.num_parameters()
    speedup = latency_speedup(dense, model, batch, repeats=args.repeats)["speedup"]
    heads = [layer["attention_heads"] for layer in model.config.l0_structure["layers"]]
    neurons = [layer["intermediate_size"] for layer in model.config.l0_structure["layers"]]
    print(f"heads kept per layer:   {heads} (of 12)")
    print(f"neurons kept per layer: {neurons} (of 1536)")
    print(f"parameters: {dense_params:,} -> {compact_params:,} ({1 - compact_params / dense_params:.1%} fewer)")
    print(f"max |gated - pruned| logits: {(gated_logits - pruned_logits).abs().max().item():.2e}")
    print(f"CPU latency speedup (batch 32, seq 128, {torch.get_num_threads()} threads): {speedup:.2f}x")


if __name__ == "__main__":
    main()
