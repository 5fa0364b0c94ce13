"""`L0Trainer`: fine-tune while the L0 term drives the model to a chosen size (arguments:
:mod:`hf_l0.training.training_args`).

The loss is ``task (or distillation) loss + lambda_1 (s - t) + lambda_2 (s - t)^2`` (:mod:`hf_l0.training.lagrangian`),
with ``s`` the expected sparsity of the attention + FFN parameters and ``t`` the warmed-up target. One optimizer holds
four kinds of param groups: model weights (with and without weight decay, the Trainer's schedule), gate
``log_alpha`` (``gate_learning_rate``, no decay, constant), the multipliers (``lagrangian_learning_rate``, no decay,
constant, gradient ascent) and, with layerwise distillation, the learned layer maps.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel, Trainer, get_scheduler

from .. import hub
from ..cost.size import deterministic_sparsity, expected_sparsity
from ..cost.targets import check_cost_arguments, cost_target_from_args
from ..gates.config import L0Config
from ..gates.patch import GATES_ATTR, get_gates, is_patched, patch_model, transformers_model
from ..pruning.prune import pruned_copy
from .distill import DistillationLoss, LayerwiseDistiller, check_teacher
from .gate_init import gate_init_callback
from .lagrangian import (
    GateClamp,
    LagrangianController,
    check_schedule,
    gate_parameters,
    l0_param_groups,
    param_group_indices,
    restart_at_recovery,
    search_steps,
)
from .mask_tuning import tune_mask_least_squares
from .training_args import GATE_LR_PER_WARMUP_STEPS, GATE_LR_RANGE, L0TrainingArguments
from .trajectory import trajectory_from_log_history, write_sparsity_trajectory

L0_STATE_NAME = "l0_trainer_state.safetensors"
__all__ = [
    "L0Trainer",
    "L0TrainingArguments",
]  # the arguments live in hf_l0.training.training_args; importable from here too
STAT_KEYS = ("expected_sparsity", "target_sparsity", "lambda_1", "lambda_2", "lagrangian_loss", "target_offset")


def _constant_lr(_step: int) -> float:
    return 1.0


class L0Trainer(Trainer):
    """A `Trainer` that prunes while it fine-tunes (CoFi): L0 gates + Lagrangian + optional distillation.

    Args:
        model: a stock transformers model; patched with gates here unless already patched.
        args: `L0TrainingArguments`.
        teacher_model: the dense fine-tuned teacher (else loaded from ``args.teacher_model_name_or_path``).
        l0_config: overrides ``args.l0_config`` / ``args.l0_structures``.
        **kwargs: everything `Trainer` takes (datasets, collator, ``compute_metrics``, callbacks, ...).

    Evaluation runs with deterministic gates (eval mode) and logs ``eval_deterministic_sparsity``; training logs
    ``expected_sparsity``, ``target_sparsity``, ``lambda_1``, ``lambda_2`` and ``lagrangian_loss``.
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        args: L0TrainingArguments | None = None,
        *,
        teacher_model: nn.Module | None = None,
        l0_config: L0Config | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, L0TrainingArguments):
            raise TypeError("L0Trainer needs args=L0TrainingArguments(...) (target_sparsity and the L0 settings).")
        if model is None:
            raise ValueError("L0Trainer needs a model instance (model_init is not supported: gates are per model).")
        if is_patched(model):
            config = model.l0_config
            if l0_config is not None and l0_config.to_dict() != config.to_dict():
                raise ValueError(
                    "the model is already patched with a different L0Config than l0_config=...; "
                    "unpatch it first or drop the argument."
                )
        else:
            config = l0_config if l0_config is not None else args.resolved_l0_config()
            patch_model(model, config)  # raises a clear error for a model type without an adapter
        # before any training step: say what is reachable. None: the parameter sparsity, else a FLOPs / latency cost
        self.cost_target = cost_target_from_args(model, args)
        self.l0_config = config
        self.controller = LagrangianController(
            args.target_reduction,
            warmup_steps=args.sparsity_warmup_steps,
            calibration_rate=args.sparsity_calibration_rate,
            multiplier_update=args.sparsity_controller,
            proportional_gain=args.controller_proportional_gain,
            integral_gain=args.controller_integral_gain,
            final_phase_ratio=args.sparsity_final_phase_ratio,
            error_signal=args.controller_error_signal,
            anti_windup=args.controller_anti_windup,
            integral_separation=args.controller_integral_separation,
            metric=self.cost_target,
            recovery_ratio=args.recovery_ratio,
            final_temperature=args.gate_temperature_final,
        )

        if teacher_model is None and args.teacher_model_name_or_path:
            teacher_model = type(model).from_pretrained(args.teacher_model_name_or_path)
        if args.recovery_mask_tuning:
            if teacher_model is None:
                raise ValueError(
                    "recovery_mask_tuning reconstructs the teacher's sublayer outputs: set teacher_model_name_or_path "
                    "or pass teacher_model=."
                )
            if config.hidden or args.world_size > 1:
                raise ValueError(
                    "recovery_mask_tuning runs in one process on models without hidden-dimension gates: turn it off "
                    "under DDP / FSDP and with hidden=True."
                )
        if teacher_model is None and args.distill_layerwise:
            raise ValueError(
                "distill_layerwise needs a teacher: set teacher_model_name_or_path or pass teacher_model=."
            )
        if teacher_model is not None:
            if is_patched(teacher_model):
                raise ValueError("the teacher carries L0 gates: distill from the dense model, not a gated one.")
            check_teacher(model, teacher_model)
            teacher_model.eval().requires_grad_(False)
        self.teacher = teacher_model
        self.distiller = None
        if args.distill_layerwise:
            self.distiller = LayerwiseDistiller(model.config.hidden_size, model.config.num_hidden_layers)
        self.distillation_loss = (
            None
            if teacher_model is None
            else DistillationLoss(
                teacher_model, args.distill_alpha, args.distill_temperature, self.distiller, args.distill_layer_weight
            )
        )
        self._l0_sums: dict[str, float] = {}
        self._l0_count = 0
        self._compact: tuple[int, nn.Module] | None = None
        self._tuned_at = -1  # the step recovery_mask_tuning ran at
        # Trainer sets config.use_cache = args.use_cache (False) for training; the compact model is for inference.
        self._inference_use_cache = getattr(transformers_model(model).config, "use_cache", None)

        super().__init__(model=model, args=args, **kwargs)
        # The penalty is added per micro-batch as a batch mean: let the Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._pending_shift: list[torch.Tensor] | None = None
        self._fsdp2 = self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2
        if self._fsdp2:
            self.accelerator.prepare = _keep_outside_params(self.accelerator.prepare, self._outside_params)
        self.controller.to(self.args.device)
        if self.teacher is not None:
            self.teacher.to(self.args.device)
        if self.distiller is not None:
            self.distiller.to(self.args.device)
        if args.gate_init != "uniform":  # scores the first training batches when training begins
            self.add_callback(gate_init_callback(self))

    # -- optimizer and schedule -----------------------------------------------------------------------------------
    def _gated_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """One optimizer, param groups: weights (decay), weights (no decay), gates, multipliers[, layer maps]."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        if not isinstance(optimizer_cls, type) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter groups; L0Trainer needs a standard "
                "torch optimizer (e.g. adamw_torch) for its gate and multiplier groups."
            )
        # Adam family: the gates get their own beta1 (see gate_adam_beta1); other optimizers keep their settings
        betas = optimizer_kwargs.get("betas")
        groups = l0_param_groups(
            model,
            self.controller,
            lr=None,
            gate_lr=self._resolve_gate_learning_rate(self.state.max_steps),
            lagrangian_lr=self.args.lagrangian_learning_rate,
            weight_decay=self.args.weight_decay,
            gate_betas=None if betas is None else (self.args.gate_adam_beta1, betas[1]),
            decay=self.get_decay_parameter_names(model),
            layer_maps=self.distiller,
            gated_model=self._gated_model(),
        )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        # The Trainer zeroes the model's gradients only. The multipliers and layer maps live outside the model: without
        # this their gradients would add up over all steps (lambda climbing on the sum of past gaps), and a resumed
        # run, which starts with none, would drift from the uninterrupted one.
        self.optimizer.register_step_post_hook(self._zero_outside_grads)
        self.optimizer.register_step_post_hook(self._apply_pending_shift)
        if self.args.log_alpha_clamp is not None:
            c = self.args.log_alpha_clamp
            self.optimizer.register_step_post_hook(GateClamp(self._gated_model(), -c, c))
        return self.optimizer

    def _outside_named_params(self) -> dict[str, nn.Parameter]:
        """The optimized parameters that live outside the model, by name: the multipliers and the layer maps."""
        named = {f"controller.{n}": p for n, p in self.controller.named_parameters()}
        if self.distiller is not None:
            named.update({f"distiller.{n}": p for n, p in self.distiller.named_parameters()})
        return named

    def _outside_params(self) -> set[int]:
        return {id(p) for p in self._outside_named_params().values()}

    def _zero_outside_grads(self, *_args: Any) -> None:
        for param in self._outside_named_params().values():
            param.grad = None

    def _resolve_gate_learning_rate(self, num_training_steps: int) -> float:
        """Fix the warm-up length (from the ratio unless given in steps) and the gates' learning rate (from the
        warm-up unless given); the PI controller's gains are relative to that rate."""
        search = self.controller.search_steps(num_training_steps)
        if not self.args.sparsity_warmup_steps:
            self.controller.warmup_steps = math.ceil(self.args.sparsity_warmup_ratio * max(search, 1))
        rate = self.args.gate_learning_rate
        if rate is None:
            low, high = GATE_LR_RANGE
            rate = min(high, max(low, GATE_LR_PER_WARMUP_STEPS / max(self.controller.warmup_steps, 1)))
        self.controller.gate_learning_rate = float(rate)
        return float(rate)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's schedule for weights and gates (a decaying gate rate lets the gates settle on the target);
        the multipliers keep a constant rate so the constraint holds to the last step."""
        self._resolve_gate_learning_rate(num_training_steps)
        source = (
            f"sparsity_warmup_steps={self.args.sparsity_warmup_steps}"
            if self.args.sparsity_warmup_steps
            else f"sparsity_warmup_ratio={self.args.sparsity_warmup_ratio}"
        )
        check_schedule(
            self.controller.warmup_steps, num_training_steps, self.args.target_text(), source, self.args.recovery_ratio
        )
        created = self.lr_scheduler is None
        restart = self.args.recovery_lr_restart and self.args.recovery_ratio > 0
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if restart and not (created and isinstance(scheduler, LambdaLR)):
            raise ValueError(
                "recovery_lr_restart=True restarts the Trainer's own LambdaLR schedule at the freeze; this run has "
                f"{'a scheduler passed in' if not created else type(scheduler).__name__} (lr_scheduler_type="
                f"{self.args.lr_scheduler_type!r}). Use a LambdaLR schedule type (linear, cosine, constant, ...) "
                "without passing a scheduler, or set recovery_lr_restart=False."
            )
        if created and isinstance(scheduler, LambdaLR):
            constant = ("gates", "multipliers") if self.args.gate_lr_constant else ("multipliers",)
            for i in param_group_indices(scheduler.optimizer, *constant):
                scheduler.lr_lambdas[i] = _constant_lr
                scheduler.optimizer.param_groups[i]["lr"] = scheduler.base_lrs[i]
                scheduler._last_lr[i] = scheduler.base_lrs[i]
            if restart:
                self._restart_weights_schedule_at_recovery(scheduler, num_training_steps)
        return scheduler

    def _restart_weights_schedule_at_recovery(self, scheduler: LambdaLR, num_training_steps: int) -> None:
        """The weights' (and layer maps') multiplier: the run's schedule over the search, then the same schedule type
        over the recovery steps alone, with the same warm-up fraction (``recovery_lr_restart``)."""
        search = self.controller.search_steps(num_training_steps)
        recovery = num_training_steps - search
        template = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0),
            # the run's warm-up as a fraction of its steps, applied to the recovery steps
            num_warmup_steps=math.ceil(self.args.get_warmup_steps(num_training_steps) * recovery / num_training_steps),
            num_training_steps=recovery,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )
        for i in param_group_indices(scheduler.optimizer, "weights", "weights_no_decay", "layer_maps"):
            scheduler.lr_lambdas[i] = restart_at_recovery(scheduler.lr_lambdas[i], template.lr_lambdas[0], search)

    # -- loss -------------------------------------------------------------------------------------------------------
    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        if not model.training:  # evaluation: the task loss of the deterministic model
            return super().compute_loss(model, inputs, return_outputs=return_outputs)
        gated = self._gated_model()
        step = self.state.global_step
        # Before the forward: a snap or the freeze at this step applies to this step's gates.
        self._step_controller(gated, step)
        if self.args.recovery_mask_tuning and int(self.controller.frozen_step) == step and self._tuned_at != step:
            self._tune_mask(gated)  # at the first micro-batch of the freeze step
            self._tuned_at = step
        if self.teacher is None:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        else:
            loss, outputs = self.distillation_loss(model, inputs)
        if self.controller.frozen:  # recovery: the architecture is fixed, the loss is the task loss alone
            with torch.no_grad():
                self._accumulate(self.controller.stats(self.controller.measure(gated), step))
            return (loss, outputs) if return_outputs else loss
        sparsity = self.controller.measure(gated)
        penalty = self.controller.penalty(sparsity, step)
        self._accumulate(self.controller.stats(sparsity.detach(), step))
        loss = loss + penalty.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _tune_mask(self, gated: nn.Module) -> None:
        """recovery_mask_tuning: least-squares scales on the first training batches, read under a forked RNG (so the
        training batches and dropout stay what they were; a resumed run reads the same ones)."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            loader = self.get_train_dataloader()
            batches = list(itertools.islice(iter(loader), self.args.recovery_mask_tuning_batches))
        tune_mask_least_squares(gated, self.teacher, [self._prepare_inputs(batch) for batch in batches])

    def _step_controller(self, gated: nn.Module, step: int) -> None:
        """The controller's once-per-step work (multiplier update, calibration, final-phase snap)."""
        params = gate_parameters(gated)
        before = [p.detach().clone() for p in params] if self._fsdp2 else None
        self.controller.on_step(gated, step, self.state.max_steps)  # a no-op when repeated within the step
        if before is not None and not any(hasattr(p, "full_tensor") for p in params):
            # FSDP2: inside the step these are gathered copies, dropped at reshard; add the snap's shift to the shards
            # after the optimizer step (Adam's update does not depend on the value, so the result is the same)
            shift = [p.detach() - b for p, b in zip(params, before)]
            if any(bool(s.any()) for s in shift):
                self._pending_shift = shift

    def _apply_pending_shift(self, *_args: Any) -> None:
        if not self._pending_shift:
            return
        from torch.distributed.tensor import distribute_tensor

        with torch.no_grad():
            for param, shift in zip(gate_parameters(self._gated_model()), self._pending_shift):
                if hasattr(param, "full_tensor"):
                    param.to_local().add_(distribute_tensor(shift, param.device_mesh, param.placements).to_local())
                else:
                    param.add_(shift)
        self._pending_shift = None

    def train(self, *args: Any, **kwargs: Any):
        output = super().train(*args, **kwargs)
        self.controller.finish(self._gated_model())  # the last optimizer step moved the gates once more
        rows = trajectory_from_log_history(self.state.log_history)
        if rows and self.args.should_save:
            title = f"{self.args.target_text()}, {self.args.sparsity_controller} controller"
            write_sparsity_trajectory(rows, self.args.output_dir, self.state.max_steps, title=title)
        return output

    # -- logging and evaluation -----------------------------------------------------------------------------------
    def _accumulate(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self._l0_sums[key] = self._l0_sums.get(key, 0.0) + value
        self._l0_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the L0 statistics (means since the last log) to training logs, so every reporter sees them."""
        if "loss" in logs and self._l0_count:
            logs.update({key: self._l0_sums[key] / self._l0_count for key in STAT_KEYS})
            # lambda and the target at the latest step are more telling than their means
            logs["target_sparsity"] = self.controller.target(self.state.global_step)
            logs["lambda_1"], logs["lambda_2"] = self.controller.lambda_1.item(), self.controller.lambda_2.item()
            logs["target_offset"] = float(self.controller.target_offset)
            logs["recovery"] = float(self.controller.frozen)  # 1: the gates froze, the fixed architecture trains
            gated = self._gated_model()
            if self.controller.final_temperature is not None:
                logs["gate_temperature"] = next(iter(get_gates(gated).gates.values())).temperature
            logs["deterministic_sparsity"] = float(self.controller.measure(gated, deterministic=True))
            if self.cost_target is not None:  # the *_sparsity keys are the cost reduction; add parameters and cost
                logs["deterministic_param_sparsity"] = float(deterministic_sparsity(gated))
                logs.update(self.cost_target.log_values(gated))
            self._l0_sums, self._l0_count = {}, 0
        super().log(logs, start_time)

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        model = self._gated_model()
        output.metrics[f"{prefix}_deterministic_sparsity"] = float(deterministic_sparsity(model))
        output.metrics[f"{prefix}_expected_sparsity"] = float(expected_sparsity(model).detach())
        output.metrics[f"{prefix}_target_sparsity"] = self.controller.target(self.state.global_step)
        if self.cost_target is not None:
            name = self.cost_target.name
            output.metrics[f"{prefix}_deterministic_{name}_reduction"] = float(self.cost_target(model, True))
            output.metrics.update({f"{prefix}_{k}": v for k, v in self.cost_target.log_values(model).items()})
        return output

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def _l0_state(self) -> dict[str, torch.Tensor]:
        state = {f"controller.{k}": v.detach().cpu().contiguous() for k, v in self.controller.state_dict().items()}
        if self.distiller is not None:
            state.update(
                {f"distiller.{k}": v.detach().cpu().contiguous() for k, v in self.distiller.state_dict().items()}
            )
        if self._fsdp2 and self.optimizer is not None:  # not in FSDP2's sharded optimizer checkpoint
            optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
            for name, param in self._outside_named_params().items():
                for key, value in optimizer.state.get(param, {}).items():
                    if torch.is_tensor(value):
                        state[f"optimizer.{name}.{key}"] = value.detach().cpu().contiguous()
        return state

    @contextlib.contextmanager
    def _optimizer_without_outside_params(self, restore_state: dict[str, torch.Tensor] | None = None):
        """FSDP2's sharded optimizer checkpoint (torch.distributed.checkpoint) names every optimized parameter by its
        place in the model and fails on the multipliers and layer maps: leave them out of it while it is written or
        read (their optimizer state goes into ``l0_trainer_state.safetensors``, see ``_l0_state``)."""
        if not self._fsdp2 or self.optimizer is None:
            yield
            return
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        ids = self._outside_params()
        groups = [group["params"] for group in optimizer.param_groups]
        state = {
            p: optimizer.state.pop(p) for params in groups for p in params if id(p) in ids and p in optimizer.state
        }
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        try:
            yield
        finally:
            for group, params in zip(optimizer.param_groups, groups):  # by position: loading makes new group dicts
                kept = iter(group["params"])
                group["params"] = [p if id(p) in ids else next(kept) for p in params]
            if restore_state is not None:
                state = {}
                for name, param in self._outside_named_params().items():
                    entries = {
                        k.rsplit(".", 1)[1]: v.to(param.device)
                        for k, v in restore_state.items()
                        if k.startswith(f"optimizer.{name}.")
                    }
                    if entries:
                        state[param] = entries
            for param, entries in state.items():
                optimizer.state[param] = entries

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        path = os.path.join(checkpoint, L0_STATE_NAME) if checkpoint else None
        restore = load_file(path) if self._fsdp2 and path and os.path.isfile(path) else None
        names = [group.get("name") for group in self.optimizer.param_groups] if self.optimizer is not None else []
        with self._optimizer_without_outside_params(restore):
            super()._load_optimizer_and_scheduler(checkpoint)
        # Loading replaces the group dicts with the saved ones: checkpoints of hf-l0 0.1.0 carry no group names
        if self.optimizer is not None:
            for group, name in zip(self.optimizer.param_groups, names):
                group.setdefault("name", name)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        with self._optimizer_without_outside_params():
            super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        path = os.path.join(folder, L0_STATE_NAME)
        tmp = path + ".tmp"
        save_file(self._l0_state(), tmp, metadata={"controller": json.dumps(self.controller.config_dict())})
        os.replace(tmp, path)  # never a half-written state file

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        _check_gates_in_checkpoint(resume_from_checkpoint, set(get_gates(self.model).gates))
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, L0_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: {resume_from_checkpoint} was not written by L0Trainer, so "
                "the Lagrange multipliers cannot be restored."
            )
        state = load_file(path)
        device = self.args.device
        self.controller.load_state_dict(
            {k[len("controller.") :]: v.to(device) for k, v in state.items() if k.startswith("controller.")}
        )
        if self.distiller is not None:
            self.distiller.load_state_dict(
                {k[len("distiller.") :]: v.to(device) for k, v in state.items() if k.startswith("distiller.")}
            )

    # -- the compact model ----------------------------------------------------------------------------------------
    def compact_model(self) -> nn.Module:
        """A pruned copy of the current gated model (the trainer's model stays gated and trainable)."""
        if self._compact is not None and self._compact[0] == self.state.global_step:
            return self._compact[1]
        compact = pruned_copy(self._gated_model(), self.l0_config)
        if self._inference_use_cache is not None:
            compact.config.use_cache = self._inference_use_cache
        self._compact = (self.state.global_step, compact)
        return compact

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep the gated model; with ``prune_at_end`` a user's call writes the compact model."""
        if _internal_call or not self.args.prune_at_end:
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = self.args.output_dir if output_dir is None else output_dir
        compact = self.compact_model()
        if self.args.should_save:
            hub.save_pretrained(compact, output_dir, tokenizer=self.processing_class)
            self.l0_config.save_pretrained(output_dir)  # provenance: how it was gated


def training_steps(args: L0TrainingArguments, num_train_examples: int) -> int:
    """The optimizer steps a Trainer run of ``args`` takes over ``num_train_examples`` examples (one process per
    device, as the Trainer counts them: ``max_steps`` when set, else epochs x batches / accumulation)."""
    if args.max_steps > 0:
        return args.max_steps
    per_step = args.train_batch_size * max(args.world_size, 1)
    batches = num_train_examples // per_step if args.dataloader_drop_last else math.ceil(num_train_examples / per_step)
    accumulation = args.gradient_accumulation_steps
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def check_l0_run(
    model: nn.Module,
    args: L0TrainingArguments,
    *,
    num_train_examples: int | None = None,
    l0_config: L0Config | None = None,
) -> None:
    """Every refusal of an :class:`L0Trainer` run that depends only on the arguments and the model's shape, before
    anything expensive: a script calls it before its dense fine-tuning stage. ``model`` is not changed: the gates go
    on a copy built on the meta device (no weights copied). The target must be reachable (parameters, FLOPs; a
    latency target measures its table now, from ``model``, or loads it from the cache, where the trainer finds it
    again); with ``num_train_examples`` the warm-up must end before the run does.
    """
    if not isinstance(args, L0TrainingArguments):
        raise TypeError("check_l0_run needs args=L0TrainingArguments(...).")
    gated = transformers_model(model)
    config = l0_config or (gated.l0_config if is_patched(gated) else args.resolved_l0_config())
    with torch.device("meta"):
        skeleton = type(gated)(copy.deepcopy(gated.config))
    patch_model(skeleton, config)
    get_gates(skeleton).to_empty(device="cpu")  # sizes need the gates' shapes only, never a weight
    check_cost_arguments(skeleton, args)
    if getattr(args, "target_metric", "params") == "latency" and args.latency_table is None:
        from ..cost.latency import latency_table

        table = latency_table(
            gated, batch_size=args.cost_batch_size, seq_len=args.cost_seq_len, threads=args.cost_threads
        )
        args = copy.copy(args)
        args.latency_table = table.path
    cost_target_from_args(skeleton, args)
    if num_train_examples is not None:
        steps = training_steps(args, num_train_examples)
        search = search_steps(steps, args.recovery_ratio)
        warmup = args.sparsity_warmup_steps or math.ceil(args.sparsity_warmup_ratio * max(search, 1))
        source = (
            f"sparsity_warmup_steps={args.sparsity_warmup_steps}"
            if args.sparsity_warmup_steps
            else f"sparsity_warmup_ratio={args.sparsity_warmup_ratio}"
        )
        check_schedule(warmup, steps, args.target_text(), source, args.recovery_ratio)


def _keep_outside_params(prepare: Any, outside: Any) -> Any:
    """``accelerator.prepare`` for FSDP2: accelerate swaps every optimizer parameter for the model's sharded one, found
    by name in the model, and fails on the multipliers (and layer maps), which are not in the model. They stay plain
    replicated tensors (every rank computes the same expected sparsity from the gathered gates, hence the same
    gradient): take them out of the optimizer while the model is sharded and put them back."""

    def wrapped(*objects: Any, **kwargs: Any) -> Any:
        ids = outside()
        stashed: dict[int, list[list[Any]]] = {}  # position in objects -> each group's original params
        for i, obj in enumerate(objects):
            if isinstance(obj, torch.optim.Optimizer):
                stashed[i] = [group["params"] for group in obj.param_groups]
                for group in obj.param_groups:
                    group["params"] = [p for p in group["params"] if id(p) not in ids]
        result = prepare(*objects, **kwargs)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for i, groups in stashed.items():
            # the prepared optimizer may hold new group dicts (accelerate reloads its state): restore by position
            for group, params in zip(getattr(outputs[i], "optimizer", outputs[i]).param_groups, groups):
                kept = iter(group["params"])  # the sharded replacements, in order
                group["params"] = [p if id(p) in ids else next(kept) for p in params]
        return result

    return wrapped


def _check_gates_in_checkpoint(checkpoint: str, gate_names: set[str]) -> None:
    weights = os.path.join(checkpoint, "model.safetensors")
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(weights):
        with safe_open(weights, framework="pt") as f:
            keys = list(f.keys())
    elif os.path.isfile(index):
        with open(index) as f:
            keys = list(json.load(f)["weight_map"])
    else:
        return  # let the Trainer report the missing weights
    if not any(k.startswith(f"{GATES_ATTR}.") for k in keys):
        raise ValueError(
            f"{checkpoint} holds no L0 gates (no {GATES_ATTR}.* tensors): it is not an L0Trainer "
            "checkpoint; start a new run instead of resuming from it."
        )
    saved = {k.split(".")[1] for k in keys if k.startswith(f"{GATES_ATTR}.")}
    if saved != gate_names:
        # The Trainer would load the overlap and drop the rest without an error: the run would not continue exactly.
        raise ValueError(
            f"{checkpoint} was trained with the gates {sorted(saved)}, this run has {sorted(gate_names)}: resume "
            "with the structures it was started with (--l0_structures / --l0_config; whole-sublayer gates, "
            "'attention_layers' / 'ffn_layers', are the 'layers' structure, off by default)."
        )
