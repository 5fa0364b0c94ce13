"""``hf-l0 prune-classifier``: prune a sequence-classification model to a target sparsity with L0 gates (CoFi), in
the style of run_glue.py.

Stages: (1) optional dense fine-tuning that produces the teacher when the model's classification head is new;
(2) L0 pruning with distillation from the dense teacher (`L0Trainer`); (3) the compact model is saved, reloaded,
evaluated and timed against the dense one, and a summary table is printed (also written as summary.json).

Fully offline example (packaged MiniLM and the packaged rotten_tomatoes reviews):

    hf-l0 prune-classifier --model_name_or_path hf_l0:minilm \
        --dataset_name hf_l0:rotten_tomatoes --target_sparsity 0.6 --output_dir out/minilm-rt
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    set_seed,
)

from hf_l0.arch import get_adapter
from hf_l0.cost.targets import cost_target_summary
from hf_l0.demo import data as hf_l0_data
from hf_l0.demo.evaluation import compute_metrics, evaluate_classifier
from hf_l0.demo.scripting import (
    compare_latency,
    count_parameters,
    parse_arguments,
    report,
    resolve_model_path,
    write_json,
)
from hf_l0.hub.load import from_pretrained
from hf_l0.training.distill import check_teacher
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments, check_l0_run

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
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag} {value} leaves no example: pass a positive number, or omit it for all.")
        if self.max_seq_length < 1:
            raise ValueError(f"--max_seq_length {self.max_seq_length} must be a positive number of tokens.")
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
        raw = DatasetDict({split: _load_file(split, path, extension, cache_dir) for split, path in files.items()})
    if "train" not in raw or "validation" not in raw:
        raise ValueError(f"the dataset needs train and validation splits, it has {list(raw)}.")
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise ValueError(f"the {split} split of {data_args.dataset_name} has no examples.")
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


def _load_file(split: str, path: str, extension: str, cache_dir: str | None) -> Dataset:
    """One split from its own file (so the files may differ in columns the script does not read), with an error
    that names the file and the flag for a missing, empty, header-only or unreadable one."""
    flag = f"--{split}_file"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path} does not exist.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{flag} {path} is empty: it needs a header row and at least one example.")
    try:
        dataset = load_dataset(extension, data_files={split: path}, cache_dir=cache_dir)[split]
    except Exception as err:  # noqa: BLE001 - datasets / pandas / pyarrow errors, reported with the file
        reason = " ".join(str(err).split()) or type(err).__name__
        if "corresponds to no data" in reason:
            reason = "no examples (a header row only?)"
        raise ValueError(f"{flag} {path} could not be read as {extension}: {reason[:300]}") from None
    if len(dataset) == 0:
        raise ValueError(f"{flag} {path} has no examples (a header row only?).")
    return dataset


def position_limit(config) -> int | None:
    """The longest input the model's position embeddings take (RoBERTa-style models offset positions past the
    padding index), or None when the config sets no limit."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (getattr(config, "pad_token_id", 1) or 0) + 1
    return limit


def check_lengths(config, data_args: DataArguments, args: L0TrainingArguments) -> None:
    """Sequence lengths the model's positions cannot hold fail here, before any training (the latency comparison
    pads to --max_seq_length; a FLOPs / latency target runs at --cost_seq_len)."""
    limit = position_limit(config)
    if limit is None:
        return
    lengths = [("--max_seq_length", data_args.max_seq_length)]
    if getattr(args, "target_metric", "params") != "params":
        lengths.append(("--cost_seq_len", args.cost_seq_len))
    for flag, value in lengths:
        if value > limit:
            raise ValueError(
                f"{flag} {value} is longer than the model's {limit} positions (max_position_embeddings): pass "
                f"{flag} {limit} or less."
            )


def label_names(raw: DatasetDict, label_column: str) -> list:
    feature = raw["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return sorted(set(raw["train"][label_column]))


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, L0TrainingArguments), prog="hf-l0 prune-classifier")


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
    tokenized = DatasetDict(
        {split: data.map(preprocess, batched=True, remove_columns=data.column_names) for split, data in raw.items()}
    )
    collator = DataCollatorWithPadding(tokenizer)
    final_split = "test" if "test" in tokenized and "labels" in tokenized["test"].column_names else "validation"

    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(names), label2id=label2id, id2label=id2label, output_loading_info=True
    )
    get_adapter(model)  # fail now, not after fine-tuning, for a model type without an adapter
    check_lengths(model.config, data_args, args)
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
    summary: dict = {
        "split": final_split,
        "num_examples": len(tokenized[final_split]),
        "dense": dense_metrics,
        "target_sparsity": args.target_sparsity,
        "target_flops_reduction": args.target_flops_reduction,
        "target_speedup": args.target_speedup,
        "dense_finetune_seconds": dense_seconds,
        "prune_seconds": prune_seconds,
    }
    try:  # the run trained: whatever fails from here on, summary.json keeps what was measured, and the error
        final_eval = trainer.evaluate()
        summary["reached_sparsity"] = final_eval["eval_deterministic_sparsity"]
        summary["gated"] = evaluate_classifier(
            trainer.model, tokenized[final_split], collator, args.per_device_eval_batch_size
        )
        trainer.save_model()  # the compact model with --prune_at_end (default)
        summary["saved_to"] = os.path.abspath(args.output_dir) if args.prune_at_end else None
        compact = from_pretrained(args.output_dir) if args.prune_at_end else trainer.compact_model()
        pruned_metrics = evaluate_classifier(compact, tokenized[final_split], collator, args.per_device_eval_batch_size)
        summary.update(
            pruned=pruned_metrics,
            dense_parameters=count_parameters(teacher),
            pruned_parameters=count_parameters(compact),
        )
        logger.info("pruned %s metrics: %s (gated: %s)", final_split, pruned_metrics, summary["gated"])

        rows = [
            tokenized[final_split][i] for i in range(min(model_args.latency_batch_size, len(tokenized[final_split])))
        ]
        batch = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=data_args.max_seq_length)(rows)
        batch.pop("labels", None)
        summary["latency_batch"] = [len(rows), data_args.max_seq_length]
        summary.update(
            compare_latency(teacher, compact, dict(batch), model_args.latency_repeats, model_args.latency_threads)
        )
        # a FLOPs / latency target: the target against the FLOPs counted and the latency measured at its shape
        cost_fields, cost_rows = cost_target_summary(
            args, trainer.cost_target, teacher, compact, model_args.latency_repeats
        )
        summary.update(cost_fields)
        summary["wall_seconds"] = time.perf_counter() - wall_start
    except Exception as err:
        summary["error"] = f"{type(err).__name__}: {' '.join(str(err).split())}"
        summary["wall_seconds"] = time.perf_counter() - wall_start
        if args.should_save:
            write_json(os.path.join(args.output_dir, "summary.json"), summary)
        logger.error("the run trained, then failed: %s (summary.json holds what was measured)", summary["error"])
        raise
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
