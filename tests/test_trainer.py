"""L0Trainer, the Lagrangian controller and distillation on tiny random models (fast, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from conftest import VOCAB, make_model
from datasets import Dataset

import hf_l0
from hf_l0 import get_gates, hub
from hf_l0.training.distill import LayerwiseDistiller, logit_kl
from hf_l0.training.lagrangian import LagrangianController, l0_param_groups
from hf_l0.training.trainer import L0_STATE_NAME, L0Trainer, L0TrainingArguments


def _dataset(n: int = 128, length: int = 12, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": (ids[:, 0] % 3).tolist()}
    )


def _wide_bert(seed: int = 0):
    # more units than conftest's model, so the sparsity can be set finely (whole-layer gates are off in these tests)
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=3,
    )
    return tf.BertForSequenceClassification(config)


def _args(tmp_path, **kw) -> L0TrainingArguments:
    base = dict(
        output_dir=str(tmp_path / "out"),
        target_sparsity=0.5,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        l0_structures="heads,ffn",
        seed=0,
        data_seed=0,
    )
    base.update(kw)
    return L0TrainingArguments(**base)


# -- arguments and bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.0, 1.0, -0.2, 1.5])
def test_target_outside_open_interval_fails_at_construction(tmp_path, target):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        _args(tmp_path, target_sparsity=target)


def test_missing_target_and_bad_combinations_fail(tmp_path):
    with pytest.raises(ValueError, match="a target is required"):
        _args(tmp_path, target_sparsity=None)
    with pytest.raises(ValueError, match="unknown or no structures"):
        _args(tmp_path, l0_structures="heads,neurons")
    with pytest.raises(ValueError, match="distill_alpha"):
        _args(tmp_path, distill_alpha=1.5)
    with pytest.raises(ValueError, match="target_sparsity is not an L0Config field"):
        _args(tmp_path, target_sparsity=0.5, l0_config={"target_sparsity": 0.3})
    args = _args(tmp_path, l0_config='{"heads": true, "ffn": false, "layers": false}')
    assert args.resolved_l0_config().structures == ("heads",)
    assert _args(tmp_path, l0_width_multiple=32).resolved_l0_config().width_multiple == 32
    with pytest.raises(ValueError, match='l0_width_multiple=32 is ignored when --l0_config is given.*"width_multiple"'):
        _args(tmp_path, l0_width_multiple=32, l0_config={"heads": True})
    with pytest.raises(ValueError, match="width_multiple=0 must be a positive integer"):
        _args(tmp_path, l0_width_multiple=0)


def test_model_type_without_adapter_fails_before_training(tmp_path):
    config = tf.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=37)
    with pytest.raises(ValueError, match="no adapter for model_type='distilbert'"):
        L0Trainer(model=tf.DistilBertForSequenceClassification(config), args=_args(tmp_path), train_dataset=_dataset())


def test_teacher_with_other_labels_fails_before_training(tmp_path):
    student = make_model("bert", "AutoModelForSequenceClassification")  # 3 labels
    teacher_config = copy.deepcopy(student.config)
    teacher_config.num_labels = 2
    teacher = tf.BertForSequenceClassification(teacher_config)
    with pytest.raises(ValueError, match="teacher predicts 2 labels but the student 3"):
        L0Trainer(model=student, args=_args(tmp_path), teacher_model=teacher, train_dataset=_dataset())


def test_layerwise_distillation_needs_a_teacher(tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        L0Trainer(model=_wide_bert(), args=_args(tmp_path, distill_layerwise=True), train_dataset=_dataset())


# -- the controller -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity, direction", [(0.1, -1.0), (0.9, 1.0)])
def test_lambda_ascends_against_the_gap(sparsity, direction):
    controller = LagrangianController(0.5, multiplier_update="ascent")
    optimizer = torch.optim.SGD(controller.parameters(), lr=0.1)  # a minimizing optimizer: the hook makes it ascend
    for _ in range(3):
        controller(torch.tensor(sparsity)).backward()
        optimizer.step()
        optimizer.zero_grad()
    # below the target lambda_1 goes negative (the model is then rewarded for sparsity), above it goes positive
    assert controller.lambda_1.item() * direction > 0
    assert controller.lambda_2.item() > 0  # the quadratic term only ever tightens


def test_target_warms_up_linearly_then_holds():
    controller = LagrangianController(0.6, warmup_steps=10)
    assert controller.target(0) == 0.0
    assert controller.target(5) == pytest.approx(0.3)
    assert controller.target(10) == controller.target(50) == pytest.approx(0.6)
    controller.step(4)
    assert controller.target() == pytest.approx(0.24)
    restored = LagrangianController(0.6, warmup_steps=10)
    restored.load_state_dict(controller.state_dict())
    assert restored.target() == pytest.approx(0.24)


# -- training -------------------------------------------------------------------------------------------------------
def test_sparsity_converges_to_target(tmp_path):
    torch.set_num_threads(1)
    target = 0.5
    trainer = L0Trainer(
        model=_wide_bert(), args=_args(tmp_path, target_sparsity=target, max_steps=150), train_dataset=_dataset(256)
    )
    trainer.train()
    reached = trainer.evaluate(_dataset(32, seed=1))["eval_deterministic_sparsity"]
    assert abs(reached - target) <= 0.01, reached
    logs = [h for h in trainer.state.log_history if "lambda_1" in h]
    assert len(logs) >= 10 and {"expected_sparsity", "target_sparsity", "lagrangian_loss"} <= set(logs[0])


def test_resume_mid_warmup_matches_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    kw = dict(
        max_steps=8,
        recovery_ratio=0.0,  # a warm-up of 6 of the 8 steps: the whole run searches
        sparsity_warmup_steps=6,
        save_strategy="steps",
        save_steps=4,
        gate_learning_rate=0.1,
        lagrangian_learning_rate=0.1,
    )
    full = L0Trainer(model=_wide_bert(), args=_args(tmp_path / "a", **kw), train_dataset=_dataset())
    full.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-4"
    assert (checkpoint / L0_STATE_NAME).is_file() and not list(checkpoint.glob("*.tmp"))

    resumed = L0Trainer(model=_wide_bert(seed=1), args=_args(tmp_path / "b", **kw), train_dataset=_dataset())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = get_gates(full.model).state_dict(), get_gates(resumed.model).state_dict()
    # Bitwise in one process. (It was ~1e-3 off while the multipliers' gradients, which live outside the model and
    # which the Trainer does not zero, summed over all steps in the uninterrupted run but restarted at the resume.)
    for name in a:
        assert torch.equal(a[name], b[name]), (name, (a[name] - b[name]).abs().max())
    for key, value in full.controller.state_dict().items():
        assert torch.equal(value, resumed.controller.state_dict()[key]), key
    assert full.controller.lambda_1.item() != 0.0


def test_resume_from_a_checkpoint_whose_param_groups_have_no_names(tmp_path):
    """Optimizer checkpoints of hf-l0 0.1.0 carry unnamed groups: resuming names them again and stays bitwise."""
    torch.set_num_threads(1)
    kw = dict(
        max_steps=4,
        recovery_ratio=0.0,
        sparsity_warmup_steps=2,
        save_strategy="steps",
        save_steps=2,
        gate_learning_rate=0.1,
    )
    full = L0Trainer(model=_wide_bert(), args=_args(tmp_path / "a", **kw), train_dataset=_dataset())
    full.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert all(group.pop("name") for group in state["param_groups"])
    torch.save(state, checkpoint / "optimizer.pt")
    resumed = L0Trainer(model=_wide_bert(seed=1), args=_args(tmp_path / "b", **kw), train_dataset=_dataset())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    names = [group["name"] for group in resumed.optimizer.param_groups]
    assert names == ["weights", "weights_no_decay", "gates", "multipliers"]
    a, b = get_gates(full.model).state_dict(), get_gates(resumed.model).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_resume_from_a_checkpoint_without_gates_fails(tmp_path):
    model = _wide_bert()
    model.save_pretrained(tmp_path / "plain")
    trainer = L0Trainer(
        model=_wide_bert(), args=_args(tmp_path, max_steps=2, recovery_ratio=0.0), train_dataset=_dataset()
    )
    with pytest.raises(ValueError, match="holds no L0 gates"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "plain"))


def test_resume_with_other_gated_structures_fails(tmp_path):
    # A run started with whole-sublayer gates, resumed under the heads,ffn default, would silently drop those gates.
    torch.set_num_threads(1)
    kw = dict(max_steps=2, recovery_ratio=0.0, sparsity_warmup_steps=1, save_strategy="steps", save_steps=2)
    L0Trainer(
        model=_wide_bert(), args=_args(tmp_path / "a", l0_structures="heads,ffn,layers", **kw), train_dataset=_dataset()
    ).train()
    resumed = L0Trainer(model=_wide_bert(), args=_args(tmp_path / "b", **kw), train_dataset=_dataset())
    with pytest.raises(ValueError, match=r"trained with the gates .*attention_layers.*--l0_structures"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))


def test_distillation_loss_decreases(tmp_path):
    torch.set_num_threads(1)
    teacher = _wide_bert(seed=3).eval()
    student = _wide_bert(seed=4)  # a different network: the KL starts large
    data = _dataset(64)
    batch = {k: torch.tensor(data[:32][k]) for k in ("input_ids", "attention_mask")}
    distiller = LayerwiseDistiller(32, 2)

    def distill_loss(model, layer_maps):
        model.eval()
        with torch.no_grad():
            s, t = model(**batch, output_hidden_states=True), teacher(**batch, output_hidden_states=True)
            return float(logit_kl(s.logits, t.logits)) + float(layer_maps(s.hidden_states, t.hidden_states))

    before = distill_loss(student, distiller)
    trainer = L0Trainer(
        model=student,
        args=_args(
            tmp_path,
            target_sparsity=0.2,
            max_steps=40,
            distill_alpha=1.0,
            distill_layerwise=True,
            per_device_train_batch_size=32,
        ),
        teacher_model=teacher,
        train_dataset=data,
    )
    trainer.train()
    after = distill_loss(trainer.model, trainer.distiller)
    assert after < 0.5 * before, (before, after)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_save_model_writes_loadable_compact_model(tmp_path):
    torch.set_num_threads(1)
    trainer = L0Trainer(
        model=_wide_bert(), args=_args(tmp_path, target_sparsity=0.4, max_steps=30), train_dataset=_dataset()
    )
    trainer.train()
    trainer.save_model()
    compact = hub.from_pretrained(tmp_path / "out")
    gated = trainer.model.eval()
    inputs = {k: torch.tensor(v) for k, v in _dataset(4, seed=2)[:4].items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(compact(**inputs).logits, gated(**inputs).logits, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for n, p in gated.named_parameters() if not n.startswith("l0_gates")
    )
    assert (tmp_path / "out" / "l0_config.json").is_file()


@pytest.mark.parametrize("gate_lr_constant", [False, True])
def test_param_groups_are_named_and_built_as_for_a_custom_loop(tmp_path, gate_lr_constant):
    trainer = L0Trainer(
        model=_wide_bert(),
        args=_args(tmp_path, max_steps=4, weight_decay=0.1, gate_lr_constant=gate_lr_constant),
        train_dataset=_dataset(),
    )
    trainer.create_optimizer_and_scheduler(4)
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert list(groups) == ["weights", "weights_no_decay", "gates", "multipliers"]
    gate_ids = {id(g.log_alpha) for g in get_gates(trainer.model).gates.values()}
    assert {id(p) for p in groups["gates"]["params"]} == gate_ids and groups["gates"]["weight_decay"] == 0.0
    assert groups["gates"]["betas"][0] == trainer.args.gate_adam_beta1
    assert groups["multipliers"]["params"] == list(trainer.controller.parameters())
    assert groups["weights"]["weight_decay"] == 0.1 and groups["weights_no_decay"]["weight_decay"] == 0.0
    # the custom-loop helper builds the same groups (same parameters, in the same order)
    loop = l0_param_groups(
        trainer.model, trainer.controller, lr=1e-3, gate_lr=0.1, decay=trainer.get_decay_parameter_names(trainer.model)
    )
    assert [g["name"] for g in loop] == list(groups)
    assert all([id(p) for p in g["params"]] == [id(p) for p in groups[g["name"]]["params"]] for g in loop)
    gate_lr = groups["gates"]["lr"]
    for _ in range(3):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert groups["multipliers"]["lr"] == trainer.args.lagrangian_learning_rate  # constant: holds to the end
    assert groups["weights"]["lr"] < trainer.args.learning_rate  # the weights follow the linear schedule
    assert (groups["gates"]["lr"] == gate_lr) == gate_lr_constant


def test_snap_to_target_lands_within_one_head_of_the_target_even_with_layer_gates():
    from transformers import BertConfig, BertForSequenceClassification

    from hf_l0.training.lagrangian import snap_to_target

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=64, num_attention_heads=8, intermediate_size=256, num_hidden_layers=4)
    ).eval()
    hf_l0.patch_model(model, hf_l0.L0Config(heads=True, ffn=True, layers=True))
    with torch.no_grad():
        for gate in get_gates(model).gates.values():
            gate.log_alpha.normal_(0.0, 2.0)  # layer gates too: some sit near the keep / drop boundary
    full = hf_l0.full_size(model).prunable.item()
    head_share = (4 * 8 * 64 + 3 * 8) / full  # q, k, v rows + o columns of one head, and its q/k/v biases
    for target in (0.3, 0.5, 0.75):
        reached = snap_to_target(model, target)
        assert reached == pytest.approx(hf_l0.deterministic_sparsity(model).item())
        assert abs(reached - target) <= head_share


def test_compact_model_generates_with_the_kv_cache_again(tmp_path):
    from hf_l0 import L0Trainer, L0TrainingArguments

    model = make_model("llama")
    assert model.config.use_cache
    ids = torch.randint(2, VOCAB, (8, 12), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = L0TrainingArguments(
        output_dir=str(tmp_path),
        target_sparsity=0.3,
        max_steps=2,
        recovery_ratio=0.0,
        use_cpu=True,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = L0Trainer(model=model, args=args, train_dataset=data)
    assert not model.config.use_cache  # the Trainer turns it off for training
    trainer.train()
    assert trainer.compact_model().config.use_cache
