"""Which export a compact model gets (native stock config or remote code), and what ``config.json`` records of it.

A model is saved **natively** when every layer has the same shape and the family's stock config builds exactly its
tensors; otherwise with **remote code** (:mod:`hf_l0.hub.remote_code`). :func:`export_plan` decides and says why;
:class:`ExportRecord` is the ``l0_export`` entry of ``config.json``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import transformers
from torch import nn

from ..arch import get_adapter
from ..arch.base import base_model_type
from ..pruning.structure_format import STRUCTURE_KEY
from ..version import __version__

EXPORT_KEY = "l0_export"
EXPORT_FORMAT = 1
# Auto classes a saved model can be mapped to (the first whose mapping gives the model's class wins).
AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMaskedLM",
    "AutoModelForMultipleChoice",
)
PIPELINE_TAGS = {
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForQuestionAnswering": "question-answering",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForMultipleChoice": "multiple-choice",
    "AutoModel": "feature-extraction",
}
# Sublayer kinds and the l0_structure key whose 0 means the sublayer was removed whole.
SUBLAYER_KEYS = (("attention", "key_value_heads"), ("ffn", "intermediate_size"))


@dataclass
class ExportPlan:
    """How :func:`hf_l0.save_pretrained` will write ``model``: natively (stock config) or with remote code, and why."""

    native: bool
    reason: str
    config_updates: dict[str, Any] = field(default_factory=dict)  # stock config fields of a native export


@dataclass
class ExportRecord:
    """The ``l0_export`` entry of a saved compact model's ``config.json``: how it was exported and its sizes."""

    native: bool
    reason: str
    base_model_type: str
    base_architectures: list[str]
    removed_sublayers: dict[str, list[int]]  # "attention" / "ffn" -> indices of the layers that lost it whole
    dense_parameters: int
    parameters: int
    format: int = EXPORT_FORMAT
    hf_l0_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def removed_sublayers(structure: dict) -> dict[str, list[int]]:
    """``{"attention": [layer, ...], "ffn": [...]}``: the layers whose sublayer was removed whole."""
    return {kind: [i for i, layer in enumerate(structure["layers"]) if layer[key] == 0] for kind, key in SUBLAYER_KEYS}


def _is_stock(cls: type) -> bool:
    return cls.__module__.startswith("transformers.")


def stock_model_class(model: nn.Module) -> type:
    """The stock transformers class of ``model``: its own class for the models hf-l0 builds, the stock parent of the
    remote-code classes (``L0LlamaForCausalLM``) that ``AutoModel*.from_pretrained(..., trust_remote_code=True)``
    builds from a saved directory."""
    return next((cls for cls in type(model).__mro__ if _is_stock(cls)), type(model))


def stock_config(config: Any) -> Any:
    """``config`` as an instance of its stock class (``model_type`` without the ``hf_l0_`` prefix): itself when it is
    one already, else a copy (a remote-code config class such as ``L0LlamaConfig``)."""
    cls = next((klass for klass in type(config).__mro__ if _is_stock(klass)), None)
    if cls is None or cls is type(config):
        return config
    copied = copy.deepcopy(config)
    copied.__class__ = cls
    return copied


def dense_parameter_count(model: nn.Module) -> int:
    """Parameters of the dense model ``model`` was pruned from (built on the meta device from its config)."""
    config = copy.deepcopy(stock_config(model.config))
    if hasattr(config, STRUCTURE_KEY):
        delattr(config, STRUCTURE_KEY)
    with torch.device("meta"):
        dense = stock_model_class(model)(config)
    return sum(p.numel() for p in dense.parameters())


def export_record(model: nn.Module, plan: ExportPlan) -> ExportRecord:
    """The record :func:`hf_l0.save_pretrained` writes for a compact model exported by ``plan``."""
    return ExportRecord(
        native=plan.native,
        reason=plan.reason,
        base_model_type=base_model_type(model.config),
        base_architectures=[stock_model_class(model).__name__],
        removed_sublayers=removed_sublayers(getattr(model.config, STRUCTURE_KEY)),
        dense_parameters=dense_parameter_count(model),
        parameters=sum(p.numel() for p in model.parameters()),
    )


