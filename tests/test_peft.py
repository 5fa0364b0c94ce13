"""Gates together with LoRA adapters (peft), gradient checkpointing and bf16 autocast."""

import pytest
import torch
from conftest import make_inputs, make_model, model_output
from helpers import randomize_gates
from peft import LoraConfig, get_peft_model

import hf_l0
from hf_l0 import L0Config, patch_model, prune_model

LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bert": ["query", "key", "value", "dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def lora_model(family: str):
    auto_class = "AutoModelForSequenceClassification" if family == "bert" else "AutoModelForCausalLM"
    model = make_model(family, auto_class)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[family], fan_in_fan_out=family == "gpt2")
    )
    with torch.no_grad():  # LoRA's B starts at zero; give the adapters a real effect to merge
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return peft_model


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("hidden", [False, True], ids=["no-hidden", "hidden"])
def test_gated_lora_equals_pruned_merged(family, hidden):
    peft_model = lora_model(family)
    inputs = make_inputs()
    returned = patch_model(peft_model, L0Config(hidden=hidden, layers=True))
    assert returned is peft_model and hf_l0.is_patched(peft_model)
    randomize_gates(peft_model)
    peft_model.eval()
    gated = model_output(peft_model, inputs)
    compact = prune_model(peft_model)
    assert type(compact).__module__.startswith("transformers.")  # a plain transformers model, adapters merged
    assert not any("lora" in name for name, _ in compact.named_parameters())
    mask = inputs["attention_mask"].bool()
    diff = (gated - model_output(compact, inputs)).abs()
    assert (diff[mask] if diff.dim() == 3 else diff).max().item() <= 1e-5


def test_gates_and_adapters_train_while_base_weights_stay_frozen():
    peft_model = lora_model("llama")
    patch_model(peft_model, L0Config(droprate_init=0.5, layers=True))
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("log_alpha" in name for name in trainable)
    assert any("lora_" in name for name in trainable)
    assert all("lora_" in name or "log_alpha" in name for name in trainable), trainable
    frozen = {name: p.clone() for name, p in peft_model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    gates_before = hf_l0.get_gates(peft_model).heads.log_alpha.detach().clone()
    peft_model.train()
    inputs = make_inputs()
    loss = peft_model(**inputs, labels=inputs["input_ids"]).loss + hf_l0.expected_sparsity(peft_model).float()
    loss.backward()
    optimizer.step()
    assert not torch.equal(hf_l0.get_gates(peft_model).heads.log_alpha, gates_before)
    assert all(torch.equal(p, frozen[name]) for name, p in peft_model.named_parameters() if name in frozen)


def test_l0_trainer_trains_a_lora_model_and_hands_back_a_merged_compact_model(tmp_path):
    from datasets import Dataset

    from hf_l0 import L0Trainer, L0TrainingArguments

    peft_model = lora_model("llama")
    frozen = {n: p.clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    ids = torch.randint(2, 101, (8, 12), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = L0TrainingArguments(
        output_dir=str(tmp_path),
        target_sparsity=0.3,
        max_steps=4,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = L0Trainer(model=peft_model, args=args, train_dataset=data)
    gates_before = hf_l0.get_gates(peft_model).heads.log_alpha.detach().clone()
    trainer.train()
    assert not torch.equal(hf_l0.get_gates(peft_model).heads.log_alpha, gates_before)
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)
    compact = trainer.compact_model()
    assert compact.config.use_cache is True  # training turned it off; generation needs the KV cache again
    assert type(compact).__module__.startswith("transformers.")
    assert not any("lora" in name for name, _ in compact.named_parameters())
    inputs = make_inputs()
    assert (model_output(peft_model.eval(), inputs) - model_output(compact, inputs)).abs().max() <= 1e-5


def test_lora_added_after_patching_is_refused():
    model = make_model("llama")
    patch_model(model, L0Config(layers=True))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS["llama"]))
    with pytest.raises(RuntimeError, match="Call patch_model after get_peft_model"):
        peft_model(**make_inputs())


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_gradient_checkpointing_gives_the_same_gradients(family):
    auto_class = "AutoModelForSequenceClassification" if family == "bert" else "AutoModelForCausalLM"
    grads = []
    for checkpointing in (False, True):
        model = make_model(family, auto_class)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # dropout RNG would differ between the two runs, the gates' must not
        patch_model(model, L0Config(hidden=True, droprate_init=0.5, layers=True))
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        inputs = make_inputs()
        labels = inputs["input_ids"] if family != "bert" else torch.tensor([0, 2])
        torch.manual_seed(123)  # same gate samples in both runs
        model(**inputs, labels=labels).loss.backward()
        grads.append({name: gate.log_alpha.grad.clone() for name, gate in hf_l0.get_gates(model).named_gates()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    assert grads[0]["heads"].abs().sum() > 0 and grads[0]["hidden"].abs().sum() > 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bf16_autocast_on_cpu(family):
    model = make_model(family)
    patch_model(model, L0Config(hidden=True, droprate_init=0.5, layers=True))
    randomize_gates(model)
    inputs = make_inputs()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(g.log_alpha.grad is not None for g in hf_l0.get_gates(model).gates.values())
    model.eval()
    reference = model_output(model, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model_output(model, inputs)
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max()
