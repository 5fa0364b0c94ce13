"""Distillation (hf_l0.training.distill) by value: the logit KL against an independent computation, the layer maps'
loss, the teacher checks and the mixed loss that L0Trainer and the baselines train with."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_inputs, make_model

from hf_l0.training.distill import DistillationLoss, LayerwiseDistiller, check_teacher, logit_kl


def fixed_logits(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3.0


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) of every row of the last dimension, by torch's kl_div."""
    log_p_student = F.log_softmax(student.double() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.double() / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)


# -- logit_kl --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logit_kl_of_class_logits_is_the_mean_kl_times_t_squared(temperature):
    student, teacher = fixed_logits(4, 3, seed=0), fixed_logits(4, 3, seed=1)
    expected = reference_kl(student, teacher, temperature).mean() * temperature**2
    loss = logit_kl(student, teacher, temperature)
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(logit_kl(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logit_kl_of_token_logits_averages_over_the_unmasked_tokens_times_t_squared(temperature):
    student, teacher = fixed_logits(2, 5, 7, seed=2), fixed_logits(2, 5, 7, seed=3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    per_token = reference_kl(student, teacher, temperature)
    expected = per_token[mask.bool()].mean() * temperature**2
    assert float(logit_kl(student, teacher, temperature, mask)) == pytest.approx(float(expected), rel=1e-5)
    unmasked = per_token.mean() * temperature**2  # every token counts without a mask
    assert float(logit_kl(student, teacher, temperature)) == pytest.approx(float(unmasked), rel=1e-5)
    changed = student.clone()
    changed[1, 2:] = fixed_logits(3, 7, seed=4)  # masked-out positions do not count
    assert float(logit_kl(changed, teacher, temperature, mask)) == pytest.approx(float(expected), rel=1e-5)


def test_logit_kl_of_half_precision_logits_is_computed_in_float32():
    student, teacher = fixed_logits(3, 50, seed=5), fixed_logits(3, 50, seed=6)
    loss = logit_kl(student.bfloat16(), teacher.bfloat16(), 2.0)
    expected = reference_kl(student.bfloat16().float(), teacher.bfloat16().float(), 2.0).mean() * 4.0
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_logit_kl_with_one_or_no_unmasked_token():
    student, teacher = fixed_logits(1, 4, 6, seed=7), fixed_logits(1, 4, 6, seed=8)
    assert float(logit_kl(student, teacher, 2.0, torch.zeros(1, 4, dtype=torch.long))) == 0.0  # zero, not nan
    one = torch.tensor([[0, 0, 1, 0]])
    expected = reference_kl(student, teacher, 2.0)[0, 2] * 4.0
    assert float(logit_kl(student, teacher, 2.0, one)) == pytest.approx(float(expected), rel=1e-5)
    assert float(logit_kl(student, teacher, 2.0, one.bool())) == pytest.approx(float(expected), rel=1e-5)


def test_logit_kl_refuses_logits_of_other_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and teacher logits \(2, 4\) differ"):
        logit_kl(torch.zeros(2, 3), torch.zeros(2, 4))


# -- LayerwiseDistiller ----------------------------------------------------------------------------------------------
def hidden_states(num_layers: int, seed: int) -> tuple[torch.Tensor, ...]:
    return tuple(fixed_logits(2, 5, 8, seed=seed + i) for i in range(num_layers + 1))


@torch.no_grad()
def test_layer_maps_start_as_the_identity_and_match_every_layer_but_the_embeddings():
    distiller = LayerwiseDistiller(8, 3)
    assert distiller.layers == [1, 2, 3] and len(distiller.maps) == 3
    student, teacher = hidden_states(3, seed=0), hidden_states(3, seed=10)
    expected = torch.stack([(student[i] - teacher[i]).pow(2).mean() for i in (1, 2, 3)]).mean()
    assert float(distiller(student, teacher)) == pytest.approx(float(expected), rel=1e-6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    masked = torch.stack([(student[i] - teacher[i]).pow(2).mean(-1)[mask.bool()].mean() for i in (1, 2, 3)]).mean()
    assert float(distiller(student, teacher, mask)) == pytest.approx(float(masked), rel=1e-6)
    assert float(distiller(student, teacher, torch.zeros(2, 5))) == 0.0  # no token: zero, not nan
    one = torch.zeros(2, 5, dtype=torch.long)
    one[1, 3] = 1
    single = torch.stack([(student[i][1, 3] - teacher[i][1, 3]).pow(2).mean() for i in (1, 2, 3)]).mean()
    assert float(distiller(student, teacher, one)) == pytest.approx(float(single), rel=1e-6)


@torch.no_grad()
def test_layer_maps_are_learned_linear_maps_of_the_chosen_layers():
    distiller = LayerwiseDistiller(8, 3, layers=[0, 2])
    distiller.maps[1].weight.mul_(2.0)
    distiller.maps[1].bias.fill_(0.5)
    student, teacher = hidden_states(3, seed=20), hidden_states(3, seed=30)
    expected = ((student[0] - teacher[0]).pow(2).mean() + (2.0 * student[2] + 0.5 - teacher[2]).pow(2).mean()) / 2
    assert float(distiller(student, teacher)) == pytest.approx(float(expected), rel=1e-6)
    # half-precision hidden states (a bf16 model) meet float32 maps: computed in float32 from the same values
    half_student = tuple(h.bfloat16() for h in student)
    half_teacher = tuple(h.bfloat16() for h in teacher)
    upcast = distiller(tuple(h.float() for h in half_student), tuple(h.float() for h in half_teacher))
    loss = distiller(half_student, half_teacher)
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(float(upcast), rel=1e-6)
    for bad in ([4], [-1]):
        with pytest.raises(ValueError, match=rf"layers \[{bad[0]}\] out of range: .* 0 \(embeddings\) to 3"):
            LayerwiseDistiller(8, 3, layers=bad)


# -- check_teacher ---------------------------------------------------------------------------------------------------
def test_a_copy_of_the_student_is_a_valid_teacher():
    for family, auto_class in (("bert", "AutoModelForSequenceClassification"), ("llama", "AutoModelForCausalLM")):
        student = make_model(family, auto_class)
        check_teacher(student, copy.deepcopy(student))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"model_type": "roberta"},
            r"^teacher model_type 'roberta' differs from the student's 'bert': distill from the dense fine-tuned "
            r"version of the same model\.$",
        ),
        (
            {"num_labels": 2},
            r"^teacher predicts 2 labels but the student 3: its logits cannot be distilled\. Use a teacher "
            r"fine-tuned on the same label set\.$",
        ),
        ({"vocab_size": 50}, r"^teacher vocab_size 50 differs from the student's 101\.$"),
        (
            {"hidden_size": 64},
            r"^teacher shape \(hidden 64, 3 layers\) differs from the student's \(hidden 32, 3 layers\): the "
            r"student must be the gated copy of the dense teacher\.$",
        ),
        ({"num_hidden_layers": 2}, r"^teacher shape \(hidden 32, 2 layers\) differs"),
    ],
    ids=["model_type", "num_labels", "vocab_size", "hidden_size", "num_layers"],
)
def test_a_teacher_of_another_shape_or_label_set_is_refused(change, message):
    student = make_model("bert", "AutoModelForSequenceClassification")
    teacher = copy.deepcopy(student)
    for key, value in change.items():
        setattr(teacher.config, key, value)
    with pytest.raises(ValueError, match=message):
        check_teacher(student, teacher)


