"""Old module paths that keep working for one release: each is the new module itself, with a warning on import."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias_module(old: str, new: str) -> None:
    """Make ``import <old>`` give the module ``new`` (the same object: attributes, private ones included, and
    monkeypatching reach the real module), warning once per process that ``old`` is deprecated."""
    warnings.warn(
        f"{old} moved to {new}; import from {new} ({old} will be removed in the next release).",
        FutureWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
