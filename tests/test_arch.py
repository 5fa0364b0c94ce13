"""The adapter layer: an incomplete adapter fails early; decoder families share one attribute-driven base."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from hf_l0.arch import ArchAdapter, get_adapter, register_adapter, supported_model_types
from hf_l0.arch.base import DecoderAdapter
from hf_l0.pruning.stand_ins import RemovedAttention, RemovedMLP


def test_an_incomplete_adapter_fails_at_registration_and_at_construction():
    class HalfAdapter(ArchAdapter):
        model_types = ("half-written",)

        def layers(self):
            return []

    with pytest.raises(TypeError, match="HalfAdapter cannot be registered: it does not implement attention, ffn"):
        register_adapter(HalfAdapter)
    assert "half-written" not in supported_model_types()
    with pytest.raises(TypeError, match="abstract"):
        HalfAdapter(make_model("bert"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_adapters_remove_sublayers_and_find_the_stream_by_attribute_names(family):
    model = make_model(family)
    adapter = get_adapter(model)
    assert isinstance(adapter, DecoderAdapter)
    stream = adapter.residual_stream()
    assert len(stream.norms) == 2 * adapter.num_layers + 1 and stream.embeddings
    bias = adapter.attention(0).output.bias
    bias = None if bias is None else bias.detach().clone()
    adapter.remove_attention(0, keep_bias=True)
    adapter.remove_ffn(1, keep_bias=False)
    layer0, layer1 = adapter.layers()[0], adapter.layers()[1]
    assert isinstance(getattr(layer0, adapter.attention_attr), RemovedAttention)
    assert isinstance(getattr(layer1, adapter.ffn_attr), RemovedMLP)
    assert adapter.attention(0) is None and adapter.ffn(1) is None
    assert adapter.ffn(0) is not None and adapter.attention(1) is not None
    kept = getattr(getattr(layer0, adapter.attention_attr), adapter.attention_output_attr).bias
    assert (bias is None and kept is None) or torch.equal(kept, bias)  # the stand-in returns the kept bias
