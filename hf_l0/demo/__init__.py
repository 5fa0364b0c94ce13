"""What the example scripts, benchmarks and tests share but the library does not need: the packaged real models and
data (:mod:`~hf_l0.demo.assets`, :mod:`~hf_l0.demo.data`, which needs ``datasets``), the scripts' helpers
(:mod:`~hf_l0.demo.scripting`), their evaluation loops (:mod:`~hf_l0.demo.evaluation`) and GGUF loading
(:mod:`~hf_l0.demo.gguf`).

Imports nothing here: ``import hf_l0`` never loads the demo code or its dependencies.
"""
