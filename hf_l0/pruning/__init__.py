"""Stage 4, cut: the pruning plan and its persisted format, shape surgery, the removed-sublayer stand-ins,
`prune_model`, and the importance-score baselines it is compared against.

Import public names from ``hf_l0``; this package file imports nothing, so importing any one module of the stage
loads only what that module needs (the portable modules must load without the rest of hf_l0)."""
