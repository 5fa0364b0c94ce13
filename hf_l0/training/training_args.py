"""`L0TrainingArguments`: `TrainingArguments` plus the L0 pruning, sparsity controller and distillation settings.

Kept apart from :mod:`hf_l0.training.trainer` as transformers keeps ``training_args.py`` apart from ``trainer.py``: the
arguments parse and validate (scripts build them with ``HfArgumentParser``) before any model exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..cost.targets import CostTargetArguments
from ..gates.config import CONFIG_NAME, STRUCTURES, L0Config
from .gate_init import GATE_INITS
from .lagrangian import MULTIPLIER_UPDATES, check_target_sparsity

# Default gate learning rate: this many log_alpha units over the sparsity warm-up, clipped to GATE_LR_RANGE.
GATE_LR_PER_WARMUP_STEPS = 25.0
GATE_LR_RANGE = (0.05, 1.0)


@dataclass
class L0TrainingArguments(CostTargetArguments, TrainingArguments):
    """`TrainingArguments` plus the L0 pruning, Lagrangian and distillation settings (all available on the CLI)."""

    sparsity_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps over which the target rises linearly from 0 (CoFi). Overrides "
            "--sparsity_warmup_ratio when > 0."
        },
    )
    sparsity_warmup_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Fraction of the search steps (all steps without a recovery stage) over which the target rises "
            "from 0, when --sparsity_warmup_steps is 0. The remaining search steps hold the target so the gates "
            "settle on it."
        },
    )
    recovery_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Fraction of the training steps that train the fixed architecture after the search (CoFi's "
            "and Sheared-LLaMA's second stage): at the first of them the deterministic sparsity is pinned to the "
            "target and the gates freeze at their deterministic values; the weights then train the compact model "
            "exactly, with the same loss and no penalty. 0: no recovery stage (the gates train to the last step). "
            "The default 0.5 won on validation accuracy in benchmarks/recovery.py (docs: benchmarks)."
        },
    )
    gate_temperature_final: float | None = field(
        default=None,
        metadata={
            "help": "Anneal the hard concrete temperature geometrically from L0Config.temperature to this value over "
            "the search (by step, so a resumed run takes it up exactly); lower values draw samples closer to 0 / 1, "
            "so the masks the weights train under late in the search approach the mask the run keeps. None: the "
            "temperature stays constant."
        },
    )
    recovery_mask_tuning: bool = field(
        default=False,
        metadata={
            "help": "At the freeze, scale each kept head / neuron by least squares so that every sublayer's output "
            "projection reconstructs the teacher's on the first recovery_mask_tuning_batches training batches (Kwon "
            "et al., 2022's mask tuning), folded into the weights. Needs a teacher; one process, no hidden-dimension "
            "gates."
        },
    )
    recovery_mask_tuning_batches: int = field(
        default=16, metadata={"help": "Calibration batches of recovery_mask_tuning (read under a forked RNG)."}
    )
    recovery_lr_restart: bool = field(
        default=False,
        metadata={
            "help": "Start the weights' learning-rate schedule afresh at the freeze: the recovery steps get the "
            "run's schedule (--lr_scheduler_type, the same fraction of warm-up) over their own length, as CoFi's "
            "separate fine-tuning stage does. Otherwise they continue the run's schedule where the search left it."
        },
    )
    gate_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the gates' log_alpha (own param group, no weight decay). Default: "
            f"{GATE_LR_PER_WARMUP_STEPS:g} / sparsity warm-up steps, within [{GATE_LR_RANGE[0]}, "
            f"{GATE_LR_RANGE[1]}]: the gates must cross from open to closed within the warm-up, so short runs "
            "need a higher rate (0.5 at 50 warm-up steps, 0.17 at 150)."
        },
    )
    gate_adam_beta1: float = field(
        default=0.0,
        metadata={
            "help": "Adam beta1 of the gates' param group. 0 (no momentum) by default: with momentum the gates "
            "keep closing after the constraint is met and the sparsity overshoots the target."
        },
    )
    gate_lr_constant: bool = field(
        default=False,
        metadata={"help": "Keep the gates' learning rate constant instead of following the weights' schedule."},
    )
    sparsity_controller: str = field(
        default="pi",
        metadata={
            "help": "How the Lagrange multiplier follows the sparsity schedule: pi (proportional-integral "
            "update on the deterministic sparsity, once per step; stays on the schedule) or ascent (CoFi's "
            "gradient ascent by the optimizer, which overshoots at short budgets).",
            "choices": list(MULTIPLIER_UPDATES),
        },
    )
    controller_proportional_gain: float = field(
        default=60.0,
        metadata={
            "help": "pi controller: lambda_1 x gate learning rate per unit of sparsity error (the brake when "
            "the schedule is crossed)."
        },
    )
    controller_integral_gain: float = field(
        default=6.0,
        metadata={
            "help": "pi controller: lambda_1 x gate learning rate added per step per unit of sparsity error "
            "(removes the lag)."
        },
    )
    controller_anti_windup: bool = field(
        default=True,
        metadata={
            "help": "pi controller: once the warm-up is over, empty the integral whenever it pushes against the "
            "error, so the push that kept the sparsity on the ramp does not carry it past the target."
        },
    )
    controller_integral_separation: float = field(
        default=0.03,
        metadata={
            "help": "pi controller: integrate only errors within this distance of the schedule (0: all); far from it "
            "the proportional term alone drives, so the start-up lag does not wind the integral up into an overshoot."
        },
    )
    controller_error_signal: str = field(
        default="deterministic",
        metadata={
            "help": "pi controller: which sparsity is compared with the schedule.",
            "choices": ["deterministic", "expected"],
        },
    )
    lagrangian_learning_rate: float = field(
        default=0.5,
        metadata={"help": "ascent controller: learning rate of lambda_1, lambda_2 (gradient ascent)."},
    )
    l0_structures: str = field(
        default="heads,ffn",
        metadata={
            "help": f"Comma-separated structures to gate, from {', '.join(STRUCTURES)}. Ignored when "
            "--l0_config is given."
        },
    )
    l0_width_multiple: int = field(
        default=1,
        metadata={
            "help": "L0Config.width_multiple with --l0_structures: every kept width a multiple of this many "
            "dimensions (32 for llama.cpp quantization blocks). Set width_multiple inside --l0_config instead "
            "when that is given."
        },
    )
    l0_config: dict | str | None = field(
        default=None,
        metadata={"help": "A full L0Config: a JSON string, a path to l0_config.json, or a directory holding one."},
    )
    sparsity_calibration_rate: float = field(
        default=0.05,
        metadata={
            "help": "ascent controller: after the warmup, shift the expected-sparsity target by this rate x "
            "(target - deterministic sparsity) per step, so the pruned model lands on the target (0 = off). The "
            "pi controller measures the deterministic sparsity itself and ignores it."
        },
    )
    sparsity_final_phase_ratio: float = field(
        default=0.1,
        metadata={
            "help": "Final fraction of the search steps during which the deterministic sparsity is pinned to "
            "the target before every step (one common log_alpha shift, see hf_l0.training.lagrangian.snap_to_target), "
            "so the weights adapt to the pruned shape and the run ends on the target. 0 = off."
        },
    )
    log_alpha_clamp: float | None = field(
        default=None,
        metadata={
            "help": "Clamp every log_alpha into [-c, c] after each step (CoFi uses log(100) = 4.6). Off by "
            "default: a tight lower bound keeps closed gates' P(z != 0) above 0 and biases the size."
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Dense fine-tuned teacher to distill from (frozen, eval mode, no grad)."},
    )
    distill_alpha: float = field(
        default=0.9,
        metadata={"help": "Weight of the logit KL in [0, 1]; the task loss gets 1 - alpha. Needs a teacher."},
    )
    distill_temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T (KL x T^2)."})
    distill_layerwise: bool = field(
        default=False,
        metadata={"help": "Add CoFi's layerwise hidden-state loss (learned linear map per matched layer)."},
    )
    distill_layer_weight: float = field(default=1.0, metadata={"help": "Weight of the layerwise loss."})
    prune_at_end: bool = field(
        default=True,
        metadata={"help": "trainer.save_model() writes the compact pruned model (checkpoints stay gated)."},
    )
    gate_init: str = field(
        default="uniform",
        metadata={
            "help": "How the gates start: 'uniform' (all alike, near open) or ordered by an importance score "
            "of each head / neuron on the first --gate_init_batches training batches: 'fisher' (= 'taylor'), "
            "'activation', 'magnitude' (no batches). The expected size at init is the same for all "
            "(see hf_l0.init_gates_from_scores)."
        },
    )
    gate_init_batches: int = field(default=16, metadata={"help": "Calibration batches for --gate_init."})
    gate_init_scale: float = field(
        default=1.0, metadata={"help": "log_alpha spread per standard deviation of the importance rank (gate_init)."}
    )

    def __post_init__(self) -> None:
        self.l0_config = _l0_config_dict(self.l0_config)
        self.validate_cost_target()  # one target, and its settings (hf_l0.cost.targets.CostTargetArguments)
        if self.target_sparsity is not None:
            self.target_sparsity = check_target_sparsity(self.target_sparsity)
        self.resolved_l0_config()  # validates structures / config
        if self.sparsity_warmup_steps < 0:
            raise ValueError(f"sparsity_warmup_steps={self.sparsity_warmup_steps} must be >= 0.")
        if not 0.0 <= self.sparsity_warmup_ratio <= 1.0:
            raise ValueError(f"sparsity_warmup_ratio={self.sparsity_warmup_ratio} must lie in [0, 1].")
        for name in ("gate_learning_rate", "lagrangian_learning_rate", "distill_temperature"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0.")
        if not 0.0 <= self.recovery_ratio < 1.0:
            raise ValueError(
                f"recovery_ratio={self.recovery_ratio} must lie in [0, 1): the fraction of the steps that train the "
                "fixed architecture after the search (0: no recovery stage)."
            )
        if self.recovery_mask_tuning_batches < 1:
            raise ValueError(f"recovery_mask_tuning_batches={self.recovery_mask_tuning_batches} must be >= 1.")
        if self.recovery_mask_tuning and self.recovery_ratio == 0:
            raise ValueError("recovery_mask_tuning=True tunes the mask at the freeze: set recovery_ratio > 0.")
        if self.gate_temperature_final is not None and self.gate_temperature_final <= 0:
            raise ValueError(
                f"gate_temperature_final={self.gate_temperature_final} must be > 0 (the hard concrete temperature the "
                "search anneals to), or None to keep it constant."
            )
        if not 0.0 <= self.sparsity_final_phase_ratio < 1.0:
            raise ValueError(f"sparsity_final_phase_ratio={self.sparsity_final_phase_ratio} must lie in [0, 1).")
        if self.sparsity_calibration_rate < 0:
            raise ValueError(f"sparsity_calibration_rate={self.sparsity_calibration_rate} must be >= 0.")
        if self.log_alpha_clamp is not None and self.log_alpha_clamp <= 0:
            raise ValueError(f"log_alpha_clamp={self.log_alpha_clamp} must be > 0 (the range is [-c, c]).")
        if not 0.0 <= self.gate_adam_beta1 < 1.0:
            raise ValueError(f"gate_adam_beta1={self.gate_adam_beta1} must lie in [0, 1).")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha={self.distill_alpha} must lie in [0, 1] (weight of the logit KL).")
        if self.distill_layer_weight < 0:
            raise ValueError(f"distill_layer_weight={self.distill_layer_weight} must be >= 0.")
        if self.gate_init not in GATE_INITS:
            raise ValueError(f"gate_init={self.gate_init!r}: choose one of {', '.join(GATE_INITS)}.")
        if self.gate_init_batches < 1 or self.gate_init_scale < 0:
            raise ValueError(
                f"gate_init_batches={self.gate_init_batches} must be >= 1 and gate_init_scale="
                f"{self.gate_init_scale} >= 0."
            )
        super().__post_init__()

    def resolved_l0_config(self) -> L0Config:
        """The `L0Config` these arguments describe (``l0_config`` if given, else ``l0_structures``)."""
        if self.l0_config is not None:
            if self.l0_width_multiple != 1:
                raise ValueError(
                    f"l0_width_multiple={self.l0_width_multiple} is ignored when --l0_config is given: set "
                    '"width_multiple" inside the l0_config instead.'
                )
            return L0Config.from_dict(dict(self.l0_config))
        names = [s.strip() for s in self.l0_structures.split(",") if s.strip()]
        unknown = sorted(set(names) - set(STRUCTURES))
        if unknown or not names:
            raise ValueError(
                f"l0_structures={self.l0_structures!r}: unknown or no structures {unknown}; choose "
                f"from {', '.join(STRUCTURES)} (comma-separated)."
            )
        return L0Config(**{s: s in names for s in STRUCTURES}, width_multiple=self.l0_width_multiple)


def _l0_config_dict(value: dict | str | L0Config | None) -> dict | None:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, L0Config):
        return value.to_dict()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        path = os.path.join(text, CONFIG_NAME) if os.path.isdir(text) else text
        if not os.path.isfile(path):
            raise ValueError(
                f"l0_config={value!r} is neither a JSON object nor an existing file or directory holding {CONFIG_NAME}."
            )
        with open(path) as f:
            return json.load(f)
    raise TypeError(f"l0_config must be an L0Config, a dict, a JSON string or a path, got {type(value).__name__}.")
