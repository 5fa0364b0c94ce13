"""Deprecated: moved to :mod:`hf_l0.demo.assets`; this path is removed in the next release."""

from ._moved import alias_module

alias_module(__name__, "hf_l0.demo.assets")
