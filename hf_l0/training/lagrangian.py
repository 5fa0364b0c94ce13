"""The controller that drives the sparsity along its warm-up schedule to a target (CoFi / Sheared-LLaMA).

Framework-free: it is an ``nn.Module`` holding the multipliers and the schedule, usable from a plain PyTorch or
accelerate loop, and :class:`hf_l0.L0Trainer` uses this very object::

    controller = LagrangianController(0.6, warmup_steps=1000, gate_learning_rate=0.05, final_phase_ratio=0.1)
    optimizer = torch.optim.AdamW(l0_param_groups(model, controller, lr=2e-5, gate_lr=0.05))
    for step, batch in enumerate(loader):
        controller.on_step(model, step, max_steps)  # multiplier update, final-phase snap
        loss = model(**batch).loss + controller(hf_l0.expected_sparsity(model))
        loss.backward(); optimizer.step(); optimizer.zero_grad()
    controller.finish(model)

The penalty is ``lambda_1 * (s - t) + lambda_2 * (s - t) ** 2`` with ``s`` the expected sparsity and ``t`` the target
at the current step (rising linearly from ``start_sparsity`` to ``target_sparsity`` over ``warmup_steps``, then held).
The model and gates *minimize* it; the multipliers follow the constraint, by the PI rule of :meth:`on_step` (default)
or, with ``multiplier_update="ascent"``, by gradient ascent in the training optimizer: torch optimizers reject a
negative learning rate, so a gradient hook on each multiplier negates its gradient and any minimizing optimizer then
climbs on lambda (give them their own param group with no weight decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

from ..cost.size import deterministic_sparsity, expected_sparsity
from ..gates.hard_concrete import GATE_KIND
from ..gates.patch import get_gates

MULTIPLIER_UPDATES = ("pi", "ascent")


def check_target_sparsity(target_sparsity: float) -> float:
    """The one check of a sparsity target (training arguments, controller, the deprecated ``L0Config`` field)."""
    if (
        isinstance(target_sparsity, bool)
        or not isinstance(target_sparsity, (int, float))
        or not 0.0 < target_sparsity < 1.0
    ):
        raise ValueError(
            f"target_sparsity={target_sparsity!r} is impossible: it is the fraction of the prunable "
            "(attention + FFN) parameters to remove and must lie strictly between 0 and 1 (e.g. 0.6)."
        )
    return float(target_sparsity)


def search_steps(max_steps: int, recovery_ratio: float = 0.0) -> int:
    """How many of ``max_steps`` search the mask; the last ``round(recovery_ratio * max_steps)`` train the frozen
    architecture (the recovery stage)."""
    return max_steps - round(recovery_ratio * max_steps)


def restart_at_recovery(
    search_lambda: Callable[[int], float], recovery_lambda: Callable[[int], float], num_search_steps: int
) -> Callable[[int], float]:
    """A learning-rate multiplier (for ``LambdaLR``) that follows ``search_lambda`` over the search and starts
    ``recovery_lambda`` from its step 0 at the first recovery step (``num_search_steps``): the recovery stage gets a
    schedule of its own, as CoFi's fine-tuning stage does. A plain function, so ``LambdaLR.state_dict`` leaves it out
    and a resumed run rebuilds it."""

    def multiplier(step: int) -> float:
        return search_lambda(step) if step < num_search_steps else recovery_lambda(step - num_search_steps)

    return multiplier


def check_schedule(
    warmup_steps: int, max_steps: int, target: str, warmup_source: str, recovery_ratio: float = 0.0
) -> None:
    """Refuse, before any training, a run the schedule cannot serve: no optimizer step at all (the model would come
    out pruned to the target without a single step at that shape), a recovery split that leaves no search or no
    recovery step, or a warm-up that does not end before the search does (the target would be reached only after
    training: the final snap would prune untrained weights, and without it the run would end short of the target).
    ``target`` is the target as the user set it (``target_sparsity=0.6``); ``warmup_source`` names the setting that
    fixed the warm-up."""
    if max_steps <= 0:
        raise ValueError(
            f"the run has {max_steps} optimizer steps (num_train_epochs / max_steps / the training data): nothing "
            f"would train toward {target}, and the model would come out pruned untrained. "
            "Give the run training steps, or prune a trained gated model directly with hf_l0.prune_model."
        )
    search = search_steps(max_steps, recovery_ratio)
    if recovery_ratio > 0 and max_steps < 2:
        raise ValueError(
            f"recovery_ratio={recovery_ratio} splits the run into a search and a recovery stage, but a run of "
            f"{max_steps} optimizer step has room for one stage only. Set recovery_ratio=0 (no recovery stage) or "
            "train longer."
        )
    if recovery_ratio > 0 and (search < 1 or search >= max_steps):
        raise ValueError(
            f"recovery_ratio={recovery_ratio} of {max_steps} steps leaves {search} search and "
            f"{max_steps - search} recovery steps: both stages need at least one step. Choose a ratio between "
            f"{1 / max_steps:.4g} and {1 - 1 / max_steps:.4g}, or 0 for no recovery stage."
        )
    if warmup_steps >= search:
        stage = f"search stage's {search} steps (recovery_ratio={recovery_ratio})" if recovery_ratio > 0 else "run's"
        steps = "" if recovery_ratio > 0 else f" {max_steps} optimizer steps"
        raise ValueError(
            f"{warmup_source} makes the sparsity warm-up {warmup_steps} steps, not shorter than the {stage}{steps}: "
            f"{target} would be reached only after the last search step, with no training at that shape. Make the "
            f"warm-up shorter than {search} steps (e.g. sparsity_warmup_ratio=0.5) or train longer."
        )


def parameter_sparsity(model: nn.Module, deterministic: bool = False) -> torch.Tensor:
    """The default constrained quantity: the expected sparsity of the prunable parameters (differentiable) or, with
    ``deterministic=True``, the sparsity :func:`hf_l0.prune_model` would deliver now."""
    return deterministic_sparsity(model) if deterministic else expected_sparsity(model)


class LagrangianController(nn.Module):
    """Target schedule, the Lagrange multipliers and their update, the penalty term, calibration and final snap.

    ``multiplier_update="pi"`` (default) updates ``lambda_1`` itself, once per optimizer step in :meth:`on_step`, with
    a proportional-integral rule on the measured constraint violation ``e = s - t`` (Sohrabi et al., 2024, "On PI
    controllers for updating Lagrange multipliers"): ``lambda_1 = (kp * e + I) / gate_lr`` with ``I += ki * e``. The
    gains are divided by the gates' learning rate because the gates' response to the multiplier grows with it: one
    pair of gains then serves short runs (fast gates) and long ones (slow gates) alike. The proportional
    term brakes as soon as the sparsity crosses the schedule, where plain gradient ascent keeps pushing until the
    multiplier has wound back down (the overshoot-and-revive cycles of CoFi's controller at short budgets). ``e``
    is measured on the sparsity the run will deliver, the *deterministic* one (what :func:`hf_l0.prune_model`
    keeps), while the gradient reaches the gates through the differentiable *expected* sparsity: the proxy-Lagrangian
    split of constrained learning with non-differentiable constraints (Cotter et al., 2019). The multipliers get no
    gradient and need no optimizer. ``anti_windup`` (default) empties the integral once the warm-up is over whenever
    it pushes against the measured error: on the ramp the integral learns the push that keeps the sparsity moving,
    and at the end of the ramp that push would carry it past the target, where closed structures barely reopen (the
    penalty's gradient on a closed gate vanishes), so the overshoot would stay. ``integral_separation`` (default 0.03)
    integrates only errors within that distance of the schedule ("integral separation"): far from it the
    proportional term alone drives. At the start the gates sit where the expected sparsity barely responds
    (P(z != 0) near 1, and Adam moves every gate at the same pace), so an integral that ran through that dead time
    would carry the sparsity far past the schedule once the gates cross together; near the schedule it removes the
    ramp's lag as before.

    ``multiplier_update="ascent"`` is CoFi's controller: both multipliers are parameters updated by the training
    optimizer by gradient ascent (a hook negates their gradient), kept for comparison.

    ``recovery_ratio`` splits the run in two stages, as CoFi and Sheared-LLaMA do: the *search* (the first
    ``max_steps - round(recovery_ratio * max_steps)`` steps: warm-up, multiplier updates, the final phase) learns the
    mask; at the first recovery step the deterministic sparsity is pinned to the target once more and the gates
    freeze (:meth:`hf_l0.L0Gates.freeze`); the remaining steps train the weights of that fixed architecture with the
    same loss and no penalty. The step it froze at is saved with the multipliers, so a resumed run never snaps again.

    ``final_temperature`` anneals every gate's hard concrete temperature geometrically from the one it was built with
    to this value over the search (recovery steps keep it): lower temperatures draw samples closer to 0 / 1, so late
    in the search the sampled masks the weights train under approach the deterministic mask the run keeps. The
    temperature is a function of the step, set in :meth:`on_step`, so a resumed run takes it up exactly; the gates
    keep the last one (what :func:`hf_l0.prune_model` folds).
    """

    def __init__(
        self,
        target_sparsity: float,
        warmup_steps: int = 0,
        start_sparsity: float = 0.0,
        calibration_rate: float = 0.0,
        *,
        multiplier_update: str = "pi",
        proportional_gain: float = 60.0,
        integral_gain: float = 6.0,
        gate_learning_rate: float = 0.1,
        final_phase_ratio: float = 0.0,
        error_signal: str = "deterministic",
        anti_windup: bool = True,
        integral_separation: float = 0.03,
        metric: Callable[[nn.Module, bool], torch.Tensor] | None = None,
        recovery_ratio: float = 0.0,
        final_temperature: float | None = None,
    ) -> None:
        super().__init__()
        check_target_sparsity(target_sparsity)
        if not 0.0 <= start_sparsity <= target_sparsity:
            raise ValueError(f"start_sparsity={start_sparsity} must lie in [0, target_sparsity={target_sparsity}].")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0.")
        if calibration_rate < 0:
            raise ValueError(f"calibration_rate={calibration_rate} must be >= 0 (0 turns calibration off).")
        if multiplier_update not in MULTIPLIER_UPDATES:
            raise ValueError(f"multiplier_update={multiplier_update!r}: choose one of {', '.join(MULTIPLIER_UPDATES)}.")
        if proportional_gain < 0 or integral_gain < 0:
            raise ValueError(f"proportional_gain={proportional_gain} and integral_gain={integral_gain} must be >= 0.")
        if gate_learning_rate <= 0:
            raise ValueError(f"gate_learning_rate={gate_learning_rate} must be > 0 (the gates' optimizer rate).")
        if not 0.0 <= final_phase_ratio < 1.0:
            raise ValueError(f"final_phase_ratio={final_phase_ratio} must lie in [0, 1).")
        if not 0.0 <= recovery_ratio < 1.0:
            raise ValueError(
                f"recovery_ratio={recovery_ratio} must lie in [0, 1): the fraction of the steps that train the fixed "
                "architecture after the search (0: no recovery stage)."
            )
        if integral_separation < 0:
            raise ValueError(f"integral_separation={integral_separation} must be >= 0 (0 integrates every error).")
        if final_temperature is not None and final_temperature <= 0:
            raise ValueError(
                f"final_temperature={final_temperature} must be > 0 (the hard concrete temperature the search anneals "
                "to; None keeps the gates' own)."
            )
        if error_signal not in ("deterministic", "expected"):
            raise ValueError(f"error_signal={error_signal!r}: choose deterministic or expected.")
        self.calibration_rate = float(calibration_rate)
        self.target_sparsity = float(target_sparsity)
        self.start_sparsity = float(start_sparsity)
        self.warmup_steps = int(warmup_steps)
        self.multiplier_update = multiplier_update
        self.proportional_gain = float(proportional_gain)
        self.integral_gain = float(integral_gain)
        self.gate_learning_rate = float(gate_learning_rate)
        self.final_phase_ratio = float(final_phase_ratio)
        self.recovery_ratio = float(recovery_ratio)
        self.final_temperature = None if final_temperature is None else float(final_temperature)
        self.error_signal = error_signal
        # What the target constrains, as a reduction fraction in (0, 1): metric(model, deterministic) is
        # differentiable in log_alpha when deterministic is False. Parameters by default (the expected sparsity);
        # a FLOPs or latency cost model plugs in here, and the schedule, PI rule and snap follow it unchanged.
        self.metric = metric
        self.anti_windup = bool(anti_windup)
        self.integral_separation = float(integral_separation)
        ascent = multiplier_update == "ascent"
        self.lambda_1 = nn.Parameter(torch.zeros(()), requires_grad=ascent)
        self.lambda_2 = nn.Parameter(torch.zeros(()), requires_grad=ascent)
        if ascent:
            for multiplier in (self.lambda_1, self.lambda_2):
                multiplier.register_hook(torch.neg)  # gradient ascent under any minimizing optimizer (see module doc)
        # Optimizer steps taken so far: the warmup position, saved with the multipliers.
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))
        # Shift of the expected-sparsity target learned by calibrate() (see there), saved with the multipliers.
        self.register_buffer("target_offset", torch.zeros((), dtype=torch.float64))
        # The PI rule's integral term and the step it last ran at (so a repeated call for one step is a no-op).
        self.register_buffer("integral", torch.zeros((), dtype=torch.float64))
        self.register_buffer("updated_step", torch.full((), -1, dtype=torch.int64))
        # The step the gates froze at (the first recovery step), -1 while searching.
        self.register_buffer("frozen_step", torch.full((), -1, dtype=torch.int64))
        self._measured: dict[str, float] | None = None  # what on_step measured for updated_step

    def extra_repr(self) -> str:
        return (
            f"target_sparsity={self.target_sparsity}, warmup_steps={self.warmup_steps}, "
            f"start_sparsity={self.start_sparsity}, multiplier_update={self.multiplier_update!r}"
        )

    def measure(self, model: nn.Module, deterministic: bool = False) -> torch.Tensor:
        """The constrained quantity of ``model``: its expected reduction (differentiable, what the penalty takes) or,
        with ``deterministic=True``, the reduction :func:`hf_l0.prune_model` would deliver now."""
        return (self.metric or parameter_sparsity)(model, deterministic)

    def target(self, step: int | None = None) -> float:
        """The warmed-up target at ``step`` (default: the controller's own step count)."""
        step = int(self.num_steps) if step is None else step
        if self.warmup_steps == 0:
            return self.target_sparsity
        progress = min(1.0, step / self.warmup_steps)
        return self.start_sparsity + (self.target_sparsity - self.start_sparsity) * progress

    def effective_target(self, step: int | None = None) -> float:
        """The target the penalty pulls the *expected* sparsity to: the schedule plus the calibration offset."""
        return min(max(self.target(step) + float(self.target_offset), 0.0), 0.999)

    def search_steps(self, max_steps: int) -> int:
        """How many of ``max_steps`` search the mask; the others train the frozen architecture (recovery)."""
        return search_steps(max_steps, self.recovery_ratio)

    def check_schedule(self, max_steps: int) -> None:
        """Raise a ``ValueError`` naming the fix when the stages do not fit in ``max_steps`` optimizer steps
        (:func:`check_schedule` with this controller's warm-up and split)."""
        check_schedule(
            self.warmup_steps,
            max_steps,
            f"a target of {self.target_sparsity}",
            f"warmup_steps={self.warmup_steps}",
            self.recovery_ratio,
        )

    @property
    def frozen(self) -> bool:
        """Whether the gates froze (the recovery stage has begun)."""
        return int(self.frozen_step) >= 0

    def in_final_phase(self, step: int, max_steps: int) -> bool:
        """Whether ``step`` lies in the final phase of the search, where the deterministic sparsity is pinned to the
        target."""
        ratio, search = self.final_phase_ratio, self.search_steps(max_steps)
        return ratio > 0 and self.warmup_steps <= step < search and step >= (1.0 - ratio) * search

    @torch.no_grad()
    def on_step(self, model: nn.Module, step: int, max_steps: int | None = None) -> dict[str, float]:
        """Everything that happens once per optimizer step, before its forward: the schedule position, the multiplier
        update (PI), calibration and, in the final phase, the snap to the target. Returns the measured sparsities.

        :class:`hf_l0.L0Trainer` calls it at the first micro-batch of every step; a custom loop calls it at the top
        of each step (``max_steps`` is needed only with a final phase). Calling it again for the same step is a no-op.
        """
        if max_steps is not None and int(self.updated_step) < 0:  # the first step: refuse a hopeless schedule
            self.check_schedule(max_steps)
        self.set_step(step)
        if self.final_temperature is not None:
            self.anneal(model, step, max_steps)
        if int(self.updated_step) == step and self._measured is not None:
            return self._measured  # another micro-batch of the same step
        if self.recovery_ratio > 0 and max_steps is not None and step >= self.search_steps(max_steps):
            return self._recover(model, step)
        deterministic = float(self.measure(model, deterministic=True))
        expected = float(self.measure(model))
        if int(self.updated_step) != step:
            self.updated_step.fill_(step)
            if self.multiplier_update == "pi":
                measured = deterministic if self.error_signal == "deterministic" else expected
                error = measured - self.target(step)
                if self.anti_windup and step >= self.warmup_steps and float(self.integral) * error < 0:
                    # The integral carries the push that tracked the ramp; once the target holds, that push only
                    # overshoots, and closed structures hardly reopen (their penalty gradient vanishes): drop it
                    # as soon as it works against the measured error.
                    self.integral.zero_()
                if not self.integral_separation or abs(error) <= self.integral_separation:
                    self.integral += self.integral_gain * error
                self.lambda_1.fill_((self.proportional_gain * error + float(self.integral)) / self.gate_learning_rate)
            if self.multiplier_update == "ascent":  # pi measures the deterministic sparsity itself
                self.calibrate(deterministic, step)
            if max_steps is not None and self.in_final_phase(step, max_steps):
                deterministic = snap_to_target(model, self.target_sparsity, measure=self.metric)
                expected = float(self.measure(model))
        self._measured = {"expected_sparsity": expected, "deterministic_sparsity": deterministic}
        return self._measured

    def temperature(self, initial: float, step: int, max_steps: int) -> float:
        """The annealed temperature at ``step`` of a gate built with ``initial``: geometric from ``initial`` at step 0
        to ``final_temperature`` at the end of the search, constant after it."""
        final = initial if self.final_temperature is None else self.final_temperature
        progress = min(1.0, step / max(self.search_steps(max_steps), 1))
        return initial * (final / initial) ** progress

    def anneal(self, model: nn.Module, step: int, max_steps: int | None) -> None:
        """Set every gate's temperature to its value at ``step`` (see the class docstring)."""
        if max_steps is None:
            raise ValueError(
                "final_temperature anneals over the search, whose length needs max_steps: pass it to on_step."
            )
        for gate in get_gates(model).gates.values():
            gate.temperature = self.temperature(gate.initial_temperature, step, max_steps)

    @torch.no_grad()
    def _recover(self, model: nn.Module, step: int) -> dict[str, float]:
        """A recovery step: at the first one pin the deterministic sparsity to the target and freeze the gates (after
        a resume only freeze them again: their values were saved); then nothing moves."""
        gates = get_gates(model)
        if not self.frozen:
            snap_to_target(model, self.target_sparsity, measure=self.metric)
            self.frozen_step.fill_(step)
        if not gates.frozen:
            gates.freeze()
        self.updated_step.fill_(step)
        deterministic = float(self.measure(model, deterministic=True))
        self._measured = {"expected_sparsity": float(self.measure(model)), "deterministic_sparsity": deterministic}
        return self._measured

    @torch.no_grad()
    def finish(self, model: nn.Module) -> float:
        """After the last optimizer step: pin the deterministic sparsity once more when there is a final phase (the
        last step moved the gates) and no recovery stage (whose architecture is fixed). Returns the deterministic
        sparsity."""
        if self.final_phase_ratio > 0 and not self.frozen:
            return snap_to_target(model, self.target_sparsity, measure=self.metric)
        return float(self.measure(model, deterministic=True))

    @torch.no_grad()
    def calibrate(self, deterministic_sparsity: float, step: int | None = None) -> None:
        """Hold the *deterministic* sparsity at the target once the warmup is over (call once per step).

        The penalty acts on the expected sparsity, but pruning keeps the deterministic gates; they differ while gates
        are not yet polarized (a layer gate with P(z != 0) = 0.6 counts 60% of its layer in the expected size but all
        of it once kept), which is why CoFi runs undershoot on short budgets. This integral feedback moves the
        expected-sparsity target by ``calibration_rate * (target - deterministic)`` per step until they agree.
        """
        step = int(self.num_steps) if step is None else step
        if self.calibration_rate == 0.0 or step < self.warmup_steps:
            return
        offset = float(self.target_offset) + self.calibration_rate * (self.target_sparsity - deterministic_sparsity)
        # bounded: the effective target must stay a sparsity, and a wild offset would only wind up
        self.target_offset.fill_(min(max(offset, -self.target_sparsity), 0.999 - self.target_sparsity))

    def penalty(self, expected_sparsity: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """``lambda_1 (s - t) + lambda_2 (s - t)^2``: add it to the loss (differentiable in gates and multipliers).
        Zero, with no gradient, once the gates froze (the recovery stage)."""
        if self.frozen:
            return torch.zeros((), dtype=self.lambda_1.dtype, device=self.lambda_1.device)
        gap = expected_sparsity.to(self.lambda_1.dtype) - self.effective_target(step)
        return self.lambda_1 * gap + self.lambda_2 * gap * gap

    def forward(self, expected_sparsity: torch.Tensor, step: int | None = None) -> torch.Tensor:
        return self.penalty(expected_sparsity, step)

    def step(self, num_steps: int = 1) -> None:
        """Advance the warmup schedule by ``num_steps`` optimizer steps (call once per optimizer step)."""
        self.num_steps += num_steps

    def set_step(self, step: int) -> None:
        self.num_steps.fill_(int(step))

    def stats(self, expected_sparsity: torch.Tensor | float, step: int | None = None) -> dict[str, float]:
        """Numbers worth logging: expected sparsity, target, both multipliers and the penalty value (0 once the gates
        froze, as :meth:`penalty`: the recovery stage's loss has no Lagrangian term)."""
        value = float(expected_sparsity)
        gap = value - self.effective_target(step)
        lambda_1, lambda_2 = self.lambda_1.item(), self.lambda_2.item()
        return {
            "expected_sparsity": value,
            "target_sparsity": self.target(step),
            "lambda_1": lambda_1,
            "lambda_2": lambda_2,
            "lagrangian_loss": 0.0 if self.frozen else lambda_1 * gap + lambda_2 * gap * gap,
            "target_offset": float(self.target_offset),
        }

    def config_dict(self) -> dict[str, Any]:
        return {
            "target_sparsity": self.target_sparsity,
            "warmup_steps": self.warmup_steps,
            "start_sparsity": self.start_sparsity,
            "calibration_rate": self.calibration_rate,
            "multiplier_update": self.multiplier_update,
            "proportional_gain": self.proportional_gain,
            "integral_gain": self.integral_gain,
            "gate_learning_rate": self.gate_learning_rate,
            "final_phase_ratio": self.final_phase_ratio,
            "recovery_ratio": self.recovery_ratio,
            "final_temperature": self.final_temperature,
            "error_signal": self.error_signal,
            "anti_windup": self.anti_windup,
            "integral_separation": self.integral_separation,
        }


class GateClamp:
    """CoFi's projection of every ``log_alpha`` into ``[low, high]`` after each optimizer step.

    Without it a gate pushed far past 0 or 1 has a vanishing gradient and can hardly come back. Mind the low end:
    at ``log_alpha = low`` a closed gate still counts ``P(z != 0) = sigmoid(low + 1.6)`` in the expected size
    (0.047 for CoFi's ``-log(100)``), so a tight low end makes the deterministic model sparser than expected.
    """

    def __init__(self, model: nn.Module, low: float = -math.log(100.0), high: float = math.log(100.0)) -> None:
        if not low < high:
            raise ValueError(f"log_alpha clamp range ({low}, {high}) is empty.")
        self.params = [gate.log_alpha for gate in get_gates(model).gates.values()]
        self.low, self.high = low, high

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> None:  # also usable as an optimizer step post-hook
        for param in self.params:
            if param.requires_grad:  # a frozen gate (recovery stage) keeps the value it froze at
                param.clamp_(self.low, self.high)


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``log_alpha`` of every gate of a patched model."""
    return [gate.log_alpha for gate in get_gates(model).gates.values()]


# The optimizer's param groups, by name (a group dict's "name" key), in the order they are built.
PARAM_GROUPS = ("weights", "weights_no_decay", "gates", "multipliers", "layer_maps")


def l0_param_groups(
    model: nn.Module,
    controller: LagrangianController,
    lr: float | None,
    gate_lr: float,
    lagrangian_lr: float = 0.0,
    weight_decay: float = 0.0,
    gate_betas: tuple[float, float] | None = (0.0, 0.999),
    *,
    decay: Collection[str] | None = None,
    layer_maps: nn.Module | None = None,
    gated_model: nn.Module | None = None,
) -> list[dict[str, Any]]:
    """The optimizer param groups of L0 training, each named by its ``"name"`` key (see :data:`PARAM_GROUPS`).

    ``weights`` (``lr``, ``weight_decay``) and ``weights_no_decay``: the model's trainable parameters except the
    gates, split by ``decay`` (names as ``model.named_parameters()`` gives them; ``None``: all decay). ``gates``:
    every ``log_alpha`` (``gate_lr``, no decay) with Adam ``betas`` without momentum by default (``gate_betas``;
    ``None`` leaves the optimizer's): with momentum they keep closing after the controller has braked.
    ``multipliers``: the controller's (``lagrangian_lr``, no decay); it matters only for the ``ascent`` controller,
    the ``pi`` controller updates them itself. ``layer_maps`` (optional): the layerwise distiller's maps.
    ``lr=None`` leaves a group's rate to the optimizer's default. ``gated_model`` is the patched model when ``model``
    wraps it (DDP, accelerate). :class:`hf_l0.L0Trainer` builds its optimizer with this function too.
    """
    gates = gate_parameters(model if gated_model is None else gated_model)
    gate_ids = {id(p) for p in gates}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in gate_ids]
    decayed = {n for n, _ in named} if decay is None else set(decay)
    rate = {} if lr is None else {"lr": lr}
    gate_group: dict[str, Any] = {"name": "gates", "params": gates, "lr": gate_lr, "weight_decay": 0.0}
    if gate_betas is not None:
        gate_group["betas"] = tuple(gate_betas)
    groups = [
        {"name": "weights", "params": [p for n, p in named if n in decayed], **rate, "weight_decay": weight_decay},
        {"name": "weights_no_decay", "params": [p for n, p in named if n not in decayed], **rate, "weight_decay": 0.0},
        gate_group,
        {"name": "multipliers", "params": list(controller.parameters()), "lr": lagrangian_lr, "weight_decay": 0.0},
    ]
    if layer_maps is not None:
        groups.append({"name": "layer_maps", "params": list(layer_maps.parameters()), **rate, "weight_decay": 0.0})
    return groups


def param_group_indices(optimizer: torch.optim.Optimizer, *names: str) -> list[int]:
    """Positions of the named groups (see :func:`l0_param_groups`) in ``optimizer.param_groups``."""
    unknown = sorted(set(names) - set(PARAM_GROUPS))
    if unknown:
        raise ValueError(f"unknown param group names {unknown}; the groups are {', '.join(PARAM_GROUPS)}.")
    return [i for i, group in enumerate(optimizer.param_groups) if group.get("name") in names]


@torch.no_grad()
def snap_to_target(
    model: nn.Module,
    target_sparsity: float,
    bound: float = 20.0,
    iterations: int = 40,
    measure: Callable[[nn.Module, bool], torch.Tensor] | None = None,
) -> float:
    """Shift ``log_alpha`` by constants so that the *deterministic* sparsity is as close to the target as the
    granularity allows; returns the sparsity reached.

    The deterministic sparsity falls monotonically as a shift grows (more entries kept per gate tensor, fewer
    survivors at value 0), so bisections find the shifts: first one shift of every gate (which settles the
    whole-sublayer gates), then one of the head / neuron / hidden gates alone, whose finer steps land close to the
    target where a sublayer flipping at the crossing would move the sparsity by a whole layer's share. A common shift
    keeps the order of the gates within each tensor, i.e. which structures the training ranked highest.
    :class:`hf_l0.L0Trainer` applies it in the final phase of training (``sparsity_final_phase_ratio``) so the
    weights adapt to the pinned gates. ``measure(model, deterministic)`` replaces the parameter sparsity by another
    reduction fraction that falls as gates open (FLOPs, latency).
    """
    gates = get_gates(model).gates
    reached = _bisect_shift(model, [g.log_alpha for g in gates.values()], target_sparsity, bound, iterations, measure)
    fine = [gate.log_alpha for name, gate in gates.items() if GATE_KIND[name].level != "sublayer"]
    if fine and len(fine) < len(gates):
        reached = _bisect_shift(model, fine, target_sparsity, bound, iterations, measure)
    return reached


@torch.no_grad()
def _bisect_shift(
    model: nn.Module,
    params: list[nn.Parameter],
    target: float,
    bound: float,
    iterations: int,
    measure: Callable[[nn.Module, bool], torch.Tensor] | None = None,
) -> float:
    measure = measure or parameter_sparsity
    original = [p.detach().clone() for p in params]

    def sparsity_at(shift: float) -> float:
        for p, o in zip(params, original):
            p.copy_(o + shift)
        return float(measure(model, True))

    best_shift, best_error = 0.0, abs(sparsity_at(0.0) - target)
    low, high = -bound, bound  # sparsity(low) is high, sparsity(high) is low
    for _ in range(iterations):
        middle = (low + high) / 2
        reached = sparsity_at(middle)
        if abs(reached - target) < best_error:
            best_shift, best_error = middle, abs(reached - target)
        if reached > target:
            low = middle
        else:
            high = middle
    return sparsity_at(best_shift)
