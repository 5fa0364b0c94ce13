"""Saving a compact (or dense) model as an ordinary Hub directory, atomically, and uploading it to the Hub.

Everything is written to a temporary sibling directory that then replaces the target by renames, so a reader (or an
interrupted save) never sees half a directory. Weights are always safetensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import transformers
from torch import nn
from transformers.utils import PushToHubMixin

from ..arch.base import MODEL_TYPE_PREFIX
from ..gates.patch import is_patched
from ..pruning.structure_format import STRUCTURE_KEY
from .card import write_model_card
from .export import EXPORT_KEY, ExportPlan, auto_class_name, export_plan, export_record
from .remote_code import MODELING_FILE, REMOTE_CODE_PREFIX, remote_code_files

# Files whose stale copies must never survive a save into an existing directory.
_WEIGHT_PREFIXES = ("model.safetensors", "model-", "pytorch_model", "tf_model", "flax_model")


# -- atomic directory replacement -----------------------------------------------------------------------------------


def _is_ours(name: str) -> bool:
    return (
        name.startswith(_WEIGHT_PREFIXES)
        or name == MODELING_FILE
        or (name.startswith(REMOTE_CODE_PREFIX) and name.endswith(".py"))
    )


@contextlib.contextmanager
def atomic_directory(target: Path):
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


def gguf_quantizer(model: nn.Module) -> Any:
    """The GGUF "quantizer" transformers leaves on a model loaded with ``gguf_file=`` (its weights are dequantized
    floats), or None for any other model, other quantizations included. Detected by the quantization method, the
    one rule hf-l0 uses for GGUF models."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
        return None
    return quantizer


@contextlib.contextmanager
def _without_gguf_quantizer(model: nn.Module):
    """Models loaded from GGUF hold dequantized float weights but keep a GGUF "quantizer" that refuses to save:
    detach it while saving (the saved model is an ordinary float checkpoint)."""
    if gguf_quantizer(model) is None:
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


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    tokenizer: Any = None,
    *,
    native: bool | None = None,
    max_shard_size: int | str | None = None,
    model_card: bool = True,
    base_model: str | None = None,
    metrics: dict[str, float] | None = None,
    speedup: float | str | None = None,
    repo_id: str | None = None,
    **kwargs,
) -> Path:
    """Save a compact (or dense) model as an ordinary Hub directory, atomically.

    Writes ``config.json``, ``model.safetensors`` (sharded above ``max_shard_size``), the tokenizer when given,
    ``generation_config.json`` for models that generate, and for non-native compact models ``modeling_hf_l0.py`` with
    an ``auto_map``; with ``model_card`` also ``README.md`` and ``l0_structure.png``. ``native=None`` exports natively
    when possible, ``True`` requires it (ValueError with the reason otherwise), ``False`` always writes remote code.
    ``base_model``, ``metrics`` (name -> value), ``speedup`` and ``repo_id`` only feed the model card. Other keyword
    arguments go to ``PreTrainedModel.save_pretrained``.
    """
    if is_patched(model):
        raise ValueError(
            "the model still carries L0 gates: call hf_l0.prune_model(model) before saving it as a "
            "compact model (or save the gates with L0Config / the trainer's checkpoints)."
        )
    kwargs.pop("safe_serialization", None)  # always safetensors
    plan = export_plan(model)
    if native is True and not plan.native:
        raise ValueError(f"cannot save {type(model).__name__} natively: {plan.reason}")
    if native is False and getattr(model.config, STRUCTURE_KEY, None):
        plan = ExportPlan(False, "remote code requested (native=False).")
    structure = getattr(model.config, STRUCTURE_KEY, None)
    target = Path(save_directory)
    with atomic_directory(target) as tmp:
        if max_shard_size is not None:
            kwargs["max_shard_size"] = max_shard_size
        with _without_gguf_quantizer(model):
            # the stock method: the instance's own save_pretrained of a compact model routes back here
            type(model).save_pretrained(model, tmp, **kwargs)
        config_path = tmp / "config.json"
        data = json.loads(config_path.read_text())
        data.pop("auto_map", None)
        if structure:
            record = export_record(model, plan)
            data[STRUCTURE_KEY] = structure
            data[EXPORT_KEY] = record.to_dict()
            if plan.native:
                data.update(plan.config_updates)
            else:
                files, auto_map = remote_code_files(model)
                for name, source in files.items():
                    (tmp / name).write_text(source)
                data["model_type"] = MODEL_TYPE_PREFIX + record.base_model_type
                data["auto_map"] = auto_map
                data["architectures"] = [auto_map[auto_class_name(model)].split(".")[-1]]
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if getattr(model, "can_generate", lambda: False)() and not (tmp / "generation_config.json").exists():
            transformers.GenerationConfig.from_model_config(model.config).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if model_card:
            write_model_card(tmp, model, base_model=base_model, metrics=metrics, speedup=speedup, repo_id=repo_id)
    return target


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

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "5GB",
        **_ignored,
    ):
        # Same steps as PushToHubMixin.push_to_hub, except that the card is ours instead of a default template.
        from transformers.utils import hub as hf_hub

        repo_id = hf_hub.hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "upload"
            self.save_kwargs.setdefault("repo_id", repo_id)
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            return self._upload_modified_files(
                folder,
                repo_id,
                files_timestamps={},
                commit_message=commit_message or "Upload compact model (hf-l0)",
                token=token,
                create_pr=create_pr,
                revision=revision,
                commit_description=commit_description,
            )


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    tokenizer: Any = None,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "5GB",
    **save_kwargs,
):
    """Upload ``model`` (+ tokenizer, model card, heatmap) to ``repo_id`` on the Hub through transformers'
    PushToHubMixin. ``save_kwargs`` are those of :func:`save_pretrained` (``native``, ``metrics``, ...)."""
    upload = CompactModelUpload(model, tokenizer, **save_kwargs)
    return upload.push_to_hub(
        repo_id,
        commit_message=commit_message,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
        max_shard_size=max_shard_size,
    )
