"""Saving and loading compact (pruned) models as ordinary Hub models.

``save_pretrained`` writes one of two kinds of directory:

* **native**: every layer has the same shape and the family's stock config can express it (Llama-family always;
  BERT / GPT-2 only when ``hidden_size == heads x head_dim``, e.g. FFN-only pruning). ``config.json`` is a plain stock
  config with the compact sizes: stock ``from_pretrained`` loads it, no remote code.
* **remote code**: anything else (per-layer shapes, removed sublayers, BERT/GPT-2 head or hidden pruning).
  ``config.json`` keeps the original fields plus ``l0_structure`` under ``model_type: hf_l0_<type>`` (so stock
  transformers refuses it instead of silently building the dense model), an ``auto_map``, flat copies of the hf_l0
  modules that rebuild the compact shapes (``hf_l0_*.py``: adapter layer, surgery, stand-ins, checkpoint checks; see
  :func:`remote_code_files`) and ``modeling_hf_l0.py``, a few generated lines subclassing the stock classes.

Both kinds load with :func:`from_pretrained` here without executing code from the directory, from safetensors only,
strictly. Saving is atomic: everything is written to a temporary sibling directory that then replaces the target.
A compact model's own ``save_pretrained`` / ``push_to_hub`` (and so ``Trainer.save_model``) come here too
(:mod:`hf_l0.own_methods`).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import PushToHubMixin

from . import compact
from .arch import get_adapter
from .arch.base import MODEL_TYPE_PREFIX, base_model_type
from .own_methods import bind_compact_methods
from .prune import build_compact_model
from .surgery import STRUCTURE_KEY

EXPORT_KEY = "l0_export"
MODELING_FILE = "modeling_hf_l0.py"
# The modules a remote-code directory holds flat copies of (plus the model family's adapter module): everything
# ``hf_l0.remote.CompactModelMixin`` needs. They import nothing else from hf_l0 (``flatten_imports`` enforces it).
REMOTE_CODE_MODULES = ("hf_l0.slicing", "hf_l0.modules", "hf_l0.arch.base", "hf_l0.surgery", "hf_l0.compact",
                       "hf_l0.remote")
REMOTE_CODE_PREFIX = "hf_l0_"
CARD_FILE = "README.md"
HEATMAP_FILE = "l0_structure.png"
EXPORT_FORMAT = 1
# Auto classes a saved model can be mapped to (the first whose mapping gives the model's class wins).
AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForMaskedLM",
                "AutoModelForMultipleChoice")
PIPELINE_TAGS = {"AutoModelForCausalLM": "text-generation", "AutoModelForSequenceClassification": "text-classification",
                 "AutoModelForTokenClassification": "token-classification",
                 "AutoModelForQuestionAnswering": "question-answering", "AutoModelForMaskedLM": "fill-mask",
                 "AutoModelForMultipleChoice": "multiple-choice", "AutoModel": "feature-extraction"}
# Files whose stale copies must never survive a save into an existing directory.
_WEIGHT_PREFIXES = ("model.safetensors", "model-", "pytorch_model", "tf_model", "flax_model")


# -- which export ---------------------------------------------------------------------------------------------------

@dataclass
class ExportPlan:
    """How :func:`save_pretrained` will write ``model``: natively (stock config) or with remote code, and why."""

    native: bool
    reason: str
    config_updates: dict[str, Any] = field(default_factory=dict)  # stock config fields of a native export


def _version() -> str:
    from . import __version__

    return __version__


def auto_class_name(model: nn.Module) -> str:
    """The transformers Auto class that maps this model's config to its class (``AutoModelForCausalLM``, ...)."""
    for name in AUTO_CLASSES:
        mapping = getattr(transformers, name)._model_mapping
        try:
            cls = mapping[type(model.config)]
        except KeyError:
            continue
        if type(model) in (cls if isinstance(cls, (tuple, list)) else (cls,)):
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
    removed = [f"layer {i} {kind}" for i, layer in enumerate(layers)
               for kind, key in (("attention", "key_value_heads"), ("FFN", "intermediate_size")) if layer[key] == 0]
    if removed:
        return ExportPlan(False, f"sublayers removed whole ({', '.join(removed)}): a stock config cannot drop a "
                                 "sublayer.")
    for key, what in (("attention_heads", "attention heads"), ("key_value_heads", "KV heads"),
                      ("intermediate_size", "FFN sizes")):
        values = [layer[key] for layer in layers]
        if len(set(values)) > 1:
            return ExportPlan(False, f"layers differ in {what} {values}: a stock config has one value for all "
                                     "layers (train towards a uniform target with L0Config(target_heads=..., "
                                     "target_intermediate_size=..., layers=False) for a native result).")
    adapter = get_adapter(model)
    fields = adapter.native_config_fields(structure)
    data = model.config.to_dict()
    data.update(fields)
    data.pop(STRUCTURE_KEY, None)
    try:
        stock = type(model.config).from_dict(data)
        with torch.device("meta"):
            candidate = type(model)(stock)
    except Exception as err:  # noqa: BLE001 - a stock config that refuses the sizes is a reason, not a crash
        message = " ".join(str(err).split())
        return ExportPlan(False, f"the stock {type(model.config).__name__} refuses {fields} ({message}).")
    want, got = _shapes(model), _shapes(candidate)
    if want != got:
        differ = next((k for k in want if want[k] != got.get(k)), None) or next(k for k in got if k not in want)
        why = ""
        if "head_dim" not in fields:
            heads = fields.get("num_attention_heads", fields.get("n_head"))
            why = (f"{type(model.config).__name__} derives head_dim = hidden_size / num_attention_heads = "
                   f"{structure['hidden_size']} / {heads}, but the kept heads are {structure['head_dim']} wide: ")
        return ExportPlan(False, f"{why}the stock config would build {differ!r} with shape {got.get(differ)} "
                                 f"instead of {want.get(differ)}.")
    dense = model.config
    group = adapter.query_heads_per_unit()
    note = ""
    if group > 1:
        note = (f" GQA: hf-l0 gates whole KV groups, so num_key_value_heads = {fields['num_key_value_heads']} kept "
                f"groups and num_attention_heads = groups x {group} query heads per group = "
                f"{fields['num_attention_heads']}.")
    return ExportPlan(True, f"uniform layers that the stock {type(dense).__name__} expresses." + note, fields)


