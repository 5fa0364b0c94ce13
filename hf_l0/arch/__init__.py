"""Architecture adapters, one module per model family, registered by ``model_type``.

Every module of this package is imported here, and importing it registers its adapter: a new family is one file.
"""

import importlib
import pkgutil

from .base import (
    ADAPTERS,
    ArchAdapter,
    DecoderAdapter,
    Projection,
    ResidualStream,
    Sublayer,
    get_adapter,
    register_adapter,
    supported_model_types,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ADAPTERS",
    "ArchAdapter",
    "DecoderAdapter",
    "Projection",
    "ResidualStream",
    "Sublayer",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]
