"""Refusals before training (unreachable targets) and gate state read through a submodule call."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, make_model

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model

INNER = {
    "bert": ("AutoModelForSequenceClassification", "bert"),
    "gpt2": ("AutoModelForCausalLM", "transformer"),
    "llama": ("AutoModelForCausalLM", "model"),
}


def _count_refreshes(model) -> list[int]:
    gates = hf_l0.get_gates(model)
    calls = [0]
    refresh = gates.refresh

    def counted():
        calls[0] += 1
        refresh()

    gates.refresh = counted
    return calls


# -- gate state through submodule calls -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", INNER)
def test_inner_model_call_in_eval_uses_eval_gates_after_training_forward(family):
    auto_class, inner = INNER[family]
    model = make_model(family, auto_class)
    patch_model(model, L0Config(hidden=True, droprate_init=0.3, layers=True))
    inputs = make_inputs()
    model.train()
    model(**inputs)  # leaves a training sample behind
    model.eval()
    with torch.no_grad():
        direct = getattr(model, inner)(**inputs).last_hidden_state
        full = model(**inputs, output_hidden_states=True).hidden_states[-1]
        model.train()
        model(**inputs)
        model.eval()
        direct_again = getattr(model, inner)(**inputs).last_hidden_state
    assert torch.equal(direct, full)
    assert torch.equal(direct_again, full)


@pytest.mark.parametrize("family", INNER)
def test_one_forward_draws_one_sample_for_all_layers(family):
    auto_class, inner = INNER[family]
    model = make_model(family, auto_class)
    patch_model(model, L0Config(hidden=True, droprate_init=0.3, layers=True))
    model.train()
    calls = _count_refreshes(model)
    seen: list[int] = []
    gates = hf_l0.get_gates(model)
    for module in model.modules():  # every gated projection reads the same sample object
        if module._forward_pre_hooks and module is not model and module is not getattr(model, inner):
            module.register_forward_pre_hook(lambda *_: seen.append(id(gates._values["heads"])))
    inputs = make_inputs()
    model(**inputs)
    assert calls[0] == 1 and len(seen) == model.config.num_hidden_layers * 2 and len(set(seen)) == 1
    seen.clear()
    getattr(model, inner)(**inputs)  # a direct call to the inner model draws its own single sample
    assert calls[0] == 2 and len(set(seen)) == 1
    with pytest.raises(IndexError):
        model(input_ids=torch.full((1, 3), 10_000))  # an error inside the forward must not leave the guard set
    model(**inputs)
    assert calls[0] == 4  # the failed call drew one, this one draws one: the guard was released


# -- unreachable targets --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, auto_class",
    [
        ("bert", "AutoModelForSequenceClassification"),
        ("gpt2", "AutoModelForCausalLM"),
        ("llama", "AutoModelForCausalLM"),
        ("qwen2", "AutoModelForCausalLM"),
    ],
)
@pytest.mark.parametrize(
    "structures",
    [
        {"heads": False, "layers": False},
        {"ffn": False, "layers": False},
        {"heads": False, "ffn": False, "layers": False, "hidden": True},
        {"layers": False, "target_heads": 1, "target_intermediate_size": 5},
        {"heads": True, "ffn": True, "layers": True},
    ],
    ids=["ffn-only", "heads-only", "hidden-only", "uniform", "layers"],
)
def test_max_reachable_sparsity_is_what_all_gates_shut_prunes_to(family, auto_class, structures):
    model = make_model(family, auto_class)
    patch_model(model, L0Config(**structures))
    maximum = hf_l0.max_reachable_sparsity(model)
    dense = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in hf_l0.get_gates(model).parameters())
    with torch.no_grad():
        for gate in hf_l0.get_gates(model).gates.values():
            gate.log_alpha.fill_(-10.0)  # all shut (a uniform target still keeps its counts)
    assert hf_l0.deterministic_sparsity(model).item() == pytest.approx(maximum, abs=1e-12)
    full, kept = hf_l0.full_size(model).total.item(), hf_l0.deterministic_size(model).total.item()
    prune_model(model.eval())
    assert dense - sum(p.numel() for p in model.parameters()) == int(full - kept)  # a count of the real model
    assert (maximum == 1.0) == (bool(structures.get("layers")) or (family == "llama" and "hidden" in structures))


def test_unreachable_target_is_refused_with_the_maximum():
    model = make_model("gpt2")
    patch_model(model, L0Config(heads=False, layers=False))  # FFN only: attention always stays
    maximum = hf_l0.max_reachable_sparsity(model)
    assert 0.5 < maximum < 0.8
    with pytest.raises(
        ValueError,
        match=rf"target_sparsity=0.9 cannot be reached.*at most {maximum:.4f}.*"
        "Gate more structures.*or lower target_sparsity",
    ):
        hf_l0.check_target_reachable(model, 0.9)
    hf_l0.check_target_reachable(model, round(maximum - 0.01, 2))  # reachable: no error


@pytest.mark.parametrize(
    "structures, target, ok",
    [("ffn", 0.9, False), ("heads", 0.8, False), ("heads,ffn", 0.9, True), ("ffn,layers", 0.9, True)],
)
def test_trainer_refuses_unreachable_target_before_training(tmp_path, structures, target, ok):
    from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

    model = make_model("gpt2")
    args = L0TrainingArguments(
        output_dir=str(tmp_path),
        target_sparsity=target,
        l0_structures=structures,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    if ok:
        trainer = L0Trainer(model=model, args=args)
        assert trainer.state.global_step == 0
        return
    with pytest.raises(ValueError, match=rf"target_sparsity={target} cannot be reached.*at most 0\.\d{{4}}"):
        L0Trainer(model=model, args=args)


# -- schedules the run cannot serve ---------------------------------------------------------------------------------
def _tiny_run(tmp_path, **kwargs):
    from datasets import Dataset

    from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

    ids = torch.randint(2, 100, (32, 8), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 3).tolist()})
    args = L0TrainingArguments(
        output_dir=str(tmp_path),
        target_sparsity=0.5,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        **kwargs,
    )
    return L0Trainer(model=make_model("bert", "AutoModelForSequenceClassification"), args=args, train_dataset=data)


@pytest.mark.parametrize(
    "settings, source",
    [
        (dict(max_steps=10, recovery_ratio=0.0, sparsity_warmup_steps=50), "sparsity_warmup_steps=50"),
        (
            dict(max_steps=10, recovery_ratio=0.0, sparsity_warmup_steps=10, sparsity_final_phase_ratio=0.0),
            "sparsity_warmup_steps=10",
        ),
        (dict(max_steps=10, recovery_ratio=0.0, sparsity_warmup_ratio=1.0), "sparsity_warmup_ratio=1.0"),
    ],
)
def test_a_warmup_not_shorter_than_the_run_is_refused_before_any_step(tmp_path, settings, source):
    trainer = _tiny_run(tmp_path, **settings)
    gates = {name: gate.log_alpha.detach().clone() for name, gate in hf_l0.get_gates(trainer.model).named_gates()}
    with pytest.raises(
        ValueError, match=rf"{source} makes the sparsity warm-up \d+ steps, not shorter than the run's 10"
    ):
        trainer.train()
    assert trainer.state.global_step == 0
    after = hf_l0.get_gates(trainer.model).gates
    assert all(torch.equal(after[name].log_alpha, value) for name, value in gates.items())  # no snap either


def test_a_run_without_optimizer_steps_is_refused_instead_of_pruning_untrained(tmp_path):
    trainer = _tiny_run(tmp_path, num_train_epochs=0)
    before = hf_l0.deterministic_sparsity(trainer.model).item()
    with pytest.raises(ValueError, match="the run has 0 optimizer steps.*pruned untrained"):
        trainer.train()
    assert hf_l0.deterministic_sparsity(trainer.model).item() == before


def test_controller_refuses_a_warmup_not_shorter_than_the_loop():
    model = make_model("gpt2")
    patch_model(model, L0Config())
    controller = hf_l0.LagrangianController(0.5, warmup_steps=20, final_phase_ratio=0.1)
    with pytest.raises(ValueError, match="warmup_steps=20 makes the sparsity warm-up 20 steps.*run's 20 optimizer"):
        controller.on_step(model, 0, max_steps=20)
    hf_l0.LagrangianController(0.5, warmup_steps=19).on_step(model, 0, max_steps=20)  # shorter: fine


def test_latency_target_with_hidden_gates_is_refused_before_the_table_is_measured(tmp_path, monkeypatch):
    from hf_l0.cost import latency
    from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

    def no_timing(*args, **kwargs):
        raise AssertionError("timed before refusing")

    monkeypatch.setattr(latency, "measure_latency_table", no_timing)
    args = L0TrainingArguments(
        output_dir=str(tmp_path),
        target_speedup=1.5,
        l0_structures="heads,ffn,hidden",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    with pytest.raises(ValueError, match="a speedup target does not support hidden-dimension gates"):
        L0Trainer(model=make_model("bert", "AutoModelForSequenceClassification"), args=args)