# -- the remote-code files ------------------------------------------------------------------------------------------

def flat_module_name(module: str) -> str:
    """The file stem of ``module``'s copy in a remote-code directory (``hf_l0.arch.llama`` -> ``hf_l0_arch_llama``):
    transformers' remote-code loader follows only ``from .<sibling> import`` within one directory."""
    return REMOTE_CODE_PREFIX + module.removeprefix("hf_l0.").replace(".", "_")


def flatten_imports(source: str, module: str, table: dict[str, str]) -> str:
    """``source`` of ``module`` with every import of an hf_l0 module (relative or absolute) rewritten to
    ``from .<flat name> import ...`` by ``table`` (module -> flat name); all other bytes unchanged.

    Raises a ValueError for an hf_l0 import that ``table`` does not know (the copy could not run without hf_l0) or
    whose form the loader cannot follow (``import hf_l0.x``, ``from . import x``).
    """
    lines = source.splitlines(keepends=True)
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        where = f"{module} line {node.lineno}"
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "hf_l0" for alias in node.names):
                raise ValueError(f"{where}: 'import hf_l0...' cannot be flattened; use 'from <module> import <name>'.")
            continue
        if not node.level and (node.module or "").split(".")[0] != "hf_l0":
            continue  # torch, transformers, the standard library: the loader checks they are installed
        if node.module is None:
            raise ValueError(f"{where}: 'from {'.' * node.level} import ...' cannot be flattened; import names from "
                             "the module itself.")
        spec = "." * node.level + node.module
        target = importlib.util.resolve_name(spec, package) if node.level else node.module
        if target not in table:
            raise ValueError(f"{where} imports {target}, which remote-code directories do not hold "
                             f"(they hold {', '.join(sorted(table))}).")
        line = lines[node.lineno - 1]
        lines[node.lineno - 1], count = re.subn(rf"^(\s*from\s+){re.escape(spec)}(\s+import\b)",
                                                rf"\g<1>.{table[target]}\g<2>", line)
        if count != 1:
            raise ValueError(f"{where}: expected 'from {spec} import' at the start of the line, got {line!r}.")
    return "".join(lines)


