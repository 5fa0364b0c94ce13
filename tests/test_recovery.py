"""The recovery stage: after the search the gates freeze at their deterministic values and the remaining steps train
the weights of that fixed architecture (CoFi's and Sheared-LLaMA's second stage), in L0Trainer and in a custom loop."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from conftest import TASK_MODELS, VOCAB, gated_gpt2, make_inputs, make_model
from datasets import Dataset
from helpers import log_alphas, max_diff, randomize_, randomize_gates

import hf_l0
from hf_l0 import L0Config, LagrangianController, get_gates
from hf_l0.cost.flops import FlopsTarget
from hf_l0.training.lagrangian import snap_to_target
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

STEPS, RECOVERY, WARMUP = 12, 0.5, 3  # search: steps 0..5, the freeze at step 6, recovery: steps 6..11
FREEZE = STEPS - round(RECOVERY * STEPS)


def dataset(n: int = 96, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, 12), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": (ids[:, 0] % 3).tolist()}
    )


def bert(seed: int = 0, dropout: float = 0.1) -> tf.BertForSequenceClassification:
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return randomize_(tf.BertForSequenceClassification(config), seed)


def trainer(out_dir, model=None, callbacks=None, teacher=None, **kw) -> L0Trainer:
    torch.set_num_threads(1)
    settings = dict(
        output_dir=str(out_dir),
        target_sparsity=0.5,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=STEPS,
        recovery_ratio=RECOVERY,
        sparsity_warmup_steps=WARMUP,
        gate_learning_rate=0.1,
        logging_steps=4,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        l0_structures="heads,ffn",
        seed=0,
        data_seed=0,
    )
    settings.update(kw)
    return L0Trainer(
        model=bert() if model is None else model,
        args=L0TrainingArguments(**settings),
        train_dataset=dataset(),
        callbacks=callbacks,
        teacher_model=teacher,
    )


class Record(tf.TrainerCallback):
    """After every optimizer step: the gates, the multipliers, the deterministic masks, the gate values the last
    training forward used, and one weight matrix."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        gates = get_gates(model)
        record = {f"gate.{k}": v.detach().clone() for k, v in gates.state_dict().items()}
        record.update({f"mask.{k}": v.clone() for k, v in gates.deterministic().items()})
        record.update({f"used.{k}": v.detach().clone() for k, v in gates._values.items()})
        record["weight"] = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
        self.steps[state.global_step] = record


def test_after_the_freeze_no_gate_multiplier_or_mask_changes(tmp_path):
    record = Record()
    run = trainer(tmp_path, callbacks=[record])
    controller_states = {}
    original = run.controller.on_step

    def on_step(model, step, max_steps=None):
        out = original(model, step, max_steps)
        controller_states[step] = {k: v.clone() for k, v in run.controller.state_dict().items()}
        return out

    run.controller.on_step = on_step
    run.train()
    assert int(run.controller.frozen_step) == FREEZE and get_gates(run.model).frozen
    frozen = record.steps[FREEZE + 1]  # after the first recovery step
    searched = record.steps[FREEZE]  # after the last search step
    assert not torch.equal(record.steps[1]["gate.heads.log_alpha"], searched["gate.heads.log_alpha"])  # gates trained
    for step in range(FREEZE + 2, STEPS + 1):
        for key, value in frozen.items():
            if key == "weight":
                assert not torch.equal(value, record.steps[step][key]), step  # the weights still train
            else:
                assert torch.equal(value, record.steps[step][key]), (step, key)
        for key in ("lambda_1", "lambda_2", "integral", "target_offset"):
            assert torch.equal(controller_states[FREEZE][key], controller_states[step - 1][key]), (step, key)
    # every recovery forward used the deterministic values (what prune_model folds), never a sample
    for step in range(FREEZE + 1, STEPS + 1):
        for name, mask in record.steps[step].items():
            if name.startswith("mask."):
                assert torch.equal(record.steps[step][f"used.{name[5:]}"], mask), (step, name)
    # the freeze pinned the deterministic sparsity to the target (one head / neuron of the tiny model)
    assert abs(float(hf_l0.deterministic_sparsity(run.model)) - 0.5) < 0.02
    assert run.state.log_history[-2]["recovery"] == 1.0 and run.state.log_history[0]["recovery"] == 0.0


