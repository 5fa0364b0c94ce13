"""``hf-l0 prune-clm``: prune a causal language model to a target sparsity with L0 gates, in the style of run_clm.py.

The dense pretrained model is the teacher (logit KL on every token, optional layerwise loss) unless
--distill_alpha 0; perplexity is reported at evaluation. GGUF checkpoints load through --gguf_file.

Offline example (packaged SmolLM2-135M, Shakespeare via `python -m hf_l0.demo.data shakespeare data/shakespeare`):

    hf-l0 prune-clm --model_name_or_path hf_l0:smollm2 --train_file data/shakespeare/train.txt \
        --validation_file data/shakespeare/validation.txt --block_size 128 --max_steps 40 \
        --target_sparsity 0.3 --output_dir out/smollm2-shakespeare
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field

from datasets import DatasetDict, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, default_data_collator, set_seed

from hf_l0.arch import get_adapter
from hf_l0.cost.targets import cost_target_summary
from hf_l0.demo.data import group_texts
from hf_l0.demo.evaluation import perplexity
from hf_l0.demo.gguf import drop_gguf_quantizer
from hf_l0.demo.scripting import compare_latency, count_parameters, parse_arguments, report, resolve_model_path
from hf_l0.hub.load import from_pretrained
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

logger = logging.getLogger("prune_clm")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Causal LM (path or Hub id); hf_l0:smollm2 is the packaged SmolLM2-135M GGUF."}
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside model_name_or_path."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    latency_batch_size: int = field(default=4, metadata={"help": "Batch size of the CPU latency measurement."})
    latency_repeats: int = field(default=9, metadata={"help": "Timed forward passes per model (median)."})
    latency_threads: int | None = field(default=None, metadata={"help": "torch threads while timing (default: all)."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "datasets Hub name (online)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Training text (.txt), csv or json(l)."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation text (.txt), csv or json(l)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text (csv/json/datasets)."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence (texts are concatenated)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation blocks."})

    def __post_init__(self) -> None:
        if self.dataset_name is None and (self.train_file is None or self.validation_file is None):
            raise ValueError("give --dataset_name, or both --train_file and --validation_file.")
        if self.block_size < 2:
            raise ValueError(f"--block_size {self.block_size} must be >= 2.")


def load_raw(data_args: DataArguments) -> DatasetDict:
    if data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    else:
        files = {"train": data_args.train_file, "validation": data_args.validation_file}
        extension = os.path.splitext(data_args.train_file)[1].lstrip(".")
        builder = {"txt": "text", "csv": "csv", "json": "json", "jsonl": "json"}.get(extension)
        if builder is None:
            raise ValueError(f"unsupported data file extension {extension!r}: use .txt, .csv, .json or .jsonl.")
        raw = load_dataset(builder, data_files=files)
    if "validation" not in raw:
        raise ValueError(f"the dataset needs a validation split, it has {list(raw)}.")
    for split, dataset in raw.items():
        if data_args.text_column not in dataset.column_names:
            raise ValueError(
                f"--text_column {data_args.text_column!r} is not a column of the {split} split; its "
                f"columns are {dataset.column_names}."
            )
    return raw


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_arguments(
        HfArgumentParser((ModelArguments, DataArguments, L0TrainingArguments), prog="hf-l0 prune-clm"), argv
    )
    wall_start = time.perf_counter()
    set_seed(args.seed)

    raw = load_raw(data_args)
    model_path, gguf_file = resolve_model_path(model_args.model_name_or_path, model_args.gguf_file)
    load_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_path, **({} if model_args.tokenizer_name else load_kwargs)
    )
    model = drop_gguf_quantizer(AutoModelForCausalLM.from_pretrained(model_path, **load_kwargs))
    get_adapter(model)  # fail before any training for a model type without an adapter

    def tokenize(batch):
        return tokenizer(batch[data_args.text_column])

    tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)
    tokenized = tokenized.map(
        group_texts, batched=True, batch_size=1000, fn_kwargs={"block_size": data_args.block_size}
    )
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            tokenized[split] = tokenized[split].select(range(min(limit, len(tokenized[split]))))
    if len(tokenized["train"]) == 0 or len(tokenized["validation"]) == 0:
        raise ValueError(f"no block of {data_args.block_size} tokens in the data: lower --block_size.")

    dense = copy.deepcopy(model).eval()  # the teacher and the latency baseline (before any gate is attached)
    dense_ppl = perplexity(dense, tokenized["validation"], args.per_device_eval_batch_size)
    logger.info("dense validation perplexity %.3f", dense_ppl)
    use_teacher = (args.distill_alpha > 0 or args.distill_layerwise) and not args.teacher_model_name_or_path
    trainer = L0Trainer(
        model=model,
        args=args,
        teacher_model=dense if use_teacher else None,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    prune_seconds = time.perf_counter() - start
    final_eval = trainer.evaluate()
    reached = final_eval["eval_deterministic_sparsity"]
    trainer.save_model()
    compact = from_pretrained(args.output_dir) if args.prune_at_end else trainer.compact_model()
    pruned_ppl = perplexity(compact, tokenized["validation"], args.per_device_eval_batch_size)

    rows = [tokenized["validation"][i] for i in range(min(model_args.latency_batch_size, len(tokenized["validation"])))]
    batch = default_data_collator(rows)
    batch.pop("labels")
    latency = compare_latency(dense, compact, dict(batch), model_args.latency_repeats, model_args.latency_threads)
    dense_params, pruned_params = count_parameters(dense), count_parameters(compact)
    summary = {
        "dense_perplexity": dense_ppl,
        "pruned_perplexity": pruned_ppl,
        "target_sparsity": args.target_sparsity,
        "target_flops_reduction": args.target_flops_reduction,
        "target_speedup": args.target_speedup,
        "reached_sparsity": reached,
        "dense_parameters": dense_params,
        "pruned_parameters": pruned_params,
        **latency,
        "saved_to": os.path.abspath(args.output_dir) if args.prune_at_end else None,
        "prune_seconds": prune_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    # a FLOPs / latency target: the target against the FLOPs counted and the latency measured at its shape
    cost_fields, cost_rows = cost_target_summary(args, trainer.cost_target, dense, compact, model_args.latency_repeats)
    summary.update(cost_fields)
    report(
        args,
        summary,
        [("validation perplexity", dense_ppl, pruned_ppl), *cost_rows],
        f"{len(rows)} x {data_args.block_size}",
        title=f"L0 pruning summary ({model_args.model_name_or_path})",
    )
    return summary


if __name__ == "__main__":
    main()
