"""A griffe extension for the API reference: the docstrings cite objects with Sphinx roles (:func:`hf_l0.prune_model`),
which Markdown does not know. Each role becomes a link to the object's entry when the reference renders it, and stays
inline code when it does not (a private helper, a name relative to its module)."""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc|const):`(~?)([^`<>]+)`")


def _reference(match: re.Match[str]) -> str:
    short, identifier = match.group(1), match.group(2).strip()
    title = identifier.rsplit(".", 1)[-1] if short else identifier
    return f'<autoref optional identifier="{identifier}"><code>{title}</code></autoref>'


class SphinxRoles(Extension):
    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_reference, obj.docstring.value)
