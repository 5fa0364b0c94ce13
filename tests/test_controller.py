"""The sparsity controller on its own (no final snap, no calibration): it keeps the deterministic sparsity on the
warm-up schedule and lands on the target, in L0Trainer and in a plain loop alike."""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from conftest import gated_gpt2
from datasets import Dataset
from helpers import log_alphas
from transformers import TrainerCallback

import hf_l0
from hf_l0.cost.flops import FlopsTarget
from hf_l0.training.lagrangian import (
    GateClamp,
    LagrangianController,
    _bisect_shift,
    l0_param_groups,
    param_group_indices,
    parameter_sparsity,
    snap_to_target,
)
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

VOCAB = 101
STEPS = 150
BAND = 0.03  # |deterministic sparsity - scheduled target| allowed after the first 10% of the steps
# This random task leaves most units useless, so the gates crowd and move together: the default rate for a 75-step
# warm-up (0.33) makes them cross a whole head's share per step; 0.1 lets the band measure the controller.
GATE_LR = 0.1


def _model() -> tf.BertForSequenceClassification:
    # 4 layers x 8 heads x 256 neurons: one head is 1% of the prunable parameters, so a 0.03 band is a real bound
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=8,
        intermediate_size=256,
        max_position_embeddings=32,
        num_labels=3,
    )
    return tf.BertForSequenceClassification(config)


def _dataset(n: int = 512) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (n, 12), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": (ids[:, 0] % 3).tolist()}
    )


