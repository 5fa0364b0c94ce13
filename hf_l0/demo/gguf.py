"""Models loaded from GGUF files (``from_pretrained(..., gguf_file=...)``): transformers dequantizes their weights to
float but marks the model as quantized. Detection is :func:`hf_l0.hub.save.gguf_quantizer`, the one rule hf-l0 uses
(saving detaches the mark the same way)."""

from __future__ import annotations

from torch import nn

from ..hub.save import gguf_quantizer


def drop_gguf_quantizer(model: nn.Module) -> nn.Module:
    """Drop the quantized marks of a model loaded from GGUF, which make ``Trainer`` refuse to train it and would
    write a ``quantization_config`` into the saved config. The weights are plain floats; other quantizations really
    are quantized and keep their marks. Returns ``model``."""
    if gguf_quantizer(model) is None:
        return model
    if not all(p.dtype.is_floating_point for p in model.parameters()):
        raise ValueError("GGUF model still holds integer weights; hf-l0 needs dequantized (float) weights.")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model