def auto_class_name(model: nn.Module) -> str:
    """The transformers Auto class that maps this model's config to its class (``AutoModelForCausalLM``, ...)."""
    config_cls, model_cls = type(stock_config(model.config)), stock_model_class(model)
    for name in AUTO_CLASSES:
        mapping = getattr(transformers, name)._model_mapping
        try:
            cls = mapping[config_cls]
        except KeyError:
            continue
        if model_cls in (cls if isinstance(cls, (tuple, list)) else (cls,)):
            return name
    raise ValueError(f"{type(model).__name__} is not reachable through any of {', '.join(AUTO_CLASSES)}.")


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def export_plan(model: nn.Module) -> ExportPlan:
    """Decide whether ``model`` (compact, from :func:`hf_l0.prune_model`) can be saved as a plain stock config.

    Native needs uniform layers, no removed sublayer, and a stock config that builds exactly the compact model's
    tensors (checked by building the stock class on the meta device and comparing every name and shape).
    """
    structure = getattr(model.config, STRUCTURE_KEY, None)
    if not structure:
        return ExportPlan(True, "dense model (not pruned): saved as is.")
    layers = structure["layers"]
    removed = [
        f"layer {i} {'attention' if kind == 'attention' else 'FFN'}"
        for i in range(len(layers))
        for kind, indices in removed_sublayers(structure).items()
        if i in indices
    ]
    if removed:
        return ExportPlan(
            False, f"sublayers removed whole ({', '.join(removed)}): a stock config cannot drop a sublayer."
        )
    for key, what in (
        ("attention_heads", "attention heads"),
        ("key_value_heads", "KV heads"),
        ("intermediate_size", "FFN sizes"),
    ):
        values = [layer[key] for layer in layers]
        if len(set(values)) > 1:
            return ExportPlan(
                False,
                f"layers differ in {what} {values}: a stock config has one value for all "
                "layers (train towards a uniform target with L0Config(target_heads=..., "
                "target_intermediate_size=..., layers=False) for a native result).",
            )
    adapter = get_adapter(model)
    fields = adapter.native_config_fields(structure)
    config_cls = type(stock_config(model.config))
    data = stock_config(model.config).to_dict()
    data.update(fields)
    data.pop(STRUCTURE_KEY, None)
    data.pop("auto_map", None)
    try:
        stock = config_cls.from_dict(data)
        with torch.device("meta"):
            candidate = stock_model_class(model)(stock)
    except Exception as err:  # noqa: BLE001 - a stock config that refuses the sizes is a reason, not a crash
        message = " ".join(str(err).split())
        return ExportPlan(False, f"the stock {config_cls.__name__} refuses {fields} ({message}).")
    want, got = _shapes(model), _shapes(candidate)
    if want != got:
        differ = next((k for k in want if want[k] != got.get(k)), None) or next(k for k in got if k not in want)
        why = ""
        if "head_dim" not in fields:
            # the config's attribute_map names the family's own field (GPT-2: n_head)
            why = (
                f"{config_cls.__name__} derives head_dim = hidden_size / num_attention_heads = "
                f"{structure['hidden_size']} / {stock.num_attention_heads}, but the kept heads are "
                f"{structure['head_dim']} wide: "
            )
        return ExportPlan(
            False,
            f"{why}the stock config would build {differ!r} with shape {got.get(differ)} instead of {want.get(differ)}.",
        )
    group = adapter.query_heads_per_unit()
    note = ""
    if group > 1:
        note = (
            f" GQA: hf-l0 gates whole KV groups, so num_key_value_heads = {fields['num_key_value_heads']} kept "
            f"groups and num_attention_heads = groups x {group} query heads per group = "
            f"{fields['num_attention_heads']}."
        )
    return ExportPlan(True, f"uniform layers that the stock {config_cls.__name__} expresses." + note, fields)
