"""Stage 3, count the cost: parameters (size, sparsity), forward FLOPs and latency of a gated model, expected
(differentiable) and deterministic, the cost targets the controller drives, and measured speed.

Import public names from ``hf_l0``; this package file imports nothing, so importing any one module of the stage
loads only what that module needs (the portable modules must load without the rest of hf_l0)."""
