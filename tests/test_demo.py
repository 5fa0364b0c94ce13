"""The demo helpers shared by scripts, benchmarks and tests (hf_l0.demo): GGUF marks, the evaluation loops."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_model
from transformers.utils.quantization_config import QuantizationMethod

from hf_l0.demo.evaluation import metrics_from_logits, perplexity
from hf_l0.demo.gguf import drop_gguf_quantizer
from hf_l0.hub.save import gguf_quantizer


def _marked(method: QuantizationMethod):
    model = make_model("llama")
    model.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method=method))
    model.is_quantized = True
    model.config.quantization_config = {"quant_method": method.value}
    return model


def test_gguf_marks_are_dropped_and_other_quantizations_kept():
    model = _marked(QuantizationMethod.GGUF)
    assert gguf_quantizer(model) is model.hf_quantizer
    assert drop_gguf_quantizer(model) is model
    assert model.hf_quantizer is None and not model.is_quantized and not hasattr(model.config, "quantization_config")
    other = _marked(QuantizationMethod.BITS_AND_BYTES)
    assert gguf_quantizer(other) is None
    drop_gguf_quantizer(other)
    assert other.hf_quantizer is not None and other.is_quantized and hasattr(other.config, "quantization_config")
    assert gguf_quantizer(make_model("llama")) is None


def test_gguf_model_with_integer_weights_is_refused():
    model = _marked(QuantizationMethod.GGUF)
    norm = model.model.norm
    norm.weight = torch.nn.Parameter(norm.weight.detach().to(torch.int8), requires_grad=False)  # still quantized
    with pytest.raises(ValueError, match="integer weights"):
        drop_gguf_quantizer(model)


def test_classification_metrics():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 1])  # predictions 0, 1, 1, 0: one true positive, one false positive, one miss
    assert metrics_from_logits(logits, labels) == {"accuracy": 0.5, "f1": 0.5}
    three = np.eye(3)[[0, 1, 2, 2]]
    assert metrics_from_logits(three, np.array([0, 1, 2, 2])) == {"accuracy": 1.0, "f1": 1.0}


def test_perplexity_is_exp_of_the_mean_loss():
    model = make_model("llama")
    blocks = [{"input_ids": torch.arange(2, 10) + i, "labels": torch.arange(2, 10) + i} for i in range(3)]
    with torch.no_grad():
        losses = [model(input_ids=b["input_ids"][None], labels=b["labels"][None]).loss.item() for b in blocks]
    assert perplexity(model, blocks, batch_size=2) == pytest.approx(np.exp(np.mean(losses)), rel=1e-5)