def test_the_trained_gated_model_in_recovery_computes_what_its_compact_model_computes(tmp_path):
    """Training mode (dropout off) after the freeze: the gated model is the compact model, hidden and sublayer gates
    included, with random biases."""
    run = trainer(
        tmp_path, model=bert(dropout=0.0), l0_structures="heads,ffn,hidden,layers", target_sparsity=0.4, max_steps=10
    )
    run.train()
    inputs = {k: v[:, :12] for k, v in make_inputs(batch=3, length=12).items()}
    model = run.model.train()
    assert get_gates(model).frozen
    with torch.no_grad():
        gated = model(**inputs).logits
    compact = run.compact_model()
    with torch.no_grad():
        pruned = compact(**inputs).logits
    assert compact.num_parameters() < model.num_parameters()
    assert max_diff(gated, pruned, inputs) <= 1e-5


def final_output(model, inputs, keep: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    out = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return out[..., keep] if keep is not None else out  # a bare encoder's pruned hidden dims: compare the kept ones


@pytest.mark.parametrize("family, auto_class", TASK_MODELS)
def test_frozen_gates_in_training_mode_compute_what_the_pruned_model_computes(family, auto_class):
    model = make_model(family, auto_class)
    for module in model.modules():  # training mode must differ from eval mode only through the gates
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    hf_l0.patch_model(model, L0Config(hidden=True, layers=True))
    randomize_gates(model)
    gates = get_gates(model)
    gates.freeze()
    inputs = make_inputs()
    keep = gates.deterministic()["hidden"] != 0 if auto_class == "AutoModel" else None
    gated = final_output(model.train(), inputs, keep)
    assert all(not gate.log_alpha.requires_grad for gate in gates.gates.values())
    pruned = final_output(hf_l0.prune_model(copy.deepcopy(model).eval()), inputs)
    assert max_diff(gated, pruned, inputs) <= 1e-5
    gates.unfreeze()  # sampling again: a training forward is no longer the pruned model
    assert max_diff(final_output(model, inputs, keep), pruned, inputs) > 1e-3


@pytest.mark.parametrize("restart", [False, True], ids=["schedule_continues", "lr_restart"])
@pytest.mark.parametrize("resume_at", [4, 8])  # before the switch (crossed after resuming) and after it
def test_resume_across_the_switch_is_bitwise(tmp_path, resume_at, restart):
    full = trainer(tmp_path / "a", save_strategy="steps", save_steps=4, recovery_lr_restart=restart)
    full.train()
    resumed = trainer(
        tmp_path / "b", model=bert(seed=1), save_strategy="steps", save_steps=4, recovery_lr_restart=restart
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / f"checkpoint-{resume_at}"))
    assert get_gates(resumed.model).frozen and int(resumed.controller.frozen_step) == FREEZE
    for key, value in full.model.state_dict().items():  # gates and weights
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in full.controller.state_dict().items():
        assert torch.equal(value, resumed.controller.state_dict()[key]), key


def learning_rates(run: L0Trainer) -> dict[str, list[float]]:
    """Each param group's learning rate at every optimizer step of ``run``'s schedule (the scheduler alone)."""
    run.create_optimizer_and_scheduler(num_training_steps=STEPS)
    names = [group["name"] for group in run.optimizer.param_groups]
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(STEPS):
        for name, rate in zip(names, run.lr_scheduler.get_last_lr()):
            rates[name].append(rate)
        run.optimizer.step()
        run.lr_scheduler.step()
    return rates


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_lr_restart_gives_the_recovery_steps_a_schedule_of_their_own(tmp_path, schedule):
    """With recovery_lr_restart the weights follow the run's schedule over the search, then the same schedule type
    over the recovery steps alone (same warm-up fraction); gates and multipliers keep theirs."""
    settings = dict(lr_scheduler_type=schedule, warmup_steps=4)  # 4 of 12 steps: 2 of the 6 recovery steps
    continued = learning_rates(trainer(tmp_path / "a", **settings))
    restarted = learning_rates(trainer(tmp_path / "b", recovery_lr_restart=True, **settings))
    recovery = STEPS - FREEZE
    fresh = tf.get_scheduler(
        schedule,
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3),
        num_warmup_steps=2,
        num_training_steps=recovery,
    )
    expected = []
    for _ in range(recovery):
        expected.append(fresh.get_last_lr()[0])
        fresh.optimizer.step()
        fresh.step()
    for group in ("weights", "weights_no_decay"):
        assert restarted[group][:FREEZE] == continued[group][:FREEZE]
        assert restarted[group][FREEZE:] == pytest.approx(expected, rel=1e-12, abs=0)
        assert restarted[group][FREEZE:] != continued[group][FREEZE:]
    for group in ("gates", "multipliers"):
        assert restarted[group] == continued[group]


