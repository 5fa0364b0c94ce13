"""Architecture adapters, one module per model family, registered by ``model_type``."""

from . import bert, gpt2, llama  # noqa: F401  (importing registers the adapters)
from .base import ADAPTERS, ArchAdapter, Projection, ResidualStream, Sublayer, get_adapter, register_adapter, \
    supported_model_types

__all__ = ["ADAPTERS", "ArchAdapter", "Projection", "ResidualStream", "Sublayer", "get_adapter", "register_adapter",
           "supported_model_types"]