class _Trajectory(TrainerCallback):
    """(step, scheduled target, deterministic sparsity) every 10 steps, as the trainer logs them."""

    def __init__(self) -> None:
        self.trainer: L0Trainer | None = None
        self.points: list[tuple[int, float, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % 10 == 0:
            model = self.trainer._gated_model()
            deterministic = float(hf_l0.deterministic_sparsity(model))
            self.points.append((state.global_step, self.trainer.controller.target(state.global_step), deterministic))


def _train(output_dir, target: float, controller: str) -> tuple[L0Trainer, list[tuple[int, float, float]]]:
    torch.set_num_threads(1)
    args = L0TrainingArguments(
        output_dir=str(output_dir),
        target_sparsity=target,
        l0_structures="heads,ffn",
        max_steps=STEPS,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        sparsity_controller=controller,
        sparsity_final_phase_ratio=0.0,
        sparsity_calibration_rate=0.0,
        recovery_ratio=0.0,  # the whole run follows the schedule: the band is measured over all of it
        gate_learning_rate=GATE_LR,
    )
    trajectory = _Trajectory()
    trainer = L0Trainer(model=_model(), args=args, train_dataset=_dataset(), callbacks=[trajectory])
    trajectory.trainer = trainer
    trainer.train()
    return trainer, trajectory.points


def _worst_gap(points: list[tuple[int, float, float]]) -> float:
    return max(abs(deterministic - target) for step, target, deterministic in points if step >= 0.1 * STEPS)


_RUNS: dict[float, tuple[L0Trainer, list[tuple[int, float, float]]]] = {}


def _pi_run(tmp_path_factory, target: float) -> tuple[L0Trainer, list[tuple[int, float, float]]]:
    if target not in _RUNS:  # the custom-loop comparison reuses the 0.5 run
        _RUNS[target] = _train(tmp_path_factory.mktemp("pi"), target, "pi")
    return _RUNS[target]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_pi_controller_tracks_the_schedule_and_lands_on_the_target(tmp_path_factory, target):
    trainer, points = _pi_run(tmp_path_factory, target)
    assert _worst_gap(points) <= BAND, points
    final = float(hf_l0.deterministic_sparsity(trainer._gated_model()))
    assert abs(final - target) <= 0.02, final


def test_gradient_ascent_controller_leaves_the_schedule(tmp_path):
    # CoFi's multiplier update (today's ``ascent``) on the same run: the band test above must be able to fail
    _, points = _train(tmp_path, 0.5, "ascent")
    assert _worst_gap(points) > BAND, points


def test_custom_loop_and_trainer_share_the_controller(tmp_path_factory):
    target = 0.5
    trainer, _ = _pi_run(tmp_path_factory, target)
    torch.manual_seed(0)
    model = _model()
    hf_l0.patch_model(model, hf_l0.L0Config(heads=True, ffn=True, layers=True))
    model.train()
    controller = LagrangianController(target, warmup_steps=trainer.controller.warmup_steps, gate_learning_rate=GATE_LR)
    optimizer = torch.optim.AdamW(l0_param_groups(model, controller, lr=1e-3, gate_lr=GATE_LR))
    loader = torch.utils.data.DataLoader(_dataset().with_format("torch"), batch_size=16, shuffle=True)
    step = 0
    while step < STEPS:
        for batch in loader:
            controller.on_step(model, step, STEPS)
            loss = model(**batch).loss + controller(hf_l0.expected_sparsity(model))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == STEPS:
                break
    reached = controller.finish(model)
    assert abs(reached - target) <= 0.02
    assert abs(reached - float(hf_l0.deterministic_sparsity(trainer._gated_model()))) <= 0.02


def test_on_step_updates_the_multiplier_once_per_step_and_state_round_trips():
    model = _model()
    hf_l0.patch_model(model, hf_l0.L0Config(heads=True, ffn=True, layers=True))
    controller = LagrangianController(0.5, warmup_steps=10)
    controller.on_step(model, 5)  # dense model, target 0.25: sparsity below the schedule -> lambda_1 < 0
    first = controller.lambda_1.item()
    assert first < 0
    controller.on_step(model, 5)  # the same step again (another micro-batch): no second update
    assert controller.lambda_1.item() == first
    controller.on_step(model, 6)
    assert controller.lambda_1.item() < first  # the integral keeps pulling while the gap stays
    restored = LagrangianController(0.5, warmup_steps=10)
    restored.load_state_dict(controller.state_dict())
    assert restored.lambda_1.item() == controller.lambda_1.item()
    assert float(restored.integral) == float(controller.integral) and int(restored.updated_step) == 6
    assert not any(p.requires_grad for p in controller.parameters())  # pi: no optimizer touches the multipliers


def test_trainer_writes_the_sparsity_trajectory(tmp_path_factory):
    trainer, points = _pi_run(tmp_path_factory, 0.5)
    out = Path(trainer.args.output_dir)
    summary = json.loads((out / "sparsity_trajectory.json").read_text())
    assert [row["step"] for row in summary["rows"]] == [step for step, _, _ in points]  # one row per log, every 10
    for row, (_step, target, deterministic) in zip(summary["rows"], points):
        assert row["target_sparsity"] == pytest.approx(target) and row["deterministic_sparsity"] == pytest.approx(
            deterministic
        )
    assert summary["max_gap_after_10_percent"] == pytest.approx(_worst_gap(points))
    assert (out / "sparsity_trajectory.png").stat().st_size > 10_000


class _LaggingPlant:
    """A stand-in for the gates' response, driven through the controller's ``metric`` hook: the sparsity follows the
    multiplier's push with a lag of a few steps, closing is five times easier than reopening (a closed gate's penalty
    gradient vanishes), and every further structure is harder to close than the last (it matters more to the task)."""

    learning_rate = 0.1  # the gates' rate the controller's gains are divided by

    def __init__(self) -> None:
        self.sparsity, self.velocity = 0.0, 0.0

    def measure(self, model: torch.nn.Module | None, deterministic: bool) -> torch.Tensor:
        return torch.tensor(self.sparsity)

    def respond(self, push: float) -> None:
        gain = (0.005 if push < 0 else 0.001) / (1.0 + 4.0 * self.sparsity)
        self.velocity += (-gain * push - self.velocity) / 4.0
        self.sparsity = min(max(self.sparsity + self.velocity, 0.0), 1.0)


def test_anti_windup_stops_the_overshoot_after_the_warmup():
    # The integral that kept the sparsity on the ramp carries it past the target when the ramp ends; emptying it
    # as soon as it pushes against the error keeps the run in the band.
    plain_gap, plain_overshoot = _drive(_LaggingPlant(), 0.5, 200, 100, anti_windup=False)
    gap, overshoot = _drive(_LaggingPlant(), 0.5, 200, 100, anti_windup=True)
    assert plain_gap > BAND and plain_overshoot > BAND, (plain_gap, plain_overshoot)
    assert gap <= BAND and overshoot <= BAND, (gap, overshoot)


class _ResistingPlant:
    """A unit plant whose sparsity settles, with a lag, at ``-push / stiffness``: the task reopens gates unless the
    multiplier keeps pushing, so holding any target needs a lasting push, which only the integral term supplies
    (the proportional term alone settles where its push balances the error, well below the target)."""

    learning_rate = 0.1

    def __init__(self, stiffness: float = 30.0, lag: float = 4.0) -> None:
        self.sparsity, self.stiffness, self.lag = 0.0, stiffness, lag

    def measure(self, model: torch.nn.Module | None, deterministic: bool) -> torch.Tensor:
        return torch.tensor(self.sparsity)

    def respond(self, push: float) -> None:
        settled = min(max(-push / self.stiffness, 0.0), 1.0)
        self.sparsity += (settled - self.sparsity) / self.lag


def test_anti_windup_keeps_the_integral_that_holds_the_target():
    # Anti-windup empties the integral only when it pushes against the error; the integral that works with the error
    # is what holds the target against the task's pull (emptying that one leaves the proportional term's offset).
    gap, _ = _drive(_ResistingPlant(), 0.5, 200, 100)
    proportional_only, _ = _drive(_ResistingPlant(), 0.5, 200, 100, integral_gain=0.0)
    assert gap <= BAND < proportional_only, (gap, proportional_only)


def test_anti_windup_empties_the_integral_only_when_it_pushes_against_the_error_after_the_warmup():
    level = torch.tensor(0.0)
    controller = LagrangianController(
        0.5, warmup_steps=10, gate_learning_rate=0.1, metric=lambda model, deterministic: level
    )
    near = 0.01  # within the integral separation: every error here is integrated
    cases = [  # (step, measured - scheduled target, integral before, emptied first)
        (20, near, -1.0, True),  # above the target, the integral pushes the sparsity up: against the error
        (21, near, 1.0, False),  # above the target, the integral pushes it down: with the error
        (22, -near, 1.0, True),
        (23, -near, -1.0, False),
        (5, near, -1.0, False),  # on the ramp the integral is kept whatever its sign
    ]
    for step, error, before, emptied in cases:
        level.fill_(controller.target(step) + error)
        controller.integral.fill_(before)
        controller.on_step(None, step)
        kept = 0.0 if emptied else before
        assert float(controller.integral) == pytest.approx(kept + controller.integral_gain * error), (step, before)


def test_integral_separation_integrates_only_near_the_schedule():
    far, near = 0.2, 0.01  # measured sparsity below a fixed target of 0.5 by these
    for separation, far_integrates in ((0.03, False), (0.0, True)):
        level = torch.tensor(0.5 - far)
        controller = LagrangianController(
            0.5, gate_learning_rate=0.1, integral_separation=separation, metric=lambda model, det, level=level: level
        )
        controller.on_step(None, 0)
        assert (float(controller.integral) != 0.0) == far_integrates, separation
        assert controller.lambda_1.item() == pytest.approx(
            (controller.proportional_gain * -far + float(controller.integral)) / 0.1
        )
        level.fill_(0.5 - near)
        before = float(controller.integral)
        controller.on_step(None, 1)
        assert float(controller.integral) == pytest.approx(before - controller.integral_gain * near)


class _SaturatedGates:
    """Gates that start all open, where P(z != 0) is near 1 and the sparsity barely responds, descending at Adam's
    pace (the same step for every gate whatever the push): a dead time, then many gates cross together."""

    def __init__(self, num_gates: int = 64, learning_rate: float = 0.1) -> None:
        self.log_alpha = torch.linspace(4.6, 3.6, num_gates)
        self.optimizer_state = (torch.zeros(num_gates), torch.zeros(num_gates), 0)
        self.learning_rate = learning_rate

    def sparsity(self) -> float:
        return float(1 - torch.sigmoid(self.log_alpha + 1.6).mean())

    def measure(self, model: torch.nn.Module | None, deterministic: bool) -> torch.Tensor:
        return torch.tensor(self.sparsity())

    def respond(self, push: float) -> None:
        lambda_1 = push / self.learning_rate
        keep = torch.sigmoid(self.log_alpha + 1.6)
        grad = (0.01 - lambda_1) * keep * (1 - keep)  # the task resists a little, the penalty pushes
        m, v, t = self.optimizer_state
        m, v, t = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad * grad, t + 1
        self.optimizer_state = (m, v, t)
        step = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        self.log_alpha = (self.log_alpha - self.learning_rate * step).clamp(-4.6, 4.6)


def _drive(
    plant: _LaggingPlant | _ResistingPlant | _SaturatedGates,
    target: float,
    steps: int,
    warmup: int,
    **controller_options: Any,
) -> tuple[float, float]:
    """Largest gap to the schedule after the first 10% of the steps, and the largest overshoot after the warm-up, of
    ``plant`` under the controller (the plant reads the multiplier's push, ``lambda_1 * gate_learning_rate``)."""
    controller = LagrangianController(
        target, warmup_steps=warmup, gate_learning_rate=plant.learning_rate, metric=plant.measure, **controller_options
    )
    gap = overshoot = 0.0
    for step in range(steps):
        controller.on_step(None, step, steps)
        plant.respond(controller.lambda_1.item() * controller.gate_learning_rate)
        sparsity = float(plant.measure(None, True))
        if step >= 0.1 * steps:
            gap = max(gap, abs(sparsity - controller.target(step)))
        if step >= warmup:
            overshoot = max(overshoot, sparsity - target)
    return gap, overshoot


def test_integral_separation_stops_the_windup_of_the_dead_time():
    # An integral that runs through the start-up dead time carries the sparsity far past the schedule once the gates
    # cross; integrating only near the schedule leaves that to the proportional term, which turns at the crossing.
    plain, _ = _drive(_SaturatedGates(learning_rate=25 / 150), 0.75, 300, 150, integral_separation=0.0)
    separated, _ = _drive(_SaturatedGates(learning_rate=25 / 150), 0.75, 300, 150, integral_separation=0.03)
    assert plain > 2 * separated, (plain, separated)


def test_calibration_integrates_the_deterministic_gap_after_the_warmup_within_bounds():
    controller = LagrangianController(0.6, warmup_steps=10, calibration_rate=0.5, multiplier_update="ascent")
    controller.calibrate(0.2, step=9)  # on the ramp: nothing moves
    assert float(controller.target_offset) == 0.0
    controller.calibrate(0.5, step=10)  # 0.5 * (0.6 - 0.5)
    assert float(controller.target_offset) == pytest.approx(0.05, abs=1e-12)
    controller.calibrate(0.7, step=11)  # integral: 0.05 + 0.5 * (0.6 - 0.7)
    assert float(controller.target_offset) == pytest.approx(0.0, abs=1e-12)
    assert controller.effective_target(11) == pytest.approx(0.6)
    controller.calibrate(0.4, step=12)
    assert controller.effective_target(12) == pytest.approx(0.7)
    controller.set_step(5)  # without a step the controller's own count decides
    controller.calibrate(0.0)
    assert float(controller.target_offset) == pytest.approx(0.1, abs=1e-12)
    controller.set_step(10)
    controller.calibrate(0.5)
    assert float(controller.target_offset) == pytest.approx(0.15, abs=1e-12)
    # the offset stays within [-target, 0.999 - target]: the effective target remains a sparsity
    for _ in range(20):
        controller.calibrate(0.0, step=20)
    assert float(controller.target_offset) == pytest.approx(0.999 - 0.6, abs=1e-12)
    for _ in range(40):
        controller.calibrate(1.0, step=20)
    assert float(controller.target_offset) == pytest.approx(-0.6, abs=1e-12)
    off = LagrangianController(0.6, calibration_rate=0.0)
    off.calibrate(0.0, step=100)
    assert float(off.target_offset) == 0.0


def test_the_ascent_controller_calibrates_once_per_step_in_on_step():
    level = torch.tensor(0.5)
    controller = LagrangianController(
        0.6, warmup_steps=2, calibration_rate=0.5, multiplier_update="ascent", metric=lambda model, det: level
    )
    controller.on_step(None, 1)  # on the ramp
    assert float(controller.target_offset) == 0.0
    controller.on_step(None, 2)
    controller.on_step(None, 2)  # another micro-batch of the same step
    assert float(controller.target_offset) == pytest.approx(0.05, abs=1e-12)
    pi = LagrangianController(0.6, calibration_rate=0.5, metric=lambda model, det: level)
    pi.on_step(None, 5)  # the PI rule measures the deterministic sparsity itself: no calibration
    assert float(pi.target_offset) == 0.0


def test_config_dict_names_every_setting_and_rebuilds_the_controller():
    settings = {
        "target_sparsity": 0.7,
        "warmup_steps": 11,
        "start_sparsity": 0.1,
        "calibration_rate": 0.2,
        "multiplier_update": "ascent",
        "proportional_gain": 3.0,
        "integral_gain": 4.0,
        "gate_learning_rate": 0.5,
        "final_phase_ratio": 0.25,
        "recovery_ratio": 0.3,
        "final_temperature": 0.2,
        "error_signal": "expected",
        "anti_windup": False,
        "integral_separation": 0.07,
    }
    controller = LagrangianController(**settings)
    assert controller.config_dict() == settings
    assert LagrangianController(**controller.config_dict()).config_dict() == settings
    defaults = inspect.signature(LagrangianController).parameters
    assert LagrangianController(0.5).config_dict() == {
        name: 0.5 if name == "target_sparsity" else defaults[name].default for name in settings
    }


def test_the_penalty_follows_the_step_it_is_given_and_step_advances_the_schedule():
    controller = LagrangianController(0.8, warmup_steps=10)
    controller.lambda_1.data.fill_(2.0)
    controller.lambda_2.data.fill_(3.0)
    expected = torch.tensor(0.5)
    for step, target in ((5, 0.4), (10, 0.8)):
        gap = 0.5 - target
        assert float(controller(expected, step)) == pytest.approx(2.0 * gap + 3.0 * gap * gap)
        assert float(controller.penalty(expected, step)) == pytest.approx(2.0 * gap + 3.0 * gap * gap)
    assert controller.target() == 0.0
    controller.step()
    controller.step(2)
    assert int(controller.num_steps) == 3 and controller.target() == pytest.approx(0.8 * 3 / 10)
    gap = 0.5 - 0.24
    assert float(controller(expected)) == pytest.approx(2.0 * gap + 3.0 * gap * gap)


def test_parameter_sparsity_and_measure_default_to_the_differentiable_expected_sparsity():
    model = gated_gpt2()
    expected, deterministic = hf_l0.expected_sparsity(model).item(), hf_l0.deterministic_sparsity(model).item()
    assert expected != deterministic
    default = parameter_sparsity(model)
    assert default.requires_grad and default.item() == expected
    assert parameter_sparsity(model, deterministic=True).item() == deterministic
    controller = LagrangianController(0.5)
    assert controller.measure(model).requires_grad and controller.measure(model).item() == expected
    assert controller.measure(model, deterministic=True).item() == deterministic
    flags = []
    with_metric = LagrangianController(0.5, metric=lambda model, deterministic: flags.append(deterministic))
    with_metric.measure(model)
    with_metric.measure(model, deterministic=True)
    assert flags == [False, True]


def test_stats_report_the_penalty_value_at_the_step_they_are_given():
    controller = LagrangianController(0.8, warmup_steps=10)
    controller.lambda_1.data.fill_(2.0)
    controller.lambda_2.data.fill_(3.0)
    controller.target_offset.fill_(0.05)
    controller.set_step(2)  # the controller's own count would give another target
    target = 0.8 * 5 / 10
    gap = 0.6 - (target + 0.05)
    assert controller.stats(torch.tensor(0.6), step=5) == pytest.approx(
        {
            "expected_sparsity": 0.6,
            "target_sparsity": target,
            "lambda_1": 2.0,
            "lambda_2": 3.0,
            "lagrangian_loss": 2.0 * gap + 3.0 * gap * gap,
            "target_offset": 0.05,
        }
    )
    own_gap = 0.6 - (0.8 * 2 / 10 + 0.05)
    assert controller.stats(0.6)["lagrangian_loss"] == pytest.approx(2.0 * own_gap + 3.0 * own_gap * own_gap)
    controller.frozen_step.fill_(4)  # recovery: the loss has no Lagrangian term, and the log says so
    assert controller.stats(0.6)["lagrangian_loss"] == 0.0 == float(controller.penalty(torch.tensor(0.6)))


def test_the_effective_target_stays_between_zero_and_0_999_whatever_the_offset():
    controller = LagrangianController(0.8)
    controller.target_offset.fill_(0.5)  # e.g. restored from a run with another target
    assert controller.effective_target() == 0.999
    controller.target_offset.fill_(-0.9)
    assert controller.effective_target() == 0.0


def test_calibration_at_rate_one_moves_the_offset_by_the_whole_gap():
    controller = LagrangianController(0.6, calibration_rate=1.0, multiplier_update="ascent")
    controller.calibrate(0.5, step=0)
    assert float(controller.target_offset) == pytest.approx(0.6 - 0.5, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_penalty_takes_the_multipliers_dtype_in_both_stages(dtype):
    controller = LagrangianController(0.5).to(dtype)
    controller.lambda_1.data.fill_(1.0)
    other = torch.float64 if dtype == torch.float32 else torch.float32
    sparsity = torch.tensor(0.3, dtype=other)  # a FLOPs target measures in float64
    assert controller.penalty(sparsity).dtype == dtype
    controller.frozen_step.fill_(4)
    frozen = controller.penalty(sparsity)
    assert frozen.dtype == dtype and frozen.item() == 0.0 and not frozen.requires_grad


@pytest.mark.parametrize(
    "warmup_steps, recovery_ratio, final_phase_ratio",
    [(2, 0.0, 0.25), (15, 0.0, 0.25), (17, 0.0, 0.25), (2, 0.2, 0.25), (2, 0.0, 0.0)],
)
def test_final_phase_is_the_last_share_of_the_search_and_starts_no_earlier_than_the_warmup_end(
    warmup_steps, recovery_ratio, final_phase_ratio
):
    max_steps = 20
    controller = LagrangianController(
        0.5, warmup_steps, final_phase_ratio=final_phase_ratio, recovery_ratio=recovery_ratio
    )
    search = max_steps - round(recovery_ratio * max_steps)
    # (1 - ratio) * search is a whole step in every case (15, or 12 of a 16-step search): the phase starts on it
    first = max(warmup_steps, math.ceil((1 - final_phase_ratio) * search)) if final_phase_ratio else search
    in_phase = [step for step in range(max_steps + 2) if controller.in_final_phase(step, max_steps)]
    assert in_phase == list(range(first, search))


def test_a_repeated_call_for_the_same_step_returns_the_first_measurement_and_moves_nothing():
    level = torch.tensor(0.2)
    controller = LagrangianController(0.5, gate_learning_rate=0.1, metric=lambda model, deterministic: level)
    first = controller.on_step(None, 3)
    assert first == pytest.approx({"expected_sparsity": 0.2, "deterministic_sparsity": 0.2})
    multiplier = controller.lambda_1.item()
    level.fill_(0.4)  # another micro-batch of step 3: nothing is measured again
    assert controller.on_step(None, 3) is first
    assert controller.lambda_1.item() == multiplier


def test_a_restored_controller_measures_at_the_step_it_saved_without_updating_again():
    level = torch.tensor(0.2)
    controller = LagrangianController(0.5, metric=lambda model, deterministic: level)
    controller.on_step(None, 3)
    restored = LagrangianController(0.5, metric=lambda model, deterministic: level)
    restored.load_state_dict(controller.state_dict())
    level.fill_(0.3)
    assert restored.on_step(None, 3) == pytest.approx({"expected_sparsity": 0.3, "deterministic_sparsity": 0.3})
    assert restored.lambda_1.item() == controller.lambda_1.item()
    assert float(restored.integral) == float(controller.integral)


def test_on_step_checks_the_schedule_at_the_first_step_only():
    controller = LagrangianController(0.5, warmup_steps=2, metric=lambda model, deterministic: torch.tensor(0.0))
    checked = []
    check = controller.check_schedule
    controller.check_schedule = lambda max_steps: checked.append(max_steps) or check(max_steps)
    for step in range(4):
        controller.on_step(None, step, 10)
    assert checked == [10]


def test_gate_clamp_refuses_an_empty_range_and_clamps_both_ends():
    model = gated_gpt2()
    for low, high in ((1.0, 1.0), (2.0, -2.0)):
        with pytest.raises(ValueError) as refused:
            GateClamp(model, low, high)
        assert str(refused.value) == f"log_alpha clamp range ({low}, {high}) is empty."
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.copy_(torch.linspace(-10.0, 10.0, gate.log_alpha.numel()).reshape(gate.log_alpha.shape))
    before = log_alphas(model)
    GateClamp(model, -2.0, 3.0)()
    for name, log_alpha in log_alphas(model).items():
        assert torch.equal(log_alpha, before[name].clamp(-2.0, 3.0)), name
        assert log_alpha.min().item() == -2.0 and log_alpha.max().item() == 3.0, name


def test_param_group_indices_finds_the_named_groups_and_names_the_unknown_ones():
    model = gated_gpt2()
    optimizer = torch.optim.AdamW(l0_param_groups(model, LagrangianController(0.5), lr=1e-3, gate_lr=0.1))
    assert param_group_indices(optimizer, "gates", "multipliers") == [2, 3]
    with pytest.raises(ValueError) as refused:
        param_group_indices(optimizer, "gates", "lora", "bias")
    assert str(refused.value) == (
        "unknown param group names ['bias', 'lora']; the groups are weights, weights_no_decay, gates, multipliers, "
        "layer_maps."
    )


@pytest.mark.parametrize("layers", [False, True])
def test_snap_to_target_pins_the_metric_it_is_given_not_the_parameter_sparsity(layers):
    model = gated_gpt2(layers)
    metric = FlopsTarget(16)
    by_parameters = copy.deepcopy(model)
    snap_to_target(by_parameters, 0.5)
    reached = snap_to_target(model, 0.5, measure=metric)
    assert reached == metric(model, True).item()
    assert abs(reached - 0.5) < abs(metric(by_parameters, True).item() - 0.5)


@pytest.mark.parametrize("layers, bisections", [(False, 1), (True, 2)])
def test_the_snap_bisects_the_fine_gates_again_only_when_there_are_sublayer_gates(layers, bisections):
    # every measurement of a FLOPs or latency metric walks the model: with unit gates only the second bisection
    # would shift the very gates the first one did
    model = gated_gpt2(layers)
    flags = []

    def measure(model, deterministic):
        flags.append(deterministic)
        return parameter_sparsity(model, deterministic)

    iterations = 5
    snap_to_target(model, 0.5, iterations=iterations, measure=measure)
    assert len(flags) == bisections * (iterations + 2) and all(flags)  # shift 0, each midpoint, the best shift


@pytest.mark.parametrize("target, closest", [(0.5, 0.5), (0.45, 0.5), (0.35, 0.3), (0.62, 0.7)])
def test_bisect_shift_picks_the_closest_sparsity_and_keeps_the_first_shift_that_reaches_it(target, closest):
    shift = torch.zeros(())

    def staircase(model, deterministic):  # falls as the shift grows: 0.5 on [0.5, 1.5]
        value = float(shift)
        return torch.tensor(0.7 if value < 0.5 else 0.5 if value <= 1.5 else 0.3)

    assert _bisect_shift(None, [shift], target, 20.0, 40, staircase) == pytest.approx(closest)
    if closest == 0.5:
        # the first midpoint on the step (1.25), not the one the bisection ends on at the step's edge, where the
        # least change of a gate flips a structure
        assert 0.5 + 0.25 <= float(shift) <= 1.5 - 0.25


def test_l0_param_groups_give_each_group_its_rate_and_decay():
    model = gated_gpt2()
    controller, maps = LagrangianController(0.5), torch.nn.Linear(3, 3)

    def settings(groups):  # every key but the parameters
        return [{k: v for k, v in group.items() if k != "params"} for group in groups]

    groups = l0_param_groups(model, controller, lr=None, gate_lr=0.5, layer_maps=maps)
    assert settings(groups) == [
        {"name": "weights", "weight_decay": 0.0},  # lr=None: the optimizer's default rate
        {"name": "weights_no_decay", "weight_decay": 0.0},
        {"name": "gates", "lr": 0.5, "weight_decay": 0.0, "betas": (0.0, 0.999)},
        {"name": "multipliers", "lr": 0.0, "weight_decay": 0.0},
        {"name": "layer_maps", "weight_decay": 0.0},
    ]
    gates = {id(g.log_alpha) for g in hf_l0.get_gates(model).gates.values()}
    assert {id(p) for p in groups[2]["params"]} == gates and groups[4]["params"] == list(maps.parameters())
    assert groups[3]["params"] == list(controller.parameters()) and groups[1]["params"] == []
    decay = {n for n, p in model.named_parameters() if n.endswith(".weight") and id(p) not in gates}
    wrapper = torch.nn.ModuleDict({"module": model})  # as DDP / accelerate wrap the gated model
    groups = l0_param_groups(
        wrapper, controller, 1e-3, 0.5, 0.2, 0.1, None, decay={f"module.{n}" for n in decay}, gated_model=model
    )
    assert settings(groups) == [
        {"name": "weights", "lr": 1e-3, "weight_decay": 0.1},
        {"name": "weights_no_decay", "lr": 1e-3, "weight_decay": 0.0},
        {"name": "gates", "lr": 0.5, "weight_decay": 0.0},  # gate_betas=None: the optimizer's betas
        {"name": "multipliers", "lr": 0.2, "weight_decay": 0.0},
    ]
    named = dict(wrapper.named_parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(named[f"module.{n}"]) for n in decay}
    assert len(groups[1]["params"]) == sum(1 for n, p in model.named_parameters() if n not in decay) - len(gates)


def test_on_step_reports_both_measures_and_the_pi_update_follows_the_chosen_error_signal():
    def metric(model, deterministic):
        return torch.tensor(0.3 if deterministic else 0.2, dtype=torch.float64)

    for signal, measured in (("deterministic", 0.3), ("expected", 0.2)):
        controller = LagrangianController(0.5, error_signal=signal, metric=metric, integral_separation=0.0)
        assert controller.on_step(None, 0) == {"expected_sparsity": 0.2, "deterministic_sparsity": 0.3}
        error = measured - 0.5
        assert float(controller.integral) == pytest.approx(6.0 * error)
        assert controller.lambda_1.item() == pytest.approx((60.0 * error + 6.0 * error) / 0.1, rel=1e-6)


def pi_controller(level: torch.Tensor, integral: float, **settings) -> LagrangianController:
    controller = LagrangianController(0.5, warmup_steps=4, metric=lambda model, deterministic: level, **settings)
    controller.integral.fill_(integral)
    return controller


def test_anti_windup_drops_an_opposing_integral_from_the_last_warmup_step_on_and_not_at_zero_error():
    level = torch.tensor(0.4, dtype=torch.float64)  # below the target of 0.5 once warmed up: error -0.1
    controller = pi_controller(level, 0.5, integral_separation=0.0)
    controller.on_step(None, 4)  # the first step at the full target: the opposing push is dropped
    assert float(controller.integral) == pytest.approx(6.0 * -0.1)
    level.fill_(0.5)  # on target: nothing works against the error, the integral stays
    controller = pi_controller(level, 0.5, integral_separation=0.0)
    controller.on_step(None, 4)
    assert float(controller.integral) == 0.5
    assert controller.lambda_1.item() == pytest.approx(0.5 / 0.1)


def test_integral_separation_still_integrates_an_error_exactly_at_its_bound():
    level = torch.tensor(0.25, dtype=torch.float64)
    controller = pi_controller(level, 0.0, integral_separation=0.25)
    controller.on_step(None, 4)
    assert float(controller.integral) == pytest.approx(6.0 * -0.25)
    controller = pi_controller(level, 0.0, integral_separation=0.2)
    controller.on_step(None, 4)
    assert float(controller.integral) == 0.0


def test_on_step_snaps_the_controllers_metric_in_the_final_phase_and_reports_it():
    model = gated_gpt2(layers=True)
    metric = FlopsTarget(16)
    controller = LagrangianController(0.4, final_phase_ratio=0.5, metric=metric)
    measured = controller.on_step(model, 8, max_steps=10)  # in the final phase: the gates move to the target
    after = metric(model, True).item()
    assert measured == {"expected_sparsity": metric(model).item(), "deterministic_sparsity": after}
    assert abs(after - 0.4) < 0.05 and abs(after - 0.4) < abs(hf_l0.deterministic_sparsity(model).item() - 0.4)


def test_the_warmup_ramps_from_the_start_sparsity():
    controller = LagrangianController(0.6, warmup_steps=10, start_sparsity=0.2)
    assert [controller.target(step) for step in (0, 5, 10, 20)] == pytest.approx([0.2, 0.4, 0.6, 0.6])


def test_the_schedule_check_needs_one_step_and_has_no_recovery_stage_by_default():
    from hf_l0.training.lagrangian import check_schedule

    assert check_schedule(2, 10, "target_sparsity=0.5", "warmup_steps") is None
    assert check_schedule(0, 1, "target_sparsity=0.5", "warmup_steps") is None  # one step is a run
    with pytest.raises(ValueError) as refused:
        check_schedule(0, 0, "target_sparsity=0.5", "warmup_steps")
    assert str(refused.value) == (
        "the run has 0 optimizer steps (num_train_epochs / max_steps / the training data): nothing would train toward "
        "target_sparsity=0.5, and the model would come out pruned untrained. Give the run training steps, or prune a "
        "trained gated model directly with hf_l0.prune_model."
    )


CONTROLLER_REFUSALS = [
    ({"start_sparsity": 0.6}, "start_sparsity=0.6 must lie in [0, target_sparsity=0.5]."),
    ({"warmup_steps": -1}, "warmup_steps=-1 must be >= 0."),
    ({"calibration_rate": -0.1}, "calibration_rate=-0.1 must be >= 0 (0 turns calibration off)."),
    ({"multiplier_update": "adam"}, "multiplier_update='adam': choose one of pi, ascent."),
    ({"integral_gain": -1.0}, "proportional_gain=60.0 and integral_gain=-1.0 must be >= 0."),
    ({"proportional_gain": -1.0}, "proportional_gain=-1.0 and integral_gain=6.0 must be >= 0."),
    ({"gate_learning_rate": 0.0}, "gate_learning_rate=0.0 must be > 0 (the gates' optimizer rate)."),
    ({"final_phase_ratio": 1.0}, "final_phase_ratio=1.0 must lie in [0, 1)."),
    ({"integral_separation": -0.01}, "integral_separation=-0.01 must be >= 0 (0 integrates every error)."),
    ({"error_signal": "both"}, "error_signal='both': choose deterministic or expected."),
    (
        {"recovery_ratio": 1.0},
        "recovery_ratio=1.0 must lie in [0, 1): the fraction of the steps that train the fixed architecture after the "
        "search (0: no recovery stage).",
    ),
]


@pytest.mark.parametrize("settings, message", CONTROLLER_REFUSALS, ids=[next(iter(s)) for s, _ in CONTROLLER_REFUSALS])
def test_the_controller_refuses_each_bad_setting_by_name(settings, message):
    with pytest.raises(ValueError) as refused:
        LagrangianController(0.5, **settings)
    assert str(refused.value) == message


def test_the_controller_accepts_the_edges_of_its_settings():
    for settings in (
        {"start_sparsity": 0.5},  # no ramp: the target from the first step
        {"proportional_gain": 0.0},
        {"proportional_gain": 0.5, "integral_gain": 0.0},
        {"final_phase_ratio": 0.0, "recovery_ratio": 0.0, "integral_separation": 0.0, "calibration_rate": 0.0},
    ):
        LagrangianController(0.5, **settings)


def test_a_recovery_split_may_leave_the_search_a_single_step():
    from hf_l0.training.lagrangian import check_schedule, search_steps

    assert search_steps(10) == 10 and search_steps(10, 0.9) == 1
    assert check_schedule(0, 10, "target_sparsity=0.5", "warmup_steps", recovery_ratio=0.9) is None


@pytest.mark.parametrize("target", [0.0, 1.0, True, "0.5", None])
def test_a_target_sparsity_that_is_not_a_fraction_is_refused_by_name(target):
    from hf_l0.training.lagrangian import check_target_sparsity

    with pytest.raises(ValueError) as refused:
        check_target_sparsity(target)
    assert str(refused.value) == (
        f"target_sparsity={target!r} is impossible: it is the fraction of the prunable (attention + FFN) parameters "
        "to remove and must lie strictly between 0 and 1 (e.g. 0.6)."
    )


def test_a_fresh_controller_saves_integer_step_counters_and_a_float64_integral():
    """What a checkpoint holds: step counters as integers (-1: no update yet, never frozen), the integral in float64
    (a float32 one drifts over thousands of small errors)."""
    state = LagrangianController(0.5).state_dict()
    assert {name: (value.dtype, value.item()) for name, value in state.items() if value.dim() == 0} == {
        "lambda_1": (torch.float32, 0.0),
        "lambda_2": (torch.float32, 0.0),
        "num_steps": (torch.int64, 0),
        "target_offset": (torch.float64, 0.0),
        "integral": (torch.float64, 0.0),
        "updated_step": (torch.int64, -1),
        "frozen_step": (torch.int64, -1),
    }
