"""Deprecated: moved to :mod:`hf_l0.demo.data` (``python -m hf_l0.demo.data``); this path is removed in the next
release."""

from ._moved import alias_module

if __name__ == "__main__":  # python -m hf_l0.data ...: run the new module's command line
    alias_module("hf_l0.data", "hf_l0.demo.data")
    from .demo.data import main

    main()
else:
    alias_module(__name__, "hf_l0.demo.data")
