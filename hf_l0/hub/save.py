"""Saving a compact (or dense) model as an ordinary Hub directory, crash-safe, and uploading it to the Hub.

A save into an existing directory behaves like transformers' ``save_pretrained`` for everything that is not the
model: only the files this save writes are replaced, plus the stale files of a previous save of a model there (the
canonical ``model.safetensors`` / ``model.safetensors.index.json``, the shards that index lists, and the remote-code
files the previous ``config.json`` names through its ``auto_map``). Nothing else is moved or deleted, and the
directory itself is never renamed (saving into ``.`` or through a symbolic link works; the link stays a link).

Crash safety: every file is first written into a staging directory inside the target (``.hf_l0-staging-*``) and
flushed to disk. A manifest of the swap (the renames into place, in order, then the removals) is written next to
them, and renaming the staging directory to ``.hf_l0-commit-*`` commits the save. A crash before that leaves the
previous files untouched (the next save removes the staging directory); a crash after it is finished by the next
save or by :func:`hf_l0.from_pretrained` (:func:`finish_interrupted_save`), which replay the manifest. Weights are
always safetensors.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import transformers
from torch import nn
from transformers.utils import PushToHubMixin

from ..arch.base import MODEL_TYPE_PREFIX, base_model_type
from ..gates.patch import is_patched
from ..pruning.structure_format import STRUCTURE_KEY
from .card import write_model_card
from .checkpoint import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from .export import EXPORT_KEY, ExportPlan, auto_class_name, export_plan, export_record, stock_model_class
from .remote_code import remote_code_files

STAGING_PREFIX = ".hf_l0-staging-"
COMMIT_PREFIX = ".hf_l0-commit-"
MANIFEST_NAME = "hf_l0-swap.json"
CONFIG_NAME = "config.json"
_OWN_DIRECTORY = re.compile(rf"^({re.escape(STAGING_PREFIX)}|{re.escape(COMMIT_PREFIX)})[A-Za-z0-9_]+$")
# transformers' own rule for the modules a remote-code file imports from its directory (get_relative_imports).
_RELATIVE_IMPORTS = (re.compile(r"^\s*import\s+\.(\S+)\s*$", re.M), re.compile(r"^\s*from\s+\.(\S+)\s+import", re.M))

# Called with the name of every step of a save's swap (the crash tests kill the process there); a no-op otherwise.
_step_hook: Callable[[str], None] = lambda step: None  # noqa: E731


# -- crash-safe replacement of a model's files -----------------------------------------------------------------------


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (directories: where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock(path: Path) -> int | None:
    """An exclusive advisory lock on ``path`` held through the returned descriptor (None where unsupported), so
    that :func:`finish_interrupted_save` leaves the staging directory of a save still running alone."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _is_plain_file_or_link(path: Path) -> bool:
    return path.is_symlink() or path.is_file()


def _index_shards(index: Path) -> list[str]:
    """The shard file names a ``model.safetensors.index.json`` lists: plain ``*.safetensors`` names inside its
    directory (anything else, or an unreadable index, lists nothing: it is not touched)."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(weight_map, dict):
        return []
    names = []
    for name in weight_map.values():
        if (
            isinstance(name, str)
            and name.endswith(".safetensors")
            and "/" not in name
            and "\\" not in name
            and not name.startswith(".")
            and name not in names
        ):
            names.append(name)
    return names


def _remote_code_of(directory: Path) -> list[str]:
    """The remote-code files of a previous hf-l0 save in ``directory``: the modules its ``config.json`` names in
    ``auto_map`` (only for an hf-l0 compact config) and, recursively, the sibling modules they import."""
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(config, dict) or not (
        STRUCTURE_KEY in config or str(config.get("model_type", "")).startswith(MODEL_TYPE_PREFIX)
    ):
        return []
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return []
    pending = []
    for reference in auto_map.values():
        for item in reference if isinstance(reference, list) else [reference]:
            if isinstance(item, str) and "--" not in item and item.count(".") == 1:
                pending.append(item.split(".")[0] + ".py")
    found: list[str] = []
    while pending:
        name = pending.pop()
        path = directory / name
        if name in found or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.py", name) or not path.is_file():
            continue
        found.append(name)
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for pattern in _RELATIVE_IMPORTS:
            pending += [module.split(".")[0] + ".py" for module in pattern.findall(source)]
    return found


def _staged_files(staging: Path) -> list[str]:
    return sorted(
        str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file() and path.name != MANIFEST_NAME
    )


def _check_destinations(target: Path, names: list[str]) -> None:
    """Refuse (before anything is replaced) a file this save writes whose place is a directory of the user's."""
    for name in names:
        destination = target / name
        parent = destination.parent
        while parent != target:
            if parent.exists() and not parent.is_dir():
                raise NotADirectoryError(f"{parent} is not a directory, but this save writes {destination}.")
            parent = parent.parent
        if destination.is_dir() and not destination.is_symlink():
            raise IsADirectoryError(
                f"{destination} is a directory, but this save writes a file of that name there: rename or move "
                "the directory, or save into another directory."
            )


