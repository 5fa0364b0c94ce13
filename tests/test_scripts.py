"""Both example scripts end to end on tiny models and small real-looking data (--max_steps small).

The end-to-end runs assert what a user relies on: the reached sparsity is the target (within one structure's share
of these tiny models) and is the real parameter count of the saved model, and the pruned model beats chance by a
wide margin on held-out data (an easy synthetic sentiment task / a repetitive text, with learning rates large enough
to learn them in a few dozen steps).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from transformers import AutoTokenizer

import hf_l0
from hf_l0 import hub
from hf_l0.demo import assets

REVIEWS = [
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés .",
    "an utterly charming and hilarious film .",
    "it's a mess , dull and pointless .",
    "one of the best films of the year .",
    "a tedious , lifeless exercise in futility .",
]


def _load_script(name: str):
    module = importlib.import_module(f"hf_l0.commands.{name}")
    return module


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(assets.minilm_dir())  # a real WordPiece tokenizer, offline


@pytest.fixture()
def tiny_bert_dir(tmp_path, tokenizer):
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    tf.BertModel(config).save_pretrained(tmp_path / "bert")  # no classification head: the script fine-tunes one
    tokenizer.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.fixture()
def review_files(tmp_path):
    import csv

    paths = {}
    for split, n in (("train", 48), ("validation", 12), ("test", 12)):
        paths[split] = tmp_path / f"{split}.csv"
        with open(paths[split], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "sentiment"])
            for i in range(n):
                writer.writerow([REVIEWS[i % len(REVIEWS)], "pos" if i % 2 == 0 else "neg"])
    return paths


# Sentiment decided by one word; the nouns around it differ between train and held-out splits (no memorising).
POSITIVE, NEGATIVE = ["great", "wonderful", "charming", "brilliant"], ["awful", "boring", "dull", "terrible"]
NOUNS = ["film", "movie", "plot", "cast", "story", "script", "ending", "acting", "music", "pacing", "director", "scene"]
TARGET_TOL = 0.01  # the final phase pins the deterministic sparsity to the target up to one structure's share


@pytest.fixture()
def sentiment_files(tmp_path):
    import csv
    import random

    rng, paths = random.Random(0), {}
    for split, n, nouns in (("train", 64, NOUNS[:8]), ("validation", 16, NOUNS[8:]), ("test", 24, NOUNS[8:])):
        paths[split] = tmp_path / f"{split}_sentiment.csv"
        with open(paths[split], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "sentiment"])
            for i in range(n):
                positive = i % 2 == 0
                word = rng.choice(POSITIVE if positive else NEGATIVE)
                writer.writerow([f"the {rng.choice(nouns)} was {word} .", "pos" if positive else "neg"])
    return paths


def _prunable_parameters(model, structures: str) -> int:
    """Attention + FFN parameters of the dense ``model`` (what the target is a fraction of)."""
    names = structures.split(",")
    patched = hf_l0.patch_model(model, hf_l0.L0Config(**{s: s in names for s in ("heads", "ffn", "hidden", "layers")}))
    return int(hf_l0.full_size(patched).prunable.item())


def _check_target_and_counts(summary: dict, model_on_disk, structures: str) -> None:
    assert abs(summary["reached_sparsity"] - summary["target_sparsity"]) <= TARGET_TOL, summary
    removed = summary["dense_parameters"] - summary["pruned_parameters"]  # no hidden gates: all from attention + FFN
    assert removed == pytest.approx(
        summary["reached_sparsity"] * _prunable_parameters(model_on_disk, structures), abs=0.5
    )
    assert summary["speedup"] == pytest.approx(summary["dense_latency_ms"] / summary["pruned_latency_ms"])


def _common(out: Path) -> list[str]:
    return [
        "--output_dir",
        str(out),
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "8",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        "--logging_steps",
        "2",
        "--latency_repeats",
        "3",
        "--latency_batch_size",
        "2",
    ]


@pytest.mark.slow
def test_prune_classification_end_to_end(tmp_path, tiny_bert_dir, sentiment_files):
    script = _load_script("prune_classification")
    out = tmp_path / "out"
    summary = script.main(
        [
            "--model_name_or_path",
            str(tiny_bert_dir),
            "--train_file",
            str(sentiment_files["train"]),
            "--validation_file",
            str(sentiment_files["validation"]),
            "--test_file",
            str(sentiment_files["test"]),
            "--text_column",
            "sentence",
            "--label_column",
            "sentiment",
            "--max_seq_length",
            "16",
            "--dense_max_steps",
            "48",
            "--dense_learning_rate",
            "5e-3",
            "--target_sparsity",
            "0.4",
            "--l0_structures",
            "heads,ffn",
            *_common(out),
            "--max_steps",
            "16",
            "--learning_rate",
            "5e-3",
            "--warmup_steps",
            "4",
        ]
    )
    model = hub.from_pretrained(out)
    assert isinstance(model, tf.BertForSequenceClassification)
    assert sum(p.numel() for p in model.parameters()) == summary["pruned_parameters"]
    _check_target_and_counts(summary, tf.BertForSequenceClassification.from_pretrained(out / "dense"), "heads,ffn")
    # 24 held-out sentences, balanced: chance is 0.5, and 18 right by chance has p ~ 0.01
    assert summary["split"] == "test" and summary["dense"]["accuracy"] >= 0.75, summary
    assert summary["pruned"]["accuracy"] >= 0.75, summary
    assert summary["gated"]["accuracy"] == summary["pruned"]["accuracy"]  # the compact model is the gated one
    assert (out / "dense" / "config.json").is_file()  # the dense stage ran: the head was new
    assert json.loads((out / "summary.json").read_text())["target_sparsity"] == 0.4
    # the README's main-job table renders from exactly this file (benchmarks/update_readme.py)
    (tmp_path / "results" / "main_job").mkdir(parents=True)
    (tmp_path / "results" / "main_job" / "summary.json").write_bytes((out / "summary.json").read_bytes())
    from benchmarks.update_readme import render_main_job

    assert f"| {summary['pruned']['accuracy']:.3f} |" in render_main_job(tmp_path / "results")


def test_prune_classification_missing_column_fails_before_training(tmp_path, tiny_bert_dir, review_files):
    script = _load_script("prune_classification")
    with pytest.raises(ValueError, match="--label_column 'label' is not a column of the train split"):
        script.main(
            [
                "--model_name_or_path",
                str(tiny_bert_dir),
                "--train_file",
                str(review_files["train"]),
                "--validation_file",
                str(review_files["validation"]),
                "--text_column",
                "sentence",
                "--target_sparsity",
                "0.4",
                *_common(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out" / "dense").exists()


def test_prune_classification_bad_target_fails_at_parse(tmp_path, tiny_bert_dir, review_files):
    script = _load_script("prune_classification")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        script.main(
            [
                "--model_name_or_path",
                str(tiny_bert_dir),
                "--train_file",
                str(review_files["train"]),
                "--validation_file",
                str(review_files["validation"]),
                "--target_sparsity",
                "1.2",
                *_common(tmp_path / "out"),
            ]
        )


@pytest.mark.slow
def test_prune_clm_end_to_end(tmp_path, tokenizer):
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    text = "\n".join(f"{REVIEWS[i % len(REVIEWS)]} and so the king said {i}" for i in range(120))
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "validation.txt").write_text(text[:800])
    script = _load_script("prune_clm")
    out = tmp_path / "out"
    summary = script.main(
        [
            "--model_name_or_path",
            str(tmp_path / "llama"),
            "--train_file",
            str(tmp_path / "train.txt"),
            "--validation_file",
            str(tmp_path / "validation.txt"),
            "--block_size",
            "16",
            "--target_sparsity",
            "0.3",
            "--distill_alpha",
            "0.5",
            *_common(out),
            "--max_steps",
            "12",
            "--learning_rate",
            "1e-2",
        ]
    )
    model = hub.from_pretrained(out)
    assert isinstance(model, tf.LlamaForCausalLM)
    assert sum(p.numel() for p in model.parameters()) == summary["pruned_parameters"]
    _check_target_and_counts(summary, tf.LlamaForCausalLM.from_pretrained(tmp_path / "llama"), "heads,ffn,layers")
    # chance (a uniform guess over the vocabulary) has perplexity vocab_size; the untrained dense model is there too
    assert summary["dense_perplexity"] > 0.5 * tokenizer.vocab_size
    assert summary["pruned_perplexity"] < 0.1 * tokenizer.vocab_size, summary


@pytest.mark.slow
def test_scripts_have_useful_help():
    import subprocess

    for name in ("prune-classifier", "prune-clm"):
        result = subprocess.run(["hf-l0", name, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "--target_sparsity" in result.stdout and "--gate_learning_rate" in result.stdout
        assert ("--block_size" in result.stdout) == (name == "prune-clm")
        assert f"usage: hf-l0 {name}" in result.stdout


def test_prune_clm_to_a_latency_target(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_L0_CACHE", str(tmp_path / "cache"))  # the latency table is measured into it
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    text = "\n".join(f"{REVIEWS[i % len(REVIEWS)]} and so the king said {i}" for i in range(60))
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "validation.txt").write_text(text[:400])
    # measured first (the script then loads it from the cache) to pick a reachable target: on so small a model the
    # fixed cost (embeddings, norms, head, dispatch) is most of the time
    from hf_l0.cost.latency import latency_table

    table = latency_table(
        tf.LlamaForCausalLM.from_pretrained(tmp_path / "llama"), batch_size=2, seq_len=16, threads=1, progress=False
    )
    target = round(0.5 * (1.0 - table.fixed_s / table.predict_dense()), 3)
    summary = _load_script("prune_clm").main(
        [
            "--model_name_or_path",
            str(tmp_path / "llama"),
            "--train_file",
            str(tmp_path / "train.txt"),
            "--validation_file",
            str(tmp_path / "validation.txt"),
            "--block_size",
            "16",
            "--target_speedup",
            str(1.0 / (1.0 - target)),
            "--cost_seq_len",
            "16",
            "--cost_batch_size",
            "2",
            "--distill_alpha",
            "0",
            *_common(tmp_path / "out"),
            "--max_steps",
            "10",
            "--learning_rate",
            "1e-2",
        ]
    )
    assert summary["target_metric"] == "latency" and summary["cost_batch_size"] == 2
    # the run lands on the target as the table predicts it; the measured reduction is reported next to it
    # ... up to one step of the table: on so small a model one KV group is a few hundredths of the latency and FFN
    # widths above a few neurons time alike, so the target can fall between two reachable latencies
    steps = [b - a for column in (table.attention_s, table.ffn_s) for a, b in zip(column, column[1:])]
    tolerance = max(TARGET_TOL, max(steps) / table.predict_dense())
    assert abs(summary["predicted_latency_reduction"] - target) <= tolerance, (summary, tolerance)
    assert -1.0 < summary["measured_latency_reduction"] < 1.0
    assert summary["pruned_gflops_per_token"] < summary["dense_gflops_per_token"]
    assert len(list((tmp_path / "cache" / "latency").glob("LlamaForCausalLM-b2-s16-t1-*.json"))) == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--cost_seq_len", "16", "--target_flops_reduction", "0.99"],
            "a flops reduction of 0.99 cannot be reached",
        ),
        (
            ["--cost_seq_len", "16", "--l0_structures", "heads,ffn,hidden", "--target_speedup", "1.5"],
            "a speedup target does not support hidden-dimension gates",
        ),
        (["--sparsity_warmup_steps", "50", "--target_sparsity", "0.3"], "not shorter than the search stage's 3 steps"),
    ],
    ids=["flops-unreachable", "latency-hidden", "warmup-too-long"],
)
def test_prune_classification_refuses_before_the_dense_stage_and_any_timing(
    tmp_path, tiny_bert_dir, review_files, monkeypatch, flags, message
):
    monkeypatch.setenv("HF_L0_CACHE", str(tmp_path / "cache"))
    script = _load_script("prune_classification")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(script.Trainer, "train", no_training)
    with pytest.raises(ValueError, match=message):
        script.main(
            [
                "--model_name_or_path",
                str(tiny_bert_dir),
                "--train_file",
                str(review_files["train"]),
                "--validation_file",
                str(review_files["validation"]),
                "--text_column",
                "sentence",
                "--label_column",
                "sentiment",
                "--dense_finetune",
                "yes",
                *_common(tmp_path / "out"),
                *flags,
            ]
        )
    assert not (tmp_path / "out" / "dense").exists() and not (tmp_path / "cache").exists()


@pytest.fixture()
def short_bert_dir(tmp_path, tokenizer):
    """A BERT with 32 positions: shorter than the script's default --max_seq_length (64)."""
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    tf.BertModel(config).save_pretrained(tmp_path / "short")
    tokenizer.save_pretrained(tmp_path / "short")
    return tmp_path / "short"


