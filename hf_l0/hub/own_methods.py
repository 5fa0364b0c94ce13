"""A compact model's own ``save_pretrained`` and ``push_to_hub`` write what :func:`hf_l0.save_pretrained` writes.

transformers' ``PreTrainedModel.save_pretrained`` knows nothing of ``config.l0_structure``: it writes the stock
config, which stock ``from_pretrained`` loads into the *dense* class (a size mismatch, or, when only sublayers were
removed, the missing sublayers rebuilt with random weights). :func:`hf_l0.prune_model` and :func:`hf_l0.from_pretrained`
therefore bind the two functions below onto the compact model *instance* (its class stays the stock one), so every
path that ends in ``model.save_pretrained`` (user code, ``Trainer.save_model`` and its checkpoints, transformers'
``PushToHubMixin.push_to_hub``) writes hf-l0's export: a stock config only where it builds exactly the compact shapes
(native), otherwise a directory that transformers loads with its own custom-code mechanism (``auto_map`` and the
modeling files, ``trust_remote_code=True``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..arch.base import MODEL_TYPE_PREFIX
from ..pruning.structure_format import STRUCTURE_KEY
from .save import CompactModelUpload
from .save import push_to_hub as push_compact
from .save import save_pretrained as save_compact


class CompactMethod:
    """``model.<name>`` of a compact model: calls ``func(model, ...)``.

    Like a bound method, but it holds the model through a weak reference (a bound method stored on its own instance
    is a reference cycle: a deleted model's memory would wait for the cyclic garbage collector), and it follows the
    model through ``copy.deepcopy`` and pickling.
    """

    def __init__(self, func: Callable[..., Any], model: nn.Module) -> None:
        functools.update_wrapper(self, func)
        self.__func__ = func
        self._model = weakref.ref(model)
        parameters = list(inspect.signature(func).parameters.values())[1:]
        self.__signature__ = inspect.Signature(parameters)

    @property
    def __self__(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise ReferenceError(f"the model of this {self.__name__} method was deleted.")
        return model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> CompactMethod:
        return CompactMethod(self.__func__, copy.deepcopy(self.__self__, memo))  # the copy of the model (memo)

    def __reduce__(self):
        return CompactMethod, (self.__func__, self.__self__)


def bind_compact_methods(model: nn.Module) -> nn.Module:
    """Route ``model.save_pretrained`` and ``model.push_to_hub`` to hf-l0's export, and make its config write
    itself as a compact one (:func:`compact_config_class`); returns ``model``.

    ``type(model).save_pretrained(model, ...)`` still reaches the stock method (hf_l0.save_pretrained itself writes
    the weights that way).
    """
    model.save_pretrained = CompactMethod(save_pretrained, model)
    model.push_to_hub = CompactMethod(push_to_hub, model)
    config = getattr(model, "config", None)
    if config is not None and type(config).__module__.startswith("transformers."):
        config.__class__ = compact_config_class(type(config))
    return model


# -- the config of a compact model ----------------------------------------------------------------------------------

_COMPACT_CONFIG_CLASSES: dict[type, type] = {}


def writes_compact_model_type(data: dict[str, Any]) -> bool:
    """Whether a config dict describes a compact model that the stock class of its ``model_type`` would build
    wrongly: it carries ``l0_structure`` and was not exported natively (``l0_export.native``)."""
    export = data.get("l0_export")
    return bool(data.get(STRUCTURE_KEY)) and not (isinstance(export, dict) and export.get("native"))


def _compact_to_json_string(self: Any, use_diff: bool = True) -> str:
    data = self.to_diff_dict() if use_diff is True else self.to_dict()
    if writes_compact_model_type(data) and not str(data.get("model_type", "")).startswith(MODEL_TYPE_PREFIX):
        data["model_type"] = MODEL_TYPE_PREFIX + data["model_type"]
    return json.dumps(self._encode_special_floats(data), indent=2, sort_keys=True) + "\n"


def _rebuild_compact_config(stock: type, state: dict[str, Any]) -> Any:
    config = stock.__new__(stock)
    config.__dict__.update(state)
    config.__class__ = compact_config_class(stock)
    return config


def _compact_reduce_ex(self: Any, protocol: int) -> tuple:
    return _rebuild_compact_config, (type(self).__mro__[1], dict(self.__dict__))


def compact_config_class(stock: type) -> type:
    """The class a compact model's config gets: the stock config class (same name, so transformers' Auto mappings
    find its models) whose JSON, however it is written (``config.save_pretrained``, ``to_json_file``, a stock
    ``save_pretrained`` of the model), says ``model_type: hf_l0_<type>`` unless the config describes a native
    export. Stock transformers then refuses the file instead of building the dense model and filling a removed
    sublayer with random weights. In memory ``config.model_type`` and ``to_dict()`` stay the stock ones."""
    if stock not in _COMPACT_CONFIG_CLASSES:
        _COMPACT_CONFIG_CLASSES[stock] = type(
            stock.__name__,
            (stock,),
            {
                "__module__": __name__,
                "__qualname__": stock.__qualname__,
                "__doc__": stock.__doc__,
                "to_json_string": _compact_to_json_string,
                "__reduce_ex__": _compact_reduce_ex,
            },
        )
    return _COMPACT_CONFIG_CLASSES[stock]


def has_compact_methods(model: nn.Module) -> bool:
    """Whether :func:`bind_compact_methods` routed this instance's saves."""
    return getattr(model.__dict__.get("save_pretrained"), "__func__", None) is save_pretrained