def test_the_lr_restart_needs_the_trainers_own_lambda_schedule(tmp_path):
    run = trainer(tmp_path, recovery_lr_restart=True)
    run.create_optimizer()
    run.lr_scheduler = torch.optim.lr_scheduler.StepLR(run.optimizer, step_size=1)  # as Trainer(optimizers=...) sets
    with pytest.raises(ValueError, match=r"recovery_lr_restart=True .* a scheduler passed in .* LambdaLR schedule"):
        run.create_scheduler(num_training_steps=STEPS)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_steps=4, recovery_ratio=0.9), "leaves 0 search and 4 recovery steps"),
        (dict(max_steps=4, recovery_ratio=0.1), "leaves 4 search and 0 recovery steps"),
        (
            dict(max_steps=12, recovery_ratio=0.5, sparsity_warmup_steps=7),
            r"warm-up 7 steps, not shorter than the search stage's 6 steps \(recovery_ratio=0.5\)",
        ),
        (
            dict(max_steps=10, recovery_ratio=0.0, sparsity_warmup_steps=50),
            r"warm-up 50 steps, not shorter than the run's 10 optimizer steps",
        ),
    ],
)
def test_a_split_without_search_or_recovery_steps_is_refused_before_training(tmp_path, settings, message):
    run = trainer(tmp_path, **settings)
    before = copy.deepcopy(get_gates(run.model).state_dict())
    with pytest.raises(ValueError, match=message):
        run.train()
    assert run.state.global_step == 0
    assert all(torch.equal(v, get_gates(run.model).state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_recovery_ratio_outside_zero_one_is_refused(tmp_path, ratio):
    with pytest.raises(ValueError, match=r"recovery_ratio=.* must lie in \[0, 1\)"):
        L0TrainingArguments(output_dir=str(tmp_path), target_sparsity=0.5, recovery_ratio=ratio, use_cpu=True)
    with pytest.raises(ValueError, match=r"recovery_ratio=.* must lie in \[0, 1\)"):
        LagrangianController(0.5, recovery_ratio=ratio)


def test_a_custom_loop_gets_the_same_recovery_stage_from_the_controller():
    torch.manual_seed(0)
    model = bert(dropout=0.0)
    hf_l0.patch_model(model, L0Config(heads=True, ffn=True))
    controller = LagrangianController(0.5, warmup_steps=WARMUP, gate_learning_rate=0.1, recovery_ratio=RECOVERY)
    controller.check_schedule(STEPS)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in model.named_parameters() if "log_alpha" not in n], "lr": 1e-3},
            {"params": hf_l0.training.lagrangian.gate_parameters(model), "lr": 0.1, "weight_decay": 0.0},
        ]
    )
    clamp = hf_l0.training.lagrangian.GateClamp(model, -3.0, 3.0)
    data = dataset(STEPS * 8)
    snapshots = {}
    for step in range(STEPS):
        controller.on_step(model, step, STEPS)
        batch = data[step * 8 : (step + 1) * 8]
        inputs = {k: torch.tensor(v) for k, v in batch.items()}
        loss = model(**inputs).loss + controller.penalty(hf_l0.expected_sparsity(model), step)
        loss.backward()
        optimizer.step()
        clamp()
        optimizer.zero_grad()
        snapshots[step] = {k: v.clone() for k, v in get_gates(model).state_dict().items()}
    assert controller.frozen and int(controller.frozen_step) == FREEZE
    penalty = controller.penalty(hf_l0.expected_sparsity(model))
    assert controller.lambda_1.item() != 0.0 and penalty.item() == 0.0 and not penalty.requires_grad
    for step in range(FREEZE, STEPS):
        for key, value in snapshots[FREEZE].items():
            assert torch.equal(value, snapshots[step][key]), (step, key)
    assert abs(controller.finish(model) - 0.5) < 0.02  # no snap after the freeze: the sparsity it froze at
    assert torch.equal(snapshots[STEPS - 1]["heads.log_alpha"], get_gates(model).heads.log_alpha)


