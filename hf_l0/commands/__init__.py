"""The prune commands of the ``hf-l0`` CLI, in the style of transformers' run_glue.py / run_clm.py:
``hf-l0 prune-classifier`` (:mod:`.prune_classification`) and ``hf-l0 prune-clm`` (:mod:`.prune_clm`). They need the
demo extra (datasets)."""