def _classification_flags(model_dir: Path, train: Path, validation: Path, out: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--train_file",
        str(train),
        "--validation_file",
        str(validation),
        "--text_column",
        "sentence",
        "--label_column",
        "sentiment",
        "--target_sparsity",
        "0.3",
        "--dense_max_steps",
        "2",
        *_common(out),
    ]


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("positions", [], r"--max_seq_length 64 is longer than the model's 32 positions.*pass --max_seq_length 32"),
        ("header-only", ["--max_seq_length", "32"], r"--validation_file .*header\.csv .*no examples"),
        ("empty", ["--max_seq_length", "32"], r"--validation_file .*empty\.csv is empty"),
        ("no-eval", ["--max_seq_length", "32", "--max_eval_samples", "0"], "--max_eval_samples 0 leaves no example"),
    ],
)
def test_prune_classification_bad_data_and_settings_get_one_message_before_training(
    tmp_path, short_bert_dir, review_files, monkeypatch, case, extra, message
):
    script = _load_script("prune_classification")
    (tmp_path / "header.csv").write_text("sentence,sentiment\n")
    (tmp_path / "empty.csv").write_text("")
    validation = {"header-only": tmp_path / "header.csv", "empty": tmp_path / "empty.csv"}.get(
        case, review_files["validation"]
    )
    monkeypatch.setattr(script.Trainer, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    flags = _classification_flags(short_bert_dir, review_files["train"], validation, tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        script.main(flags + extra)


def test_prune_classification_reads_files_with_other_columns_and_a_run_that_trained_writes_its_summary(
    tmp_path, short_bert_dir, review_files, monkeypatch
):
    import csv

    script = _load_script("prune_classification")
    validation = tmp_path / "validation-extra.csv"
    with open(validation, "w", newline="") as f:  # one more column than the training file, which the script ignores
        writer = csv.writer(f)
        writer.writerow(["sentence", "sentiment", "source"])
        writer.writerows([(REVIEWS[i % len(REVIEWS)], "pos" if i % 2 == 0 else "neg", "web") for i in range(8)])

    def broken_timing(*args, **kwargs):
        raise RuntimeError("timing failed")

    monkeypatch.setattr(script, "compare_latency", broken_timing)  # fails after training and saving
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="timing failed"):
        script.main(
            _classification_flags(short_bert_dir, review_files["train"], validation, out) + ["--max_seq_length", "32"]
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"] == "RuntimeError: timing failed"
    assert 0.0 < summary["reached_sparsity"] < 1.0 and summary["saved_to"] == str(out.resolve())
    assert summary["pruned_parameters"] == sum(p.numel() for p in hf_l0.from_pretrained(out).parameters())
