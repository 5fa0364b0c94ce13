"""L0Trainer on a tiny Llama, run by tests/test_distributed.py in one process or in two (gloo on the CPU).

    python tests/distributed_l0.py OUT_DIR PER_DEVICE_BATCH
    accelerate launch --multi_gpu --num_processes 2 tests/distributed_l0.py OUT_DIR PER_DEVICE_BATCH

After every optimizer step each rank compares its gates and multipliers with rank 0's (all_gather); the largest
difference seen and the final gates are written to OUT_DIR (rank 0).
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

import hf_l0
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

GLOBAL_BATCH, STEPS, SEQ = 8, 12, 16
SAVE_STEPS = int(os.environ.get("L0_SAVE_STEPS", "0"))  # checkpoints (sharded under FSDP) every N steps
RESUME = os.environ.get("L0_RESUME")  # a checkpoint to resume from
# FSDP2 (fully_shard per decoder layer + the root) when L0_FSDP=1 is set by the test.
FSDP_ARGS = (
    dict(
        fsdp="full_shard auto_wrap",
        fsdp_config={
            "version": 2,
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
            "reshard_after_forward": True,
            "state_dict_type": "SHARDED_STATE_DICT",
        },
    )
    if os.environ.get("L0_FSDP") == "1"
    else {}
)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an FSDP2-sharded DTensor is gathered: a collective, call it on all ranks)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class RankAgreement(TrainerCallback):
    def __init__(self) -> None:
        self.trainer = None
        self.max_rank_diff = 0.0

    def state_vector(self) -> torch.Tensor:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        gates = [full(gate.log_alpha).flatten() for gate in hf_l0.get_gates(model).gates.values()]
        multipliers = [p.detach().flatten() for p in self.trainer.controller.parameters()]
        return torch.cat(gates + multipliers).float()

    def on_step_end(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            mine = self.state_vector()
            gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, mine)
            diff = max((g - gathered[0]).abs().max().item() for g in gathered)
            self.max_rank_diff = max(self.max_rank_diff, diff)


def allow_fsdp_on_cpu() -> None:
    """accelerate (1.15) turns FSDP on only for accelerator devices: with processes on the CPU (MULTI_CPU) it drops the
    plugin and silently runs DDP. Test-only: keep the plugin, so FSDP2 (``fully_shard``) runs over gloo on the CPU."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def main() -> None:
    if FSDP_ARGS and os.environ.get("L0_FSDP_FORCE") == "1":
        allow_fsdp_on_cpu()
    out_dir, per_device_batch = Path(sys.argv[1]), int(sys.argv[2])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    # Exactly one global batch of data, equal lengths: every step sees the same 8 sequences in both set-ups, and
    # the mean over two ranks of 4 equals the mean over 8.
    ids = torch.randint(0, 64, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = L0TrainingArguments(
        output_dir=str(out_dir / "run"),
        per_device_train_batch_size=per_device_batch,
        max_steps=STEPS,
        learning_rate=1e-3,
        target_sparsity=0.5,
        sparsity_warmup_steps=6,
        recovery_ratio=0.25,  # the gates freeze at step 9: a resume from checkpoint-6 crosses the switch
        gate_learning_rate=0.2,
        use_cpu=True,
        report_to=[],
        logging_steps=100,
        seed=0,
        data_seed=0,
        save_strategy="steps" if SAVE_STEPS else "no",
        save_steps=SAVE_STEPS or 500,
        dataloader_drop_last=True,
        disable_tqdm=True,
        **FSDP_ARGS,
    )
    callback = RankAgreement()
    trainer = L0Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    callback.trainer = trainer
    trainer.train(resume_from_checkpoint=RESUME)
    trainer.save_model(str(out_dir / "compact"))  # the compact model (gathered from the shards under FSDP)
    gates = {
        name: full(gate.log_alpha).contiguous()
        for name, gate in hf_l0.get_gates(trainer.accelerator.unwrap_model(trainer.model)).named_gates()
    }
    if trainer.accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        gates.update({name: p.detach().reshape(1) for name, p in trainer.controller.named_parameters()})
        save_file(gates, out_dir / "final_gates.safetensors")
        (out_dir / "result.json").write_text(
            json.dumps(
                {
                    "world_size": trainer.accelerator.num_processes,
                    "max_rank_diff": callback.max_rank_diff,
                    "steps": trainer.state.global_step,
                    "fsdp": trainer.is_fsdp_enabled,
                    "frozen_step": int(trainer.controller.frozen_step),
                }
            )
        )
    # Every rank leaves the gloo group together, and the group is destroyed before the interpreter exits. Even so a
    # rank aborted now and then during interpreter teardown, after all of this ("terminate called without an active
    # exception", SIGABRT: a torch.distributed thread still joinable when its C++ object is destroyed). Everything
    # is written and every rank is past the barrier, so the process ends here without that teardown.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
