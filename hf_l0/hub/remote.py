"""The base of the ``trust_remote_code`` classes that ``hf_l0.save_pretrained`` writes next to a compact model.

The saved directory holds flat copies of this module and of the rest of the portable set
(:data:`hf_l0.hub.remote_code.PORTABLE_MODULES`: adapter layer, structure, stand-ins, checkpoint checks), so
``AutoModel*.from_pretrained(dir, trust_remote_code=True)`` rebuilds the compact shapes with hf-l0's own code where
hf-l0 is not installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from transformers import AutoModel

from ..pruning.structure import apply_structure
from ..pruning.structure_format import STRUCTURE_KEY
from .checkpoint import check_weights, checkpoint_files, loading_info_problems, raise_on_mismatch


@contextlib.contextmanager
def stock_inner_model(config: Any) -> Iterator[None]:
    """While a head class is built, ``AutoModel.from_config(config)`` builds the family's stock base model.

    Llama-family sequence / token classification and QA heads build their inner model with
    ``AutoModel.from_config(config)``. For a compact model's config (its ``auto_map`` names remote code) that call
    would ask for ``trust_remote_code`` and then build a second compact base model whose structure the head applies
    again. Mapping the config class to the stock base model for the duration of ``__init__`` builds the dense inner
    model once; the head then shrinks itself, inner model included, to the structure exactly once.
    """
    mapping = AutoModel._model_mapping
    key = type(config)
    stock = next((klass for klass in key.__mro__[1:] if klass in mapping), None)
    if stock is None:  # not a subclass of a stock config (or a stock config itself): nothing to redirect
        yield
        return
    extra = mapping._extra_content  # transformers keeps registered (custom) classes here
    missing = object()
    previous = extra.get(key, missing)
    extra[key] = mapping[stock]
    try:
        yield
    finally:
        if previous is missing:
            extra.pop(key, None)
        else:
            extra[key] = previous


class CompactModelMixin:
    """Mix into a stock transformers model class: builds the compact shapes of ``config.l0_structure`` at
    ``__init__`` and loads strictly (a missing, mis-shaped or wrongly typed tensor is an error, never a random
    initialisation or a silent cast), with the same checks as ``hf_l0.from_pretrained``."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        with stock_inner_model(config):
            super().__init__(config, *args, **kwargs)
        structure = getattr(config, STRUCTURE_KEY, None)
        if not structure:
            raise ValueError(f"config.json has no {STRUCTURE_KEY}: it is not an hf-l0 compact model.")
        apply_structure(self, structure)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        path = str(pretrained_model_name_or_path)
        where = os.path.join(path, kwargs.get("subfolder") or "")
        local = os.path.isdir(where)
        if local:
            checkpoint_files(where)  # complete safetensors inside the directory, before transformers reads them
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        if local:
            check_weights(model, where)
        else:  # a Hub repo: transformers' own findings (the files live in its cache), in the same report
            raise_on_mismatch(where, f"config.json ({STRUCTURE_KEY})", loading_info_problems(info))
        return (model, info) if want_info else model
