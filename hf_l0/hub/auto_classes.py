"""hf-l0's compact classes, registered with transformers' Auto classes when ``hf_l0`` is imported.

A compact model saved with remote code says ``model_type: hf_l0_<type>`` in ``config.json`` and maps the Auto classes
to ``modeling_hf_l0.py`` next to it. Without a local class for that model type, transformers asks whether to run that
file (``Do you wish to run the custom code?``) even for ``AutoTokenizer.from_pretrained(dir)``, which needs no model
code. Registered here, the ``hf_l0_<type>`` model types resolve to hf-l0's own classes (the same
:class:`~hf_l0.hub.remote.CompactModelMixin` as the written code), and transformers prefers registered local classes
to a directory's code: ``AutoConfig`` / ``AutoTokenizer`` / ``AutoModel*.from_pretrained(dir)`` load without a prompt
and run nothing from the directory, with or without ``trust_remote_code``.

Config classes are registered at import; a family's model classes when its first compact config is built (importing
eight families' modeling modules would add seconds to ``import hf_l0``).
"""

from __future__ import annotations

from typing import Any

import transformers
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..arch import supported_model_types
from ..arch.base import MODEL_TYPE_PREFIX
from .export import AUTO_CLASSES
from .own_methods import bind_compact_methods
from .remote import CompactModelMixin

# model_type ("hf_l0_llama") -> hf-l0's config class; and the (Auto class, config class) pairs registered so far.
_CONFIG_CLASSES: dict[str, type] = {}
_MODEL_CLASSES: dict[str, list[tuple[Any, type]]] = {}


class RegisteredCompactModel(CompactModelMixin):
    """The written code's :class:`~hf_l0.hub.remote.CompactModelMixin`, plus what a model loaded with hf-l0 installed
    gets: its own ``save_pretrained`` / ``push_to_hub`` write hf-l0's export (:func:`bind_compact_methods`). The stock
    methods would write the config, whose ``auto_map`` names modeling files, without those files."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        bind_compact_methods(self)


def _register_model_classes(config_cls: type) -> None:
    """Map ``config_cls`` to a compact class in every Auto class whose mapping knows its stock config (once)."""
    if config_cls.model_type in _MODEL_CLASSES:
        return
    stock_config = config_cls.__mro__[1]
    registered = _MODEL_CLASSES.setdefault(config_cls.model_type, [])
    for name in AUTO_CLASSES:
        auto = getattr(transformers, name)
        try:
            stock_model = auto._model_mapping[stock_config]
        except KeyError:
            continue
        if isinstance(stock_model, (tuple, list)):
            stock_model = stock_model[0]
        compact = type(
            f"L0{stock_model.__name__}",
            (RegisteredCompactModel, stock_model),
            {"config_class": config_cls, "__module__": __name__},
        )
        auto.register(config_cls, compact, exist_ok=True)
        registered.append((auto, config_cls))


def _compact_config_class(stock_config: type, model_type: str) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _register_model_classes(type(self))  # before any Auto class looks this config up
        stock_config.__init__(self, *args, **kwargs)

    return type(
        f"L0{stock_config.__name__}",
        (stock_config,),
        {"model_type": model_type, "__init__": __init__, "__module__": __name__},
    )


def register_compact_classes() -> None:
    """Register a config class for ``hf_l0_<type>`` of every supported model type (idempotent; ``import hf_l0`` calls
    it) and, lazily, the compact model classes of each Auto class."""
    for base_type in supported_model_types():
        model_type = MODEL_TYPE_PREFIX + base_type
        if model_type in _CONFIG_CLASSES or base_type not in CONFIG_MAPPING:
            continue
        config_cls = _compact_config_class(CONFIG_MAPPING[base_type], model_type)
        AutoConfig.register(model_type, config_cls, exist_ok=True)
        _CONFIG_CLASSES[model_type] = config_cls


def unregister_compact_classes() -> None:
    """Undo :func:`register_compact_classes`: transformers then resolves ``hf_l0_<type>`` through the directory's
    own ``modeling_hf_l0.py`` (``trust_remote_code=True``), as where hf-l0 is not installed."""
    for model_type in _CONFIG_CLASSES:
        CONFIG_MAPPING._extra_content.pop(model_type, None)
        for auto, key in _MODEL_CLASSES.pop(model_type, []):
            auto._model_mapping._extra_content.pop(key, None)
    _CONFIG_CLASSES.clear()