def module_source(module: str) -> str:
    """The text of ``module``'s source file, exactly as on disk."""
    return Path(importlib.import_module(module).__file__).read_text()


def remote_code_files(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """The python files written next to a non-native compact model (file name -> source) and its ``auto_map``.

    ``hf_l0_*.py`` are the sources of :data:`REMOTE_CODE_MODULES` and of the family's adapter module, byte for byte
    except :func:`flatten_imports`. ``modeling_hf_l0.py`` subclasses the stock config (renaming ``model_type`` to
    ``hf_l0_<type>``), the model's class and the family's base model class with ``CompactModelMixin``.
    """
    adapter_cls = type(get_adapter(model))
    modules = (*REMOTE_CODE_MODULES, adapter_cls.__module__)
    table = {module: flat_module_name(module) for module in modules}
    files = {f"{table[module]}.py": flatten_imports(module_source(module), module, table) for module in modules}
    config_cls = type(model.config).__name__
    task_auto = auto_class_name(model)
    classes = {task_auto: type(model).__name__}
    base_cls = transformers.AutoModel._model_mapping[type(model.config)]
    classes.setdefault("AutoModel", base_cls.__name__)
    names = sorted({config_cls, *classes.values()})
    stem = Path(MODELING_FILE).stem
    lines = [
        f'"""Generated by hf-l0 {_version()}: the stock classes, shrunk to the shapes of config.l0_structure."""',
        "",
        f"from transformers import {', '.join(names)}",
        "",
        f"from .{table[adapter_cls.__module__]} import {adapter_cls.__name__}  # noqa: F401  (registers the adapter)",
        f"from .{table['hf_l0.remote']} import CompactModelMixin",
        "",
        "",
        f"class L0{config_cls}({config_cls}):",
        f'    model_type = "{MODEL_TYPE_PREFIX}{base_model_type(model.config)}"',
    ]
    auto_map = {"AutoConfig": f"{stem}.L0{config_cls}"}
    for auto, cls in classes.items():
        lines += ["", "", f"class L0{cls}(CompactModelMixin, {cls}):", f"    config_class = L0{config_cls}"]
        auto_map[auto] = f"{stem}.L0{cls}"
    files[MODELING_FILE] = "\n".join(lines) + "\n"
    return files, auto_map


# -- atomic directory replacement -----------------------------------------------------------------------------------

def _is_ours(name: str) -> bool:
    return name.startswith(_WEIGHT_PREFIXES) or name == MODELING_FILE or (
        name.startswith(REMOTE_CODE_PREFIX) and name.endswith(".py"))


@contextlib.contextmanager
def _atomic_directory(target: Path):
    """Yield a temporary sibling directory; on success it replaces ``target`` by renames, keeping the files of an
    existing ``target`` that the new save did not write (except stale weights and modeling code)."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not target.exists():
        os.rename(tmp, target)
        return
    if not target.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise NotADirectoryError(f"{target} exists and is not a directory.")
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.previous-", dir=target.parent))
    os.rmdir(backup)
    os.rename(target, backup)  # from here until the next rename the previous save lives at `backup`
    os.rename(tmp, target)
    for entry in os.listdir(backup):  # carry over what the new save did not write (e.g. trainer files)
        if not (target / entry).exists() and not _is_ours(entry):
            os.rename(backup / entry, target / entry)
    shutil.rmtree(backup, ignore_errors=True)


# -- save -----------------------------------------------------------------------------------------------------------

def _dense_param_count(model: nn.Module) -> int:
    config = copy.deepcopy(model.config)
    if hasattr(config, STRUCTURE_KEY):
        delattr(config, STRUCTURE_KEY)
    with torch.device("meta"):
        dense = type(model)(config)
    return sum(p.numel() for p in dense.parameters())


@contextlib.contextmanager
def _without_gguf_quantizer(model: nn.Module):
    """Models loaded from GGUF hold dequantized float weights but keep a GGUF "quantizer" that refuses to save:
    detach it while saving (the saved model is an ordinary float checkpoint)."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
        yield
        return
    saved = {name: model.__dict__[name] for name in ("hf_quantizer", "is_quantized") if name in model.__dict__}
    config_quant = model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    if "is_quantized" in saved:
        model.is_quantized = False
    try:
        yield
    finally:
        model.__dict__.update(saved)
        if config_quant is not None:
            model.config.quantization_config = config_quant


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, tokenizer: Any = None, *,
                    native: bool | None = None, max_shard_size: int | str | None = None, model_card: bool = True,
                    base_model: str | None = None, metrics: dict[str, float] | None = None,
                    speedup: float | str | None = None, repo_id: str | None = None, **kwargs) -> Path:
    """Save a compact (or dense) model as an ordinary Hub directory, atomically.

    Writes ``config.json``, ``model.safetensors`` (sharded above ``max_shard_size``), the tokenizer when given,
    ``generation_config.json`` for models that generate, and for non-native compact models ``modeling_hf_l0.py`` with
    an ``auto_map``; with ``model_card`` also ``README.md`` and ``l0_structure.png``. ``native=None`` exports natively
    when possible, ``True`` requires it (ValueError with the reason otherwise), ``False`` always writes remote code.
    ``base_model``, ``metrics`` (name -> value), ``speedup`` and ``repo_id`` only feed the model card. Other keyword
    arguments go to ``PreTrainedModel.save_pretrained``.
    """
    from .patch import is_patched

    if is_patched(model):
        raise ValueError("the model still carries L0 gates: call hf_l0.prune_model(model) before saving it as a "
                         "compact model (or save the gates with L0Config / the trainer's checkpoints).")
    kwargs.pop("safe_serialization", None)  # always safetensors
    plan = export_plan(model)
    if native is True and not plan.native:
        raise ValueError(f"cannot save {type(model).__name__} natively: {plan.reason}")
    if native is False and getattr(model.config, STRUCTURE_KEY, None):
        plan = ExportPlan(False, "remote code requested (native=False).")
    structure = getattr(model.config, STRUCTURE_KEY, None)
    target = Path(save_directory)
    with _atomic_directory(target) as tmp:
        if max_shard_size is not None:
            kwargs["max_shard_size"] = max_shard_size
        with _without_gguf_quantizer(model):
            # the stock method: the instance's own save_pretrained of a compact model routes back here
            type(model).save_pretrained(model, tmp, **kwargs)
        config_path = tmp / "config.json"
        data = json.loads(config_path.read_text())
        data.pop("auto_map", None)
        if structure:
            base_type = base_model_type(model.config)
            removed = {kind: [i for i, layer in enumerate(structure["layers"]) if layer[key] == 0]
                       for kind, key in (("attention", "key_value_heads"), ("ffn", "intermediate_size"))}
            export = {"format": EXPORT_FORMAT, "hf_l0_version": _version(), "native": plan.native,
                      "reason": plan.reason, "base_model_type": base_type,
                      "base_architectures": [type(model).__name__], "removed_sublayers": removed,
                      "dense_parameters": _dense_param_count(model),
                      "parameters": sum(p.numel() for p in model.parameters())}
            data[STRUCTURE_KEY] = structure
            data[EXPORT_KEY] = export
            if plan.native:
                data.update(plan.config_updates)
            else:
                files, auto_map = remote_code_files(model)
                for name, source in files.items():
                    (tmp / name).write_text(source)
                data["model_type"] = MODEL_TYPE_PREFIX + base_type
                data["auto_map"] = auto_map
                data["architectures"] = [auto_map[auto_class_name(model)].split(".")[-1]]
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if getattr(model, "can_generate", lambda: False)() and not (tmp / "generation_config.json").exists():
            transformers.GenerationConfig.from_model_config(model.config).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if model_card:
            from .card import write_model_card

            write_model_card(tmp, model, base_model=base_model, metrics=metrics, speedup=speedup, repo_id=repo_id)
    return target