def test_the_gate_clamp_leaves_frozen_gates_where_they_froze():
    model = hf_l0.patch_model(bert(), L0Config(heads=True, ffn=True))
    gates = get_gates(model)
    with torch.no_grad():
        gates.heads.log_alpha.fill_(10.0)
    clamp = hf_l0.training.lagrangian.GateClamp(model, -4.6, 4.6)
    gates.freeze()
    clamp()
    assert bool((gates.heads.log_alpha == 10.0).all())
    gates.unfreeze()
    clamp()
    assert bool((gates.heads.log_alpha == 4.6).all())


@pytest.mark.parametrize(
    "warmup_steps, max_steps, recovery_ratio, message",
    [
        (
            7,
            12,
            0.5,
            "warmup_steps=7 makes the sparsity warm-up 7 steps, not shorter than the search stage's 6 steps "
            "(recovery_ratio=0.5): a target of 0.6 would be reached only after the last search step, with no training "
            "at that shape. Make the warm-up shorter than 6 steps (e.g. sparsity_warmup_ratio=0.5) or train longer.",
        ),
        (
            0,
            4,
            0.9,
            "recovery_ratio=0.9 of 4 steps leaves 0 search and 4 recovery steps: both stages need at least one step. "
            "Choose a ratio between 0.25 and 0.75, or 0 for no recovery stage.",
        ),
        (
            0,
            1,
            0.5,
            "recovery_ratio=0.5 splits the run into a search and a recovery stage, but a run of 1 optimizer step has "
            "room for one stage only. Set recovery_ratio=0 (no recovery stage) or train longer.",
        ),
        (
            10,
            10,
            0.0,
            "warmup_steps=10 makes the sparsity warm-up 10 steps, not shorter than the run's 10 optimizer steps: a "
            "target of 0.6 would be reached only after the last search step, with no training at that shape. Make the "
            "warm-up shorter than 10 steps (e.g. sparsity_warmup_ratio=0.5) or train longer.",
        ),
    ],
)
def test_the_controller_refuses_a_schedule_that_does_not_fit_naming_its_own_settings(
    warmup_steps, max_steps, recovery_ratio, message
):
    controller = LagrangianController(0.6, warmup_steps, recovery_ratio=recovery_ratio)
    with pytest.raises(ValueError) as refused:
        controller.check_schedule(max_steps)
    assert str(refused.value) == message


def test_the_freeze_pins_the_controllers_metric_and_reports_both_of_its_measures():
    model, metric = gated_gpt2(), FlopsTarget(16)
    reference = copy.deepcopy(model)
    pinned = snap_to_target(reference, 0.5, measure=metric)
    controller = LagrangianController(0.5, recovery_ratio=RECOVERY, metric=metric)
    measured = controller.on_step(model, FREEZE, STEPS)
    assert controller.frozen and int(controller.frozen_step) == FREEZE and get_gates(model).frozen
    assert all(torch.equal(value, log_alphas(reference)[name]) for name, value in log_alphas(model).items())
    expected = metric(model).item()
    assert expected != pinned  # the two measures can be told apart
    assert measured == {"expected_sparsity": expected, "deterministic_sparsity": pinned}


def test_without_a_recovery_stage_the_controller_never_freezes_even_at_the_last_step():
    model = gated_gpt2()
    before = log_alphas(model)
    controller = LagrangianController(0.5)
    controller.on_step(model, STEPS, STEPS)  # a step past the last one
    assert not controller.frozen and not get_gates(model).frozen
    assert all(torch.equal(value, before[name]) for name, value in log_alphas(model).items())


