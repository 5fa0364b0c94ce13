"""Stage 1, attach gates: which structures get gates (`L0Config`), the hard concrete gate, and the hooks that
put them on a stock model (`patch_model`).

Import public names from ``hf_l0``; this package file imports nothing, so importing any one module of the stage
loads only what that module needs (the portable modules must load without the rest of hf_l0)."""
