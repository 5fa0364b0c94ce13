"""The python files of a remote-code directory: flat copies of hf-l0's portable set and a generated modeling file.

transformers' remote-code loader (``trust_remote_code=True``) imports ``modeling_hf_l0.py`` and follows only
``from .<sibling> import`` within the directory, so every module that rebuilds the compact shapes is copied flat
(``hf_l0.arch.base`` -> ``hf_l0_arch_base.py``), byte for byte except its hf_l0 import lines.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import transformers
from torch import nn

from ..arch import get_adapter
from ..arch.base import MODEL_TYPE_PREFIX, base_model_type
from ..version import __version__
from .export import auto_class_name, stock_config, stock_model_class

MODELING_FILE = "modeling_hf_l0.py"
# The portable set: the modules a remote-code directory holds copies of, plus the model family's adapter module
# (hf_l0.arch.<family>); everything ``hf_l0.hub.remote.CompactModelMixin`` needs. The rule: a portable module imports
# only the standard library, torch, transformers and other portable modules (never the rest of hf_l0), because the
# directory must load where hf_l0 is not installed. ``flatten_imports`` refuses any other hf_l0 import when saving,
# and a static test checks the rule over this list and every adapter module.
PORTABLE_MODULES = (
    "hf_l0.pruning.slicing",
    "hf_l0.pruning.stand_ins",
    "hf_l0.pruning.structure_format",
    "hf_l0.arch.base",
    "hf_l0.pruning.structure",
    "hf_l0.hub.checkpoint",
    "hf_l0.hub.remote",
)
REMOTE_CODE_PREFIX = "hf_l0_"


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
            raise ValueError(
                f"{where}: 'from {'.' * node.level} import ...' cannot be flattened; import names from "
                "the module itself."
            )
        spec = "." * node.level + node.module
        target = importlib.util.resolve_name(spec, package) if node.level else node.module
        if target not in table:
            raise ValueError(
                f"{where} imports {target}, which remote-code directories do not hold "
                f"(they hold {', '.join(sorted(table))})."
            )
        line = lines[node.lineno - 1]
        lines[node.lineno - 1], count = re.subn(
            rf"^(\s*from\s+){re.escape(spec)}(\s+import\b)", rf"\g<1>.{table[target]}\g<2>", line
        )
        if count != 1:
            raise ValueError(f"{where}: expected 'from {spec} import' at the start of the line, got {line!r}.")
    return "".join(lines)


def module_source(module: str) -> str:
    """The text of ``module``'s source file, exactly as on disk."""
    return Path(importlib.import_module(module).__file__).read_text()


def remote_code_files(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """The python files written next to a non-native compact model (file name -> source) and its ``auto_map``.

    ``hf_l0_*.py`` are the sources of :data:`PORTABLE_MODULES` and of the family's adapter module, byte for byte
    except :func:`flatten_imports`. ``modeling_hf_l0.py`` subclasses the stock config (renaming ``model_type`` to
    ``hf_l0_<type>``), the model's class and the family's base model class with ``CompactModelMixin``.
    """
    adapter_cls = type(get_adapter(model))
    modules = (*PORTABLE_MODULES, adapter_cls.__module__)
    table = {module: flat_module_name(module) for module in modules}
    files = {f"{table[module]}.py": flatten_imports(module_source(module), module, table) for module in modules}
    config_cls = type(stock_config(model.config)).__name__
    task_auto = auto_class_name(model)
    classes = {task_auto: stock_model_class(model).__name__}
    base_cls = transformers.AutoModel._model_mapping[type(stock_config(model.config))]
    classes.setdefault("AutoModel", base_cls.__name__)
    names = sorted({config_cls, *classes.values()})
    stem = Path(MODELING_FILE).stem
    lines = [
        f'"""Generated by hf-l0 {__version__}: the stock classes, shrunk to the shapes of config.l0_structure."""',
        "",
        f"from transformers import {', '.join(names)}",
        "",
        f"from .{table[adapter_cls.__module__]} import {adapter_cls.__name__}  # noqa: F401  (registers the adapter)",
        f"from .{table['hf_l0.hub.remote']} import CompactModelMixin",
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