def test_gates_frozen_at_step_zero_count_as_frozen():
    controller = LagrangianController(0.5, recovery_ratio=RECOVERY)
    controller.lambda_1.data.fill_(1.0)
    assert not controller.frozen and controller.penalty(torch.tensor(0.9)).item() != 0.0
    controller.frozen_step.fill_(0)  # e.g. restored from a checkpoint
    assert controller.frozen and controller.penalty(torch.tensor(0.9)).item() == 0.0


def test_finish_snaps_the_controllers_metric_once_more_after_a_final_phase():
    model, metric = gated_gpt2(), FlopsTarget(16)
    reference = copy.deepcopy(model)
    pinned = snap_to_target(reference, 0.5, measure=metric)
    controller = LagrangianController(0.5, final_phase_ratio=0.1, metric=metric)
    assert controller.finish(model) == pinned
    assert all(torch.equal(value, log_alphas(reference)[name]) for name, value in log_alphas(model).items())


@pytest.mark.parametrize("final_phase_ratio, frozen_step", [(0.0, -1), (0.1, FREEZE)])
def test_finish_returns_the_deterministic_measure_without_snapping_without_a_final_phase_or_once_frozen(
    final_phase_ratio, frozen_step
):
    model, metric = gated_gpt2(), FlopsTarget(16)
    before = log_alphas(model)
    controller = LagrangianController(0.5, final_phase_ratio=final_phase_ratio, metric=metric)
    controller.frozen_step.fill_(frozen_step)
    deterministic = metric(model, True).item()
    assert deterministic != metric(model).item()  # the two measures can be told apart
    assert controller.finish(model) == deterministic
    assert all(torch.equal(value, before[name]) for name, value in log_alphas(model).items())


