"""Stage 2, train under the controller: `L0Trainer` and its arguments, the Lagrangian controller and its schedule,
distillation, gate initialisation from importance scores, and the sparsity trajectory.

Import public names from ``hf_l0``; this package file imports nothing, so importing any one module of the stage
loads only what that module needs (the portable modules must load without the rest of hf_l0)."""