# -- load -----------------------------------------------------------------------------------------------------------

def _resolve_directory(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    if path.is_dir():
        return path
    if os.path.exists(path) or str(directory).count("/") != 1:
        raise FileNotFoundError(f"{directory} is not a directory (nor a Hub repo id 'owner/name').")
    from huggingface_hub import snapshot_download

    # Never the .py files: hf_l0 does not execute code from a model repository.
    return Path(snapshot_download(str(directory), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                                   "*.md"]))


def load_config(directory: str | os.PathLike):
    """The stock transformers config of a saved directory (``hf_l0_<type>`` read as ``<type>``), from JSON only.

    Raises a ValueError naming ``config.json`` and the field for a config that is not a JSON object, an unknown
    model type, a compact model without structure, or values the config class refuses.
    """
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing.")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ValueError(f"{path}: not a transformers config (a JSON object with a model_type string).")
    export = data.get(EXPORT_KEY) or {}
    if not isinstance(export, dict):
        raise ValueError(f"{path}: {EXPORT_KEY} must be an object, got {type(export).__name__}.")
    base_type = base_model_type(data)
    if base_type not in CONFIG_MAPPING:
        raise ValueError(f"{path}: model_type {data.get('model_type')!r} is not a transformers model type.")
    if data["model_type"].startswith(MODEL_TYPE_PREFIX) and not data.get(STRUCTURE_KEY):
        raise ValueError(f"{path}: model_type {data['model_type']!r} but no {STRUCTURE_KEY}: the structure of this "
                         "compact model is unknown.")
    if STRUCTURE_KEY in data and not isinstance(data[STRUCTURE_KEY], dict):
        raise ValueError(f"{path}: {STRUCTURE_KEY} must be an object, got {type(data[STRUCTURE_KEY]).__name__}.")
    for key in ("model_type", "auto_map", "transformers_version"):
        data.pop(key, None)
    if export.get("base_architectures"):
        data["architectures"] = export["base_architectures"]
    try:
        config = CONFIG_MAPPING[base_type].from_dict(data)
    except Exception as err:  # noqa: BLE001 - any refusal of the config class is a bad file, reported as such
        raise ValueError(f"{path}: the {CONFIG_MAPPING[base_type].__name__} refuses these values: "
                         f"{' '.join(str(err).split())}") from None
    config._name_or_path = str(directory)
    return config