class Temperatures(tf.TrainerCallback):
    """Every gate's hard concrete temperature after each optimizer step."""

    def __init__(self) -> None:
        self.steps: dict[int, list[float]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps[state.global_step] = [gate.temperature for gate in get_gates(model).gates.values()]


def test_gate_temperature_anneals_over_the_search_and_resumes_bitwise(tmp_path):
    """gate_temperature_final: geometric from L0Config.temperature at step 0 to the final value at the freeze,
    constant in recovery; a run resumed mid-search takes the schedule up where it was (gates and weights bitwise)."""
    final = 0.1
    seen = Temperatures()
    full = trainer(tmp_path / "a", callbacks=[seen], gate_temperature_final=final, save_strategy="steps", save_steps=4)
    full.train()
    initial = full.l0_config.temperature
    for step in range(1, STEPS + 1):  # step s (1-based) ran optimizer step s - 1, whose on_step set the temperature
        expected = initial * (final / initial) ** min(1.0, (step - 1) / FREEZE)
        assert seen.steps[step] == pytest.approx([expected] * len(seen.steps[step]), rel=1e-12), step
    assert "gate_temperature" in full.state.log_history[0]
    constant = trainer(tmp_path / "c")
    constant.train()
    assert not torch.equal(log_alphas(constant.model)["heads"], log_alphas(full.model)["heads"])  # it changes the run
    resumed = trainer(tmp_path / "b", model=bert(seed=1), gate_temperature_final=final)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("final", [0.0, -0.5])
def test_gate_temperature_final_must_be_positive(tmp_path, final):
    with pytest.raises(ValueError, match=r"gate_temperature_final=.* must be > 0"):
        trainer(tmp_path, gate_temperature_final=final)
    with pytest.raises(ValueError, match=r"final_temperature=.* must be > 0"):
        LagrangianController(0.5, final_temperature=final)


def test_gate_temperature_annealing_in_a_custom_loop_needs_max_steps():
    model = hf_l0.patch_model(bert(), L0Config(heads=True, ffn=True))
    controller = LagrangianController(0.5, final_temperature=0.2, recovery_ratio=0.5)
    with pytest.raises(ValueError, match="needs max_steps"):
        controller.on_step(model, 0)
    controller.on_step(model, 3, max_steps=12)  # search: steps 0..5
    assert all(
        g.temperature == pytest.approx((2 / 3) * (0.2 / (2 / 3)) ** 0.5) for g in get_gates(model).gates.values()
    )


def sublayer_error(model, teacher, inputs, layer: int, kind: str) -> float:
    """How far the gated model's output projection of one sublayer is from the teacher's, on ``inputs``."""
    from hf_l0.training.mask_tuning import _capture

    sub = getattr(hf_l0.arch.base.get_adapter(model), kind)(layer)
    ref = getattr(hf_l0.arch.base.get_adapter(teacher), kind)(layer)
    return float(
        (_capture(model, sub.output, inputs, "output") - _capture(teacher, ref.output, inputs, "output")).norm()
    )


def test_least_squares_mask_tuning_reconstructs_the_teacher_and_stays_exact():
    from hf_l0.training.mask_tuning import tune_mask_least_squares

    teacher = bert(dropout=0.0).eval()
    model = hf_l0.patch_model(copy.deepcopy(teacher), L0Config(heads=True, ffn=True))
    randomize_gates(model, seed=3)
    snap_to_target(model, 0.5)
    get_gates(model).freeze()
    with torch.no_grad():  # the student drifted from the teacher during the search
        for p in model.bert.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inputs = {k: torch.tensor(v[:16]) for k, v in dataset().to_dict().items() if k != "labels"}
    model.eval()
    order = [(layer, kind) for layer in range(2) for kind in ("attention", "ffn")]
    before = {where: sublayer_error(model, teacher, inputs, *where) for where in order}
    scales = tune_mask_least_squares(model, teacher, [inputs])
    # the first sublayer with kept units is tuned on the inputs it had before: its error must fall
    first = next((layer, kind) for layer, kind in order if scales[kind][layer])
    assert sublayer_error(model, teacher, inputs, *first) < 0.9 * before[first]
    kept_heads = (get_gates(model).deterministic()["heads"] != 0).sum(-1).tolist()
    assert [len(s) for s in scales["attention"]] == kept_heads and sum(kept_heads) > 0
    pruned = hf_l0.prune_model(copy.deepcopy(model)).eval()
    assert float((final_output(model, inputs) - final_output(pruned, inputs)).abs().max()) <= 1e-5


def test_recovery_mask_tuning_changes_the_weights_at_the_freeze_only_and_resumes_bitwise(tmp_path, monkeypatch):
    """The tuning runs once, at the freeze step (before it both runs are the same bitwise, after it they differ), and a
    run resumed before the freeze tunes at the same step again: the same weights bitwise."""
    from hf_l0.training import trainer as trainer_module

    calls = []
    tune = trainer_module.tune_mask_least_squares
    monkeypatch.setattr(
        trainer_module, "tune_mask_least_squares", lambda *a, **k: calls.append(len(a[2])) or tune(*a, **k)
    )
    plain, tuned = Record(), Record()
    trainer(tmp_path / "p", callbacks=[plain], teacher=bert(dropout=0.0)).train()
    full = trainer(
        tmp_path / "a",
        callbacks=[tuned],
        teacher=bert(dropout=0.0),
        recovery_mask_tuning=True,
        recovery_mask_tuning_batches=4,
        save_strategy="steps",
        save_steps=4,
    )
    full.train()
    assert calls == [4]  # once, on recovery_mask_tuning_batches batches
    assert torch.equal(plain.steps[FREEZE]["weight"], tuned.steps[FREEZE]["weight"])
    assert not torch.equal(plain.steps[FREEZE + 1]["weight"], tuned.steps[FREEZE + 1]["weight"])
    resumed = trainer(
        tmp_path / "b",
        model=bert(seed=1),
        teacher=bert(dropout=0.0),
        recovery_mask_tuning=True,
        recovery_mask_tuning_batches=4,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_recovery_mask_tuning_needs_a_teacher_a_recovery_stage_and_no_hidden_gates(tmp_path):
    with pytest.raises(ValueError, match="recovery_mask_tuning reconstructs the teacher"):
        trainer(tmp_path, recovery_mask_tuning=True)
    with pytest.raises(ValueError, match="set recovery_ratio > 0"):
        trainer(tmp_path, recovery_mask_tuning=True, recovery_ratio=0.0, teacher=bert(dropout=0.0))
    with pytest.raises(ValueError, match="without hidden-dimension gates"):
        trainer(tmp_path, recovery_mask_tuning=True, teacher=bert(dropout=0.0), l0_structures="heads,ffn,hidden")
