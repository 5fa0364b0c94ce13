"""hf-l0: structured L0 pruning (hard concrete gates, CoFi / Sheared-LLaMA) for stock transformers models."""

from .arch import ArchAdapter, get_adapter, register_adapter, supported_model_types
from .cost.flops import compact_flops, deterministic_flops, expected_flops, full_flops
from .cost.latency import LatencyTable, expected_latency, latency_table, predict_latency
from .cost.size import (
    SizeReport,
    check_target_reachable,
    deterministic_size,
    deterministic_sparsity,
    expected_size,
    expected_sparsity,
    full_size,
    max_reachable_sparsity,
)
from .gates.config import L0Config
from .gates.hard_concrete import HardConcreteGate
from .gates.patch import L0Gates, get_gates, is_patched, patch_model, unpatch_model
from .hub import export_plan, from_pretrained, push_to_hub, save_pretrained
from .hub.auto_classes import register_compact_classes
from .pruning.baselines import activation_scores, fisher_scores, importance_prune, magnitude_prune, magnitude_scores
from .pruning.prune import prune_model
from .pruning.structure import build_compact_model
from .training.gate_init import init_gates_from_scores
from .training.lagrangian import LagrangianController
from .version import __version__ as __version__

# Saved compact models (model_type hf_l0_<type>) load through transformers' Auto classes with hf-l0's own classes:
# no remote-code prompt, not even for AutoTokenizer.
register_compact_classes()

__all__ = [
    "ArchAdapter",
    "HardConcreteGate",
    "L0Config",
    "L0Gates",
    "L0Trainer",
    "L0TrainingArguments",
    "LagrangianController",
    "LatencyTable",
    "SizeReport",
    "activation_scores",
    "build_compact_model",
    "check_target_reachable",
    "compact_flops",
    "deterministic_flops",
    "deterministic_size",
    "deterministic_sparsity",
    "expected_flops",
    "expected_latency",
    "expected_size",
    "expected_sparsity",
    "export_gguf",
    "export_onnx",
    "export_plan",
    "fisher_scores",
    "from_pretrained",
    "full_flops",
    "full_size",
    "get_adapter",
    "get_gates",
    "importance_prune",
    "init_gates_from_scores",
    "is_patched",
    "latency_table",
    "magnitude_prune",
    "magnitude_scores",
    "max_reachable_sparsity",
    "patch_model",
    "predict_latency",
    "prune_model",
    "push_to_hub",
    "register_adapter",
    "save_pretrained",
    "supported_model_types",
    "unpatch_model",
]


def __getattr__(name: str):
    # The trainer and its arguments pull in transformers.Trainer (and accelerate): import them only when asked for.
    if name == "L0Trainer":
        from .training.trainer import L0Trainer

        return L0Trainer
    if name == "L0TrainingArguments":
        from .training.training_args import L0TrainingArguments

        return L0TrainingArguments
    # Deployment exports import onnx / gguf only when used (the deploy extra).
    if name == "export_onnx":
        from .deploy.onnx import export_onnx

        return export_onnx
    if name == "export_gguf":
        from .deploy.gguf_export import export_gguf

        return export_gguf
    raise AttributeError(f"module 'hf_l0' has no attribute {name!r}")