def _family_class(config: Any, cls: Any) -> bool:
    """Whether ``cls`` is a transformers model class built from this config's family (its config_class)."""
    return isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) and \
        getattr(cls, "config_class", None) is not None and \
        getattr(cls.config_class, "model_type", None) == getattr(config, "model_type", None)


def _model_class(config: Any, model_class: type | None, where: str = "config.json") -> type:
    if model_class is not None:
        mapping = getattr(model_class, "_model_mapping", None)
        if mapping is not None:  # an Auto class
            try:
                cls = mapping[type(config)]
            except KeyError:
                raise ValueError(f"{model_class.__name__} has no model class for {type(config).__name__}.") from None
            return cls[0] if isinstance(cls, (tuple, list)) else cls
        return model_class
    architectures = getattr(config, "architectures", None) or []
    if not isinstance(architectures, list) or not all(isinstance(name, str) for name in architectures):
        raise ValueError(f"{where}: architectures={architectures!r} must be a list of class names.")
    for name in architectures:
        cls = getattr(transformers, name, None) if name.isidentifier() else None
        # Only a model class of the config's own family: a name such as "Trainer" must never be instantiated.
        if not _family_class(config, cls):
            raise ValueError(f"{where}: architectures names {name!r}, which is not a transformers model class of "
                             f"the {config.model_type!r} family (its config_class must be {type(config).__name__}); "
                             "fix architectures or pass model_class=.")
        return cls
    raise ValueError(f"{where}: architectures={architectures} names no transformers class; pass model_class=.")


