"""Gates initialized from importance scores: the function for custom loops and the trainer option."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import transformers as tf
from conftest import VOCAB, make_model
from datasets import Dataset

import hf_l0
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments


def _patched(family: str = "llama"):
    return hf_l0.patch_model(make_model(family), hf_l0.L0Config(layers=True))


def _random_scores(model, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gates = hf_l0.get_gates(model)
    return {name: torch.rand(getattr(gates, name).log_alpha.shape, generator=g) for name in ("heads", "ffn")}


def test_log_alpha_follows_the_scores_and_the_expected_size_stays():
    model = _patched()
    gates = hf_l0.get_gates(model)
    before = {name: gate.prob_nonzero().mean().item() for name, gate in gates.named_gates()}
    sparsity = hf_l0.expected_sparsity(model).item()
    layers = gates.attention_layers.log_alpha.clone()
    scores = _random_scores(model)
    hf_l0.init_gates_from_scores(model, scores)
    for name, score in scores.items():
        log_alpha = getattr(gates, name).log_alpha.detach().flatten()
        order = score.flatten().argsort()
        assert (log_alpha[order].diff() > 0).all(), name  # strictly increasing with the score
        n = log_alpha.numel()  # scale 1: the span of n standardized ranks, (n - 1) / std = sqrt(12 (n - 1) / (n + 1))
        assert (log_alpha.max() - log_alpha.min()).item() == pytest.approx((12 * (n - 1) / (n + 1)) ** 0.5, rel=1e-4)
        # the same mean P(z != 0) as the uniform start: the expected size at init does not move
        assert getattr(gates, name).prob_nonzero().mean().item() == pytest.approx(0.99, abs=1e-6)
        assert before[name] == pytest.approx(0.99, abs=1e-3)  # the uniform start (its log_alpha has a little noise)
    assert hf_l0.expected_sparsity(model).item() == pytest.approx(sparsity, abs=1e-3)
    assert torch.equal(gates.attention_layers.log_alpha, layers)  # gates without scores are left alone


def test_only_the_ranks_matter_and_ties_share_a_value():
    a, b = _patched(), _patched()
    scores = _random_scores(a)
    hf_l0.init_gates_from_scores(a, scores, scale=2.0)
    hf_l0.init_gates_from_scores(b, {name: s.exp() * 1e3 for name, s in scores.items()}, scale=2.0)  # monotone map
    torch.testing.assert_close(hf_l0.get_gates(a).state_dict(), hf_l0.get_gates(b).state_dict())
    tied = scores["heads"].clone()
    tied[0, 0] = tied[1, 1]
    hf_l0.init_gates_from_scores(a, {"heads": tied})
    log_alpha = hf_l0.get_gates(a).heads.log_alpha
    assert log_alpha[0, 0] == log_alpha[1, 1]
    hf_l0.init_gates_from_scores(a, {"heads": tied}, scale=0.0)  # no spread: all alike
    assert torch.unique(hf_l0.get_gates(a).heads.log_alpha).numel() == 1


def test_init_gates_rejects_mismatched_scores():
    model = _patched()
    scores = _random_scores(model)
    with pytest.raises(ValueError, match="shape"):
        hf_l0.init_gates_from_scores(model, {"heads": scores["heads"][:, :1]})
    with pytest.raises(ValueError, match="no gate"):
        hf_l0.init_gates_from_scores(model, {"hidden": torch.rand(48)})
    with pytest.raises(ValueError, match="scale"):
        hf_l0.init_gates_from_scores(model, scores, scale=-1.0)


def _dataset(n: int = 64, length: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": (ids[:, 0] % 3).tolist()}
    )


def _args(tmp_path, **kw) -> L0TrainingArguments:
    return L0TrainingArguments(
        output_dir=str(tmp_path),
        target_sparsity=0.5,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=2,
        recovery_ratio=0.0,  # two steps: no room for a recovery stage
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        data_seed=0,
        **kw,
    )


class _Recorder(tf.TrainerCallback):
    """Records the gates and the first training batches as training begins (after the gate init callback)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.log_alpha = {k: v.clone() for k, v in hf_l0.get_gates(self.trainer.model).state_dict().items()}
        with torch.random.fork_rng():
            self.batches = list(itertools.islice(self.trainer.get_train_dataloader(), args.gate_init_batches))


@pytest.mark.parametrize("method", ["fisher", "activation"])
def test_trainer_initializes_gates_from_its_first_batches(tmp_path, method):
    dense = make_model("bert", "AutoModelForSequenceClassification")
    trainer = L0Trainer(
        model=copy.deepcopy(dense),
        args=_args(tmp_path, gate_init=method, gate_init_batches=3),
        train_dataset=_dataset(),
    )
    recorder = _Recorder(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    assert len(recorder.batches) == 3 and trainer.state.global_step == 2
    # The same scores computed by hand on those batches give the same gates.
    expected = hf_l0.patch_model(copy.deepcopy(dense), hf_l0.L0Config(layers=True))
    scorer = hf_l0.fisher_scores if method == "fisher" else hf_l0.activation_scores
    hf_l0.init_gates_from_scores(expected, scorer(copy.deepcopy(dense), recorder.batches))
    for name in ("heads", "ffn"):
        got = recorder.log_alpha[f"{name}.log_alpha"]
        assert got.unique().numel() > 1
        torch.testing.assert_close(got, hf_l0.get_gates(expected).state_dict()[f"{name}.log_alpha"])


def _record_batches(trainer) -> torch.Tensor:
    """Train and return the input_ids of every training batch, in order."""
    batches, compute_loss = [], trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        batches.append(inputs["input_ids"])
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    return torch.cat(batches)


class _RngRecorder(tf.TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.state = torch.random.get_rng_state()


def test_gate_init_leaves_the_training_batches_and_the_rng_unchanged(tmp_path):
    seen, rng = {}, {}
    for method in ("uniform", "fisher"):
        trainer = L0Trainer(
            model=make_model("bert", "AutoModelForSequenceClassification"),
            args=_args(tmp_path / method, gate_init=method),
            train_dataset=_dataset(),
        )
        recorder = _RngRecorder()
        trainer.add_callback(recorder)  # after the gate init callback
        seen[method] = _record_batches(trainer)
        rng[method] = recorder.state
    assert torch.equal(seen["uniform"], seen["fisher"])
    assert torch.equal(rng["uniform"], rng["fisher"])  # dropout etc. draw the same numbers as without gate_init


def test_gate_init_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="gate_init='random'"):
        _args(tmp_path, gate_init="random")
    with pytest.raises(ValueError, match="gate_init_batches"):
        _args(tmp_path, gate_init="fisher", gate_init_batches=0)