def test_teacher_labels_must_match_by_name_unless_both_are_generic():
    student = make_model("bert", "AutoModelForSequenceClassification")
    teacher = copy.deepcopy(student)
    named = {0: "negative", 1: "neutral", 2: "positive"}
    student.config.id2label, teacher.config.id2label = dict(named), dict(named)
    check_teacher(student, teacher)
    teacher.config.id2label = {0: "positive", 1: "neutral", 2: "negative"}
    with pytest.raises(
        ValueError,
        match=r"^teacher labels .* would be compared label by label in the wrong order\. "
        r"Use a teacher fine-tuned on this data\.$",
    ):
        check_teacher(student, teacher)
    teacher.config.id2label = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}  # one side named, the other generic
    with pytest.raises(ValueError, match="do not match the student's"):
        check_teacher(student, teacher)
    # generic names on both sides (LABEL_i, transformers' placeholders) say nothing about the labels: not compared
    student.config.id2label = {0: "LABEL_2", 1: "LABEL_1", 2: "LABEL_0"}
    check_teacher(student, teacher)


def test_regression_and_causal_lm_teachers_are_not_checked_by_labels():
    student = make_model("bert", "AutoModelForSequenceClassification")
    student.config.problem_type = "regression"
    teacher = copy.deepcopy(student)
    teacher.config.num_labels = 1
    check_teacher(student, teacher)
    causal = make_model("llama", "AutoModelForCausalLM")
    other = copy.deepcopy(causal)
    other.config.id2label = {0: "a", 1: "b"}  # a causal LM's labels are its vocabulary
    check_teacher(causal, other)


