#!/usr/bin/env python
"""Prune a sequence-classification model to a target sparsity with L0 gates (CoFi), in the style of run_glue.py.

Stages: (1) optional dense fine-tuning that produces the teacher when the model's classification head is new;
(2) L0 pruning with distillation from the dense teacher (`L0Trainer`); (3) the compact model is saved, reloaded,
evaluated and timed against the dense one, and a summary table is printed (also written as summary.json).

Fully offline example (packaged MiniLM and the packaged rotten_tomatoes reviews):

    python scripts/prune_classification.py --model_name_or_path hf_l0:minilm \
        --dataset_name hf_l0:rotten_tomatoes --target_sparsity 0.6 --output_dir out/minilm-rt
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    set_seed,
)

import hf_l0
from hf_l0 import L0Trainer, L0TrainingArguments
from hf_l0.arch import get_adapter
from hf_l0.cost import cost_target_summary
from hf_l0.demo import data as hf_l0_data
from hf_l0.demo.evaluation import compute_metrics, evaluate_classifier
from hf_l0.demo.scripting import compare_latency, count_parameters, parse_arguments, report, resolve_model_path
from hf_l0.distill import check_teacher
from hf_l0.trainer import check_l0_run

logger = logging.getLogger("prune_classification")
PACKAGED_DATASETS = {"hf_l0:rotten_tomatoes": hf_l0_data.rotten_tomatoes}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Sequence-classification model (path or Hub id); hf_l0:minilm is the packaged MiniLM."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    dense_finetune: str = field(
        default="auto",
        metadata={
            "help": "Fine-tune the dense model first to make the teacher: auto (when the classification head "
            "is newly initialized), yes, or no.",
            "choices": ["auto", "yes", "no"],
        },
    )
    dense_num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs of the dense fine-tuning stage."})
    dense_max_steps: int = field(default=-1, metadata={"help": "Steps of the dense stage (overrides epochs if > 0)."})
    dense_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the dense stage."})
    latency_batch_size: int = field(default=32, metadata={"help": "Batch size of the CPU latency measurement."})
    latency_repeats: int = field(default=15, metadata={"help": "Timed forward passes per model (median)."})
    latency_threads: int | None = field(default=None, metadata={"help": "torch threads while timing (default: all)."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "datasets Hub name (online), or hf_l0:rotten_tomatoes for the packaged reviews with a "
            "fixed train/validation/test split (offline)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Training data, csv or json(l)."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, csv or json(l)."})
    test_file: str | None = field(default=None, metadata={"help": "Test data for the final table, csv or json(l)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column (sentence pairs)."})
    label_column: str = field(default="label", metadata={"help": "Column holding the label."})
    max_seq_length: int = field(default=64, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many eval/test examples."})

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_file is None:
            raise ValueError("give --dataset_name (e.g. hf_l0:rotten_tomatoes) or --train_file/--validation_file.")
        if self.dataset_name is None and self.validation_file is None:
            raise ValueError("--train_file needs --validation_file as well (evaluation runs on it).")


def load_raw(data_args: DataArguments, cache_dir: str | None = None) -> DatasetDict:
    if data_args.dataset_name in PACKAGED_DATASETS:
        raw = PACKAGED_DATASETS[data_args.dataset_name]()
    elif data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    else:
        files = {"train": data_args.train_file, "validation": data_args.validation_file}
        if data_args.test_file:
            files["test"] = data_args.test_file
        extensions = {os.path.splitext(f)[1].lstrip(".") for f in files.values()}
        if len(extensions) != 1 or not extensions <= {"csv", "json", "jsonl"}:
            raise ValueError(f"data files must all be .csv or all .json/.jsonl, got {sorted(extensions)}.")
        extension = extensions.pop().replace("jsonl", "json")
        raw = load_dataset(extension, data_files=files, cache_dir=cache_dir)
    if "train" not in raw or "validation" not in raw:
        raise ValueError(f"the dataset needs train and validation splits, it has {list(raw)}.")
    for split, dataset in raw.items():
        for role, column in (
            ("--text_column", data_args.text_column),
            ("--label_column", data_args.label_column),
            ("--text_pair_column", data_args.text_pair_column),
        ):
            if (
                column is not None
                and column not in dataset.column_names
                and not (split == "test" and role == "--label_column")
            ):
                raise ValueError(
                    f"{role} {column!r} is not a column of the {split} split; its columns are "
                    f"{dataset.column_names}. Pass the right name with {role}."
                )
    return raw


def label_names(raw: DatasetDict, label_column: str) -> list:
    feature = raw["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return sorted(set(raw["train"][label_column]))


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, L0TrainingArguments))


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_arguments(build_parser(), argv)
    wall_start = time.perf_counter()
    set_seed(args.seed)

    raw = load_raw(data_args)
    names = label_names(raw, data_args.label_column)
    label2id = {name: i for i, name in enumerate(names)}
    id2label = {i: str(name) for i, name in enumerate(names)}
    model_path, _ = resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_path)

    def preprocess(batch):
        texts = (
            (batch[data_args.text_column],)
            if data_args.text_pair_column is None
            else (batch[data_args.text_column], batch[data_args.text_pair_column])
        )
        encoded = tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)
        if data_args.label_column in batch:
            unknown = {v for v in batch[data_args.label_column] if v not in label2id}
            if unknown:
                raise ValueError(f"labels {sorted(map(str, unknown))} do not occur in the training split.")
            encoded["labels"] = [label2id[v] for v in batch[data_args.label_column]]
        return encoded

    for split, limit in (
        ("train", data_args.max_train_samples),
        ("validation", data_args.max_eval_samples),
        ("test", data_args.max_eval_samples),
    ):
        if split in raw and limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    tokenized = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)
    collator = DataCollatorWithPadding(tokenizer)
    final_split = "test" if "test" in tokenized and "labels" in tokenized["test"].column_names else "validation"

    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(names), label2id=label2id, id2label=id2label, output_loading_info=True
    )
    get_adapter(model)  # fail now, not after fine-tuning, for a model type without an adapter
    head_is_new = bool(info["missing_keys"])
    teacher = None
    if args.teacher_model_name_or_path:
        teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher_model_name_or_path)
        check_teacher(model, teacher)
        model = AutoModelForSequenceClassification.from_pretrained(args.teacher_model_name_or_path)
        args.teacher_model_name_or_path = None  # handed over as an object below
    # every refusal that depends only on the arguments and the model's shape, before the dense stage trains
    check_l0_run(model, args, num_train_examples=len(tokenized["train"]))
    dense_seconds = 0.0
    if teacher is None and (
        model_args.dense_finetune == "yes" or (model_args.dense_finetune == "auto" and head_is_new)
    ):
        logger.info(
            "dense fine-tuning stage: the teacher (classification head was %s)", "new" if head_is_new else "pretrained"
        )
        dense_dir = os.path.join(args.output_dir, "dense")
        dense_args = dataclasses.replace(
            args,
            output_dir=dense_dir,
            learning_rate=model_args.dense_learning_rate,
            num_train_epochs=model_args.dense_num_train_epochs,
            max_steps=model_args.dense_max_steps,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
        )
        start = time.perf_counter()
        Trainer(
            model=model,
            args=dense_args,
            train_dataset=tokenized["train"],
            data_collator=collator,
            processing_class=tokenizer,
        ).train()
        dense_seconds = time.perf_counter() - start
        model.save_pretrained(dense_dir)
        tokenizer.save_pretrained(dense_dir)
        teacher = model
        model = AutoModelForSequenceClassification.from_pretrained(dense_dir)
    elif teacher is None:
        teacher = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(names), label2id=label2id, id2label=id2label
        )
    teacher.eval()
    dense_metrics = evaluate_classifier(teacher, tokenized[final_split], collator, args.per_device_eval_batch_size)
    logger.info("dense %s metrics: %s", final_split, dense_metrics)

    use_teacher = args.distill_alpha > 0 or args.distill_layerwise
    trainer = L0Trainer(
        model=model,
        args=args,
        teacher_model=teacher if use_teacher else None,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    prune_seconds = time.perf_counter() - start
    final_eval = trainer.evaluate()
    reached = final_eval["eval_deterministic_sparsity"]
    gated_metrics = evaluate_classifier(
        trainer.model, tokenized[final_split], collator, args.per_device_eval_batch_size
    )

    trainer.save_model()  # the compact model with --prune_at_end (default)
    compact = hf_l0.from_pretrained(args.output_dir) if args.prune_at_end else trainer.compact_model()
    pruned_metrics = evaluate_classifier(compact, tokenized[final_split], collator, args.per_device_eval_batch_size)
    logger.info("pruned %s metrics: %s (gated: %s)", final_split, pruned_metrics, gated_metrics)

    rows = [tokenized[final_split][i] for i in range(min(model_args.latency_batch_size, len(tokenized[final_split])))]
    batch = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=data_args.max_seq_length)(rows)
    batch.pop("labels", None)
    latency = compare_latency(teacher, compact, dict(batch), model_args.latency_repeats, model_args.latency_threads)
    dense_params, pruned_params = count_parameters(teacher), count_parameters(compact)
    summary = {
        "split": final_split,
        "num_examples": len(tokenized[final_split]),
        "latency_batch": [len(rows), data_args.max_seq_length],
        "dense": dense_metrics,
        "pruned": pruned_metrics,
        "gated": gated_metrics,
        "target_sparsity": args.target_sparsity,
        "reached_sparsity": reached,
        "dense_parameters": dense_params,
        "pruned_parameters": pruned_params,
        **latency,
        "saved_to": os.path.abspath(args.output_dir) if args.prune_at_end else None,
        "dense_finetune_seconds": dense_seconds,
        "prune_seconds": prune_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    # a FLOPs / latency target: the target against the FLOPs counted and the latency measured at its shape
    cost_fields, cost_rows = cost_target_summary(
        args, trainer.cost_target, teacher, compact, model_args.latency_repeats
    )
    summary.update(cost_fields)
    report(
        args,
        summary,
        [
            (f"{final_split} accuracy", dense_metrics["accuracy"], pruned_metrics["accuracy"]),
            (f"{final_split} F1", dense_metrics["f1"], pruned_metrics["f1"]),
            *cost_rows,
        ],
        f"{len(rows)} x {data_args.max_seq_length}",
        title=f"L0 pruning summary ({model_args.model_name_or_path})",
    )
    return summary


if __name__ == "__main__":
    main()
