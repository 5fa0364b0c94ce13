"""Deprecated: renamed to :mod:`hf_l0.hub.card`; this path is removed in the next release."""

from ._moved import alias_module

alias_module(__name__, "hf_l0.hub.card")