def _swap_steps(target: Path, written: list[str]) -> list[list[str]]:
    """The ordered swap: ``["move", name]`` renames a staged file into place, ``["remove", name]`` deletes a stale
    file of a previous save. Files that are not the model's first, then weights and code, then ``config.json``,
    then the stale files (the previous model stays loadable until its weights are replaced)."""
    new = set(written)
    index = target / SAFE_WEIGHTS_INDEX_NAME
    stale: list[str] = []
    pointer_removals: list[str] = []
    if SAFE_WEIGHTS_NAME not in new and _is_plain_file_or_link(target / SAFE_WEIGHTS_NAME):
        pointer_removals.append(SAFE_WEIGHTS_NAME)  # loaders prefer it to an index: it must go with the switch
    if _is_plain_file_or_link(index):
        if SAFE_WEIGHTS_INDEX_NAME not in new:
            pointer_removals.append(SAFE_WEIGHTS_INDEX_NAME)
        stale += _index_shards(index)
    stale += _remote_code_of(target)
    stale = [name for name in dict.fromkeys(stale) if name not in new and _is_plain_file_or_link(target / name)]
    model_files = [n for n in written if n.endswith((".safetensors", ".py"))]
    pointers = [n for n in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) if n in new]
    others = [n for n in written if n not in model_files and n not in pointers and n != CONFIG_NAME]
    steps = [["move", n] for n in others]
    steps += [["move", n] for n in model_files if n not in pointers]
    steps += [["move", n] for n in pointers]
    steps += [["remove", n] for n in pointer_removals]
    steps += [["move", CONFIG_NAME]] if CONFIG_NAME in new else []
    steps += [["remove", n] for n in stale]
    return steps


def _replay(target: Path, commit: Path) -> None:
    """Carry out a committed swap (idempotent: a step already done is skipped), then remove the commit directory."""
    manifest = json.loads((commit / MANIFEST_NAME).read_text())
    for action, name in manifest["steps"]:
        destination = target / name
        if action == "move":
            source = commit / name
            if source.is_file():
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, destination)
                _step_hook(f"move {name}")
        elif action == "remove" and _is_plain_file_or_link(destination):
            os.unlink(destination)
            _step_hook(f"remove {name}")
    _fsync(target)
    os.unlink(commit / MANIFEST_NAME)
    _step_hook("manifest removed")
    shutil.rmtree(commit, ignore_errors=True)  # empty by now, but for subdirectories the moves emptied
    _fsync(target)


def finish_interrupted_save(directory: str | os.PathLike) -> list[str]:
    """Finish the saves that a crash interrupted in ``directory`` after they committed (replay their manifest) and
    remove the staging directories of those that had not (their target was never touched). Returns what it did.

    Called by every save and by :func:`hf_l0.from_pretrained`; a save still running in another process (its
    directory locked) is left alone.
    """
    directory = Path(directory)
    done: list[str] = []
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return done
    for name in entries:
        path = directory / name
        if not _OWN_DIRECTORY.match(name) or path.is_symlink() or not path.is_dir():
            continue
        fd = _lock(path)
        try:
            if fd is None and _supports_locks():
                continue  # another process is saving right now
            if name.startswith(COMMIT_PREFIX) and (path / MANIFEST_NAME).is_file():
                _replay(directory, path)
                done.append(f"finished {name}")
            else:  # a save that never committed (the target untouched), or a finished one's empty commit directory
                shutil.rmtree(path)
                done.append(f"removed {name}")
        finally:
            _unlock(fd)
    return done


