"""Saving and loading compact (pruned) models as ordinary Hub models.

``save_pretrained`` writes one of two kinds of directory:

* **native**: every layer has the same shape and the family's stock config can express it (Llama-family always;
  BERT / GPT-2 only when ``hidden_size == heads x head_dim``, e.g. FFN-only pruning). ``config.json`` is a plain stock
  config with the compact sizes: stock ``from_pretrained`` loads it, no remote code.
* **remote code**: anything else (per-layer shapes, removed sublayers, BERT/GPT-2 head or hidden pruning).
  ``config.json`` keeps the original fields plus ``l0_structure`` under ``model_type: hf_l0_<type>`` (so stock
  transformers refuses it instead of silently building the dense model), an ``auto_map``, flat copies of the portable
  hf_l0 modules that rebuild the compact shapes (``hf_l0_*.py``: adapter layer, structure, stand-ins, checkpoint
  checks; see :func:`remote_code_files`) and ``modeling_hf_l0.py``, a few generated lines subclassing the stock
  classes.

Both kinds load with :func:`from_pretrained` here without executing code from the directory, from safetensors only,
strictly. Saving replaces only the model's own files in the directory, crash-safely. A compact model's own
``save_pretrained`` / ``push_to_hub`` (and so ``Trainer.save_model``) come here too (:mod:`hf_l0.hub.own_methods`).

The modules: :mod:`~hf_l0.hub.export` (which export, ``l0_export``), :mod:`~hf_l0.hub.remote_code` (the copied
files), :mod:`~hf_l0.hub.save` (crash-safe save, upload), :mod:`~hf_l0.hub.load` (strict loading),
:mod:`~hf_l0.hub.card` (model card and heatmap).
"""

from .card import CARD_FILE, HEATMAP_FILE, model_card, structure_heatmap, write_model_card
from .export import (
    AUTO_CLASSES,
    EXPORT_FORMAT,
    EXPORT_KEY,
    PIPELINE_TAGS,
    ExportPlan,
    ExportRecord,
    auto_class_name,
    dense_parameter_count,
    export_plan,
    export_record,
)
from .load import from_pretrained, load_config, load_weights_strictly, tied_groups
from .remote_code import (
    MODELING_FILE,
    PORTABLE_MODULES,
    REMOTE_CODE_PREFIX,
    flat_module_name,
    flatten_imports,
    module_source,
    remote_code_files,
)
from .save import (
    CompactModelUpload,
    atomic_directory,
    finish_interrupted_save,
    gguf_quantizer,
    push_to_hub,
    save_pretrained,
)

__all__ = [
    "AUTO_CLASSES",
    "CARD_FILE",
    "EXPORT_FORMAT",
    "EXPORT_KEY",
    "HEATMAP_FILE",
    "MODELING_FILE",
    "PIPELINE_TAGS",
    "PORTABLE_MODULES",
    "REMOTE_CODE_PREFIX",
    "CompactModelUpload",
    "ExportPlan",
    "ExportRecord",
    "atomic_directory",
    "auto_class_name",
    "dense_parameter_count",
    "export_plan",
    "export_record",
    "finish_interrupted_save",
    "flat_module_name",
    "flatten_imports",
    "from_pretrained",
    "gguf_quantizer",
    "load_config",
    "load_weights_strictly",
    "model_card",
    "module_source",
    "push_to_hub",
    "remote_code_files",
    "save_pretrained",
    "structure_heatmap",
    "tied_groups",
    "write_model_card",
]