def tied_groups(model: nn.Module) -> list[set[str]]:
    """Sets of parameter names that share one tensor (saved once, under any of the names)."""
    return compact._tied_groups(model)


def load_weights_strictly(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load a directory's safetensors weights into ``model``; any missing, unexpected or mis-shaped tensor, a tensor
    of another dtype than ``config.json`` declares, a truncated file, a shard outside the directory or an index that
    disagrees with its shards raises a ValueError naming the file and tensor (:func:`hf_l0.compact.check_weights`)."""
    directory = Path(directory)
    found = compact.check_weights(model, str(directory))
    state = {}
    by_file: dict[str, list[tuple[str, str]]] = {}
    for key, (path, name) in found.items():
        by_file.setdefault(path, []).append((key, name))
    for path, pairs in by_file.items():
        with safe_open(path, framework="pt") as f:
            for key, name in pairs:
                state[key] = f.get_tensor(name)
    model.load_state_dict(state, strict=False)
    return model


# Integer sizes a config may carry, checked before any model is built (a hostile value must not allocate memory).
_LAYER_KEYS = ("num_hidden_layers", "n_layer")
_SIZE_KEYS = ("num_attention_heads", "n_head", "num_key_value_heads", "hidden_size", "n_embd", "intermediate_size",
              "n_inner", "vocab_size", "head_dim", "embedding_size")


def _check_config_sizes(config: Any, files: dict[str, list[str]], where: Path) -> None:
    """Each size must be a positive int; a layer count cannot exceed the checkpoint's tensor count, a width its
    element count (a config that claims more describes another model, and building it could exhaust memory)."""
    headers = [compact.read_safetensors_header(path) for path in files]
    tensors = sum(len(names) for names in files.values())
    elements = sum(math.prod(info["shape"]) for header in headers for name, info in header.items()
                   if name != "__metadata__")
    for key in (*_LAYER_KEYS, *_SIZE_KEYS):
        value = getattr(config, key, None)
        if value is None:
            continue
        limit = tensors if key in _LAYER_KEYS else elements
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            raise ValueError(f"{where}: {key}={value!r} must be a positive int of at most {limit} (the "
                             f"{'tensor' if key in _LAYER_KEYS else 'element'} count of the saved weights).")


def _build(cls: type, config: Any, compact_shapes: bool, where: Path) -> nn.Module:
    try:
        return build_compact_model(cls, config) if compact_shapes else cls(config)
    except Exception as err:  # noqa: BLE001 - a config that cannot build its model is a bad file, reported as such
        raise ValueError(f"{where}: {cls.__name__} cannot be built from these values: "
                         f"{' '.join(str(err).split())}") from None


def from_pretrained(directory: str | os.PathLike, model_class: type | None = None, dtype: torch.dtype | None = None
                    ) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (native, remote-code or dense) without executing any code from
    the directory: the config is read as JSON, compact shapes are rebuilt by :mod:`hf_l0.surgery` (part of hf-l0),
    weights come from safetensors only and load strictly (see :func:`load_weights_strictly`).

    The model is first built on the meta device and checked against the weights' headers (names, shapes, dtypes),
    so a hostile config (huge sizes, wrong layer lists) fails before any memory is allocated. ``architectures`` may
    only name model classes of the config's family.

    ``model_class`` may be a transformers model class or an Auto class (e.g. ``AutoModel`` for the base model of a
    task checkpoint); by default the saved architecture. ``dtype`` casts the loaded model (the file's dtype must
    still be the one config.json declares). ``directory`` may also be a Hub repo id (no .py file is downloaded).
    """
    directory = _resolve_directory(directory)
    files = compact.checkpoint_files(str(directory))  # safetensors present, complete, inside the directory
    config = load_config(directory)
    config_file = directory / "config.json"
    cls = _model_class(config, model_class, str(config_file))
    _check_config_sizes(config, files, config_file)
    export = getattr(config, EXPORT_KEY, None) or {}
    compact_shapes = bool(getattr(config, STRUCTURE_KEY, None)) and not export.get("native", False)
    with torch.device("meta"):
        skeleton = _build(cls, copy.deepcopy(config), compact_shapes, config_file)
    compact.check_weights(skeleton, str(directory), files)
    del skeleton
    model = _build(cls, config, compact_shapes, config_file)
    saved_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    dtype = dtype or (getattr(torch, saved_dtype) if isinstance(saved_dtype, str) else saved_dtype)
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    load_weights_strictly(model, directory)
    if getattr(config, STRUCTURE_KEY, None):
        bind_compact_methods(model)  # its own save_pretrained / push_to_hub write this format again
    if (directory / "generation_config.json").is_file() and getattr(model, "can_generate", lambda: False)():
        model.generation_config = transformers.GenerationConfig.from_pretrained(directory)
    return model.eval()


# -- push to the Hub ------------------------------------------------------------------------------------------------

class CompactModelUpload(PushToHubMixin):
    """A compact model, its tokenizer and card as one uploadable folder: ``push_to_hub`` is transformers' own
    (``PushToHubMixin``) upload of the folder that :func:`save_pretrained` writes."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, **save_kwargs) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.save_kwargs = save_kwargs

    def save_pretrained(self, save_directory, max_shard_size=None, **kwargs) -> Path:
        options = {**self.save_kwargs, **kwargs}
        if max_shard_size is not None:
            options["max_shard_size"] = max_shard_size
        return save_pretrained(self.model, save_directory, self.tokenizer, **options)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
                    private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                    create_pr: bool = False, max_shard_size: int | str | None = "5GB", **_ignored):
        # Same steps as PushToHubMixin.push_to_hub, except that the card is ours instead of a default template.
        from transformers.utils import hub as hf_hub

        repo_id = hf_hub.hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "upload"
            self.save_kwargs.setdefault("repo_id", repo_id)
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            return self._upload_modified_files(folder, repo_id, files_timestamps={},
                                               commit_message=commit_message or "Upload compact model (hf-l0)",
                                               token=token, create_pr=create_pr, revision=revision,
                                               commit_description=commit_description)


def push_to_hub(model: nn.Module, repo_id: str, tokenizer: Any = None, *, commit_message: str | None = None,
                private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                create_pr: bool = False, max_shard_size: int | str | None = "5GB", **save_kwargs):
    """Upload ``model`` (+ tokenizer, model card, heatmap) to ``repo_id`` on the Hub through transformers'
    PushToHubMixin. ``save_kwargs`` are those of :func:`save_pretrained` (``native``, ``metrics``, ...)."""
    upload = CompactModelUpload(model, tokenizer, **save_kwargs)
    return upload.push_to_hub(repo_id, commit_message=commit_message, private=private, token=token,
                              revision=revision, create_pr=create_pr, max_shard_size=max_shard_size)