# -- DistillationLoss ------------------------------------------------------------------------------------------------
class RecordingTeacher(torch.nn.Module):
    """A teacher that records the keyword arguments of each call (labels must never reach it)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, **kwargs):
        self.calls.append(sorted(kwargs))
        return self.model(**kwargs)


@pytest.mark.parametrize("alpha", [1.0, 0.7, 0.0])
def test_distillation_loss_mixes_the_kl_and_the_task_loss_by_alpha(alpha):
    student = make_model("bert", "AutoModelForSequenceClassification", seed=0)
    teacher = RecordingTeacher(make_model("bert", "AutoModelForSequenceClassification", seed=1).train())
    inputs = {**make_inputs(), "labels": torch.tensor([0, 2])}
    loss_fn = DistillationLoss(teacher, alpha=alpha, temperature=2.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    loss, outputs = loss_fn(student, inputs)
    assert teacher.calls == [["attention_mask", "input_ids", "output_hidden_states"]]
    with torch.no_grad():
        teacher_logits = teacher.model(**make_inputs()).logits
    kl = logit_kl(outputs.logits, teacher_logits, 2.0)  # class logits: no mask
    expected = alpha * kl + (1.0 - alpha) * outputs.loss
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    assert any(p.grad is not None for p in student.parameters())


def test_distillation_loss_of_token_logits_counts_only_real_tokens_and_adds_the_layer_loss():
    student = make_model("llama", "AutoModelForCausalLM", seed=0)
    teacher = make_model("llama", "AutoModelForCausalLM", seed=1)
    inputs = make_inputs()  # the second row is padded
    layerwise = LayerwiseDistiller(student.config.hidden_size, student.config.num_hidden_layers)
    loss, outputs = DistillationLoss(teacher, alpha=1.0, temperature=2.0, layerwise=layerwise, layer_weight=0.25)(
        student, inputs
    )
    with torch.no_grad():
        reference = teacher(**inputs, output_hidden_states=True)
    kl = logit_kl(outputs.logits, reference.logits, 2.0, inputs["attention_mask"])
    layer_loss = layerwise(outputs.hidden_states, reference.hidden_states, inputs["attention_mask"])
    assert float(loss.detach()) == pytest.approx(float((kl + 0.25 * layer_loss).detach()), rel=1e-5)
    unmasked = logit_kl(outputs.logits, reference.logits, 2.0)
    assert float(kl.detach()) != pytest.approx(float(unmasked.detach()), rel=1e-3)
    assert float(layer_loss.detach()) > 0


def test_distillation_loss_needs_labels_to_mix_in_the_task_loss():
    student = make_model("bert", "AutoModelForSequenceClassification", seed=0)
    teacher = make_model("bert", "AutoModelForSequenceClassification", seed=1)
    inputs = make_inputs()
    loss, _ = DistillationLoss(teacher, alpha=1.0)(student, inputs)  # alpha 1: the KL alone, no labels needed
    assert torch.isfinite(loss)
    with pytest.raises(
        ValueError,
        match=r"^distill_alpha < 1 mixes in the task loss, but the model returned none: "
        r"the batches need labels \(or set --distill_alpha 1\)\.$",
    ):
        DistillationLoss(teacher, alpha=0.9)(student, inputs)


def test_bad_distillation_settings_are_refused():
    teacher = make_model("bert", "AutoModelForSequenceClassification")
    for alpha in (-0.1, 1.1):
        with pytest.raises(ValueError, match=rf"distill alpha={alpha} must lie in \[0, 1\]"):
            DistillationLoss(teacher, alpha=alpha)
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"distill temperature={temperature} must be > 0"):
            DistillationLoss(teacher, temperature=temperature)
    for alpha in (0.0, 1.0):
        assert DistillationLoss(teacher, alpha=alpha).alpha == alpha  # the bounds are allowed
    assert DistillationLoss(teacher, temperature=0.5).temperature == 0.5  # T < 1 sharpens: allowed


def test_distillation_defaults_are_the_training_arguments_defaults():
    """The loss a baseline builds with defaults is the one L0Trainer builds from default arguments."""
    from dataclasses import fields

    from hf_l0.training.trainer import L0TrainingArguments

    defaults = {f.name: f.default for f in fields(L0TrainingArguments)}
    loss_fn = DistillationLoss(make_model("bert", "AutoModelForSequenceClassification"))
    assert loss_fn.alpha == defaults["distill_alpha"]
    assert loss_fn.temperature == defaults["distill_temperature"]
    assert loss_fn.layer_weight == defaults["distill_layer_weight"]
    student, teacher = fixed_logits(4, 3, seed=9), fixed_logits(4, 3, seed=10)
    assert float(logit_kl(student, teacher)) == float(logit_kl(student, teacher, defaults["distill_temperature"]))