def save_pretrained(
    self: nn.Module,
    save_directory: str | os.PathLike,
    is_main_process: bool = True,
    state_dict: dict | None = None,
    push_to_hub: bool = False,
    *,
    tokenizer: Any = None,
    model_card: bool | None = None,
    **kwargs: Any,
) -> Path | None:
    """``PreTrainedModel.save_pretrained`` of a compact model: :func:`hf_l0.save_pretrained` (crash-safe,
    safetensors, native or remote code), so the directory loads exactly, with or without hf-l0.

    Accepts the stock arguments (``is_main_process``, ``state_dict``, ``push_to_hub`` with ``repo_id`` /
    ``commit_message`` / ``commit_description`` / ``create_pr`` / ``private`` / ``token`` / ``revision``,
    ``max_shard_size``, ...) and those of :func:`hf_l0.save_pretrained` (``tokenizer``, ``native``, ``metrics``,
    ``tags``, ...); the stock ones no hf-l0 loader could read (``variant``, ...) are refused there. Like the stock
    method it writes a model card only when pushing, unless ``model_card`` says otherwise. Processes other than the
    main one write nothing (a second writer would race the main one).
    """
    if not is_main_process:
        return None
    upload: dict[str, Any] = {}
    if push_to_hub:
        upload = {
            "repo_id": kwargs.pop("repo_id", Path(save_directory).absolute().name),
            "commit_message": kwargs.pop("commit_message", None) or "Upload compact model (hf-l0)",
            "create_pr": kwargs.pop("create_pr", False),
            "token": kwargs.pop("token", None),
            "private": kwargs.pop("private", None),
            "revision": kwargs.pop("revision", None),
            "commit_description": kwargs.pop("commit_description", None),
        }
        kwargs.setdefault("repo_id", upload["repo_id"])  # the model card's usage snippet
    if state_dict is not None:
        kwargs["state_dict"] = state_dict
    model_card = push_to_hub if model_card is None else model_card
    out = save_compact(self, save_directory, tokenizer, model_card=model_card, **kwargs)
    if upload:
        from transformers.utils import hub as hf_hub

        repo_id = (
            hf_hub.hf_api()
            .create_repo(upload["repo_id"], private=upload["private"], token=upload["token"], exist_ok=True)
            .repo_id
        )
        CompactModelUpload(self)._upload_modified_files(
            out,
            repo_id,
            files_timestamps={},
            commit_message=upload["commit_message"],
            token=upload["token"],
            create_pr=upload["create_pr"],
            revision=upload["revision"],
            commit_description=upload["commit_description"],
        )
    return out


def push_to_hub(
    self: nn.Module,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "5GB",
    tags: list[str] | None = None,
    tokenizer: Any = None,
    **save_kwargs: Any,
) -> Any:
    """``PushToHubMixin.push_to_hub`` of a compact model: uploads the folder :func:`hf_l0.save_pretrained` writes
    (with hf-l0's model card and structure heatmap) through transformers' own upload. ``save_kwargs`` are those of
    :func:`hf_l0.save_pretrained` (``metrics``, ``base_model``, ...), checked before anything is uploaded;
    ``tags`` join the card's own."""

    return push_compact(
        self,
        repo_id,
        tokenizer,
        commit_message=commit_message,
        commit_description=commit_description,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
        max_shard_size=max_shard_size,
        tags=tags,
        **save_kwargs,
    )