def _supports_locks() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory inside ``target``; when the block succeeds its files replace their
    namesakes in ``target`` (and the stale files of a previous save there go), crash-safely: see the module doc.
    On an exception nothing in ``target`` has changed. ``target`` itself (a symbolic link included) stays."""
    target = Path(target)
    if target.is_symlink() and not target.exists():
        raise FileNotFoundError(f"{target} is a symbolic link to a missing directory ({os.readlink(target)}).")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory.")
    target.mkdir(parents=True, exist_ok=True)
    finish_interrupted_save(target)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
    lock = _lock(staging)
    try:
        try:
            _step_hook("staging")
            yield staging
            written = _staged_files(staging)
            _check_destinations(target, written)
            steps = _swap_steps(target, written)
            for name in written:
                _fsync(staging / name)
            _step_hook("staged")
            manifest = staging / MANIFEST_NAME
            manifest.write_text(json.dumps({"steps": steps}, indent=1) + "\n")
            _fsync(manifest)
            _fsync(staging)
            _step_hook("manifest written")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        commit = target / (COMMIT_PREFIX + staging.name.removeprefix(STAGING_PREFIX))
        os.rename(staging, commit)  # the commit point: from here on the new save wins
        _fsync(target)
        _step_hook("committed")
        _replay(target, commit)
        _step_hook("done")
    finally:
        _unlock(lock)


def finish_before_loading(directory: Path) -> None:
    """:func:`finish_interrupted_save` for a loader: a directory it cannot write is loaded as it is (with a warning
    when a committed save is pending there)."""
    try:
        finish_interrupted_save(directory)
    except OSError as err:
        pending = [n for n in os.listdir(directory) if n.startswith(COMMIT_PREFIX)]
        if pending:
            warnings.warn(
                f"{directory}: a save interrupted by a crash ({pending[0]}) could not be finished ({err}); the "
                "directory may mix two models. Save the model there again.",
                stacklevel=3,
            )


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


# Arguments of the stock ``PreTrainedModel.save_pretrained`` that hf-l0 passes on unchanged; the other stock ones it
# handles itself or refuses (see ``_check_stock_arguments``).
PASSED_ON = ("state_dict", "token", "save_peft_format", "save_original_format")


def _check_stock_arguments(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Refuse, before anything is written, the stock arguments whose result no hf-l0 loader would read, and any
    argument that is not one of :data:`PASSED_ON` (the stock method would ignore it silently); pops what it
    settles."""
    variant = kwargs.pop("variant", None)
    if variant is not None:
        raise ValueError(
            f"variant={variant!r}: hf-l0 writes and loads model.safetensors only (hf_l0.from_pretrained and the "
            "remote-code classes read no variant files). Save the variant into a directory of its own, or push it "
            "to a branch of the repository with revision=."
        )
    if kwargs.pop("distributed_checkpoint", False):
        raise ValueError(
            "distributed_checkpoint=True writes a torch.distributed checkpoint, which no hf-l0 loader reads: save "
            "the gathered compact model without it."
        )
    if kwargs.pop("safe_serialization", True) is False:
        raise ValueError("safe_serialization=False: hf-l0 writes safetensors only (it never loads pickled weights).")
    if kwargs.pop("push_to_hub", False):
        raise ValueError(
            "push_to_hub=True: upload with model.push_to_hub(repo_id) or hf_l0.push_to_hub(model, repo_id), which "
            "upload exactly what this function writes."
        )
    unknown = sorted(set(kwargs) - set(PASSED_ON))
    if unknown:
        raise TypeError(
            f"save_pretrained got unexpected arguments {unknown}: it takes those of hf_l0.save_pretrained and, "
            f"of the stock method, max_shard_size, {', '.join(PASSED_ON)}."
        )
    state = kwargs.get("state_dict")
    if state is not None:
        own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        given = {name: tuple(getattr(tensor, "shape", ())) for name, tensor in state.items()}
        wrong = sorted(name for name in own.keys() | given.keys() if own.get(name) != given.get(name))
        if wrong:
            raise ValueError(
                f"state_dict does not match the model's tensors (names and shapes), e.g. {wrong[:3]}: the saved "
                "config would describe other weights. Pass the model's own state dict or none."
            )


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
    tags: list[str] | None = None,
    **kwargs,
) -> Path:
    """Save a compact (or dense) model as an ordinary Hub directory, crash-safely (see the module doc).

    Writes ``config.json``, ``model.safetensors`` (sharded above ``max_shard_size``), the tokenizer when given,
    ``generation_config.json`` for models that generate, and for non-native compact models ``modeling_hf_l0.py`` with
    an ``auto_map``; with ``model_card`` also ``README.md`` and ``l0_structure.png``. ``native=None`` exports natively
    when possible, ``True`` requires it (ValueError with the reason otherwise), ``False`` always writes remote code.
    ``base_model``, ``metrics`` (name -> value), ``speedup``, ``repo_id`` and ``tags`` (added to hf-l0's) only feed
    the model card. Of the stock ``PreTrainedModel.save_pretrained`` arguments, :data:`PASSED_ON` go to it,
    ``is_main_process=False`` writes nothing, and ``variant``, ``distributed_checkpoint``,
    ``safe_serialization=False`` and ``push_to_hub=True`` are refused (no hf-l0 loader would read the result);
    any other argument is a TypeError.
    """
    if is_patched(model):
        raise ValueError(
            "the model still carries L0 gates: call hf_l0.prune_model(model) before saving it as a "
            "compact model (or save the gates with L0Config / the trainer's checkpoints)."
        )
    if kwargs.pop("is_main_process", True) is False:
        return Path(save_directory)  # the main process writes (a second writer would race it)
    _check_stock_arguments(model, kwargs)
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
        for copied in tmp.glob("*.py"):  # a remote-code model's stock save copies its code: hf-l0 writes its own
            copied.unlink()
        config_path = tmp / "config.json"
        data = json.loads(config_path.read_text())
        data.pop("auto_map", None)
        data["model_type"] = base_model_type(data)  # stock, unless remote code (set below)
        if type(model) is not stock_model_class(model):  # loaded with transformers' remote code: the stock class
            data["architectures"] = [stock_model_class(model).__name__]
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
            write_model_card(
                tmp, model, base_model=base_model, metrics=metrics, speedup=speedup, repo_id=repo_id, tags=tags
            )
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
        tags: list[str] | None = None,
    ):
        """``PushToHubMixin.push_to_hub``'s arguments; ``tags`` join the model card's. The folder is written (and
        its arguments checked) before anything is uploaded."""
        # Same steps as PushToHubMixin.push_to_hub, except that the card is ours instead of a default template.
        from transformers.utils import hub as hf_hub

        options = dict(self.save_kwargs)
        if tags:
            options["tags"] = [*(options.get("tags") or []), *tags]
        # the arguments are checked before the repository is created
        bound = inspect.signature(save_pretrained).bind(self.model, "upload", self.tokenizer, **options)
        stock = dict(bound.arguments.get("kwargs", {}))
        stock.pop("is_main_process", None)
        _check_stock_arguments(self.model, stock)
        repo_id = hf_hub.hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "upload"
            options.setdefault("repo_id", repo_id)
            save_pretrained(self.model, folder, self.tokenizer, max_shard_size=max_shard_size, **options)
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
    commit_description: str | None = None,
    tags: list[str] | None = None,
    **save_kwargs,
):
    """Upload ``model`` (+ tokenizer, model card, heatmap) to ``repo_id`` on the Hub through transformers'
    PushToHubMixin. ``save_kwargs`` are those of :func:`save_pretrained` (``native``, ``metrics``, ...), checked
    before anything is uploaded; ``tags`` join the model card's."""
    upload = CompactModelUpload(model, tokenizer, **save_kwargs)
    return upload.push_to_hub(
        repo_id,
        commit_message=commit_message,
        commit_description=commit_description,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
        max_shard_size=max_shard_size,
        tags=tags,
    )
