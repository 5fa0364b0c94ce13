"""Every benchmark in --quick mode (tiny models, a few steps), so the scripts cannot silently rot: the result files
exist, carry the run metadata and hold finite numbers. Outputs go to tmp_path, never to benchmarks/results."""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

import hf_l0

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import accuracy_sparsity, common, llm, recovery, speed, update_readme  # noqa: E402

METADATA = ("command", "versions", "hardware", "seed", "wall_seconds", "quick")


def _check_outputs(out: Path, name: str, suffixes: tuple[str, ...] = (".json", ".md", ".png")) -> dict:
    for suffix in suffixes:
        assert (out / f"{name}{suffix}").stat().st_size > 0, f"{name}{suffix} missing or empty"
    data = json.loads((out / f"{name}.json").read_text())
    assert all(key in data for key in METADATA)
    assert data["quick"] is True and data["seed"] == 42
    assert {"torch", "transformers", "hf_l0"} <= set(data["versions"]) and data["hardware"]["cpu_count"] >= 1
    assert common.finite_numbers(data), f"{name}.json holds a NaN or infinity"
    assert "QUICK" in (out / f"{name}.md").read_text()
    return data


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("benchmarks")


def test_accuracy_sparsity_quick(out):
    accuracy_sparsity.main(["--quick", "--output_dir", str(out)])
    data = _check_outputs(out, "accuracy_sparsity")
    assert [r["method"] for r in data["runs"]] == ["hf_l0", "magnitude", "fisher", "activation"]
    assert data["methods"] == ["hf_l0", "magnitude", "fisher", "activation"]
    # Quick runs are a few steps on 64 real reviews: too short to beat chance, so check that every number is what it
    # claims to be: accuracies are counts over the test split, sparsities are the saved models' real parameter counts.
    dense_model = tf.AutoModelForSequenceClassification.from_pretrained(out / "models" / "dense")
    prunable = hf_l0.full_size(hf_l0.patch_model(dense_model, hf_l0.L0Config(layers=True))).prunable.item()
    runs = {r["method"]: r for r in data["runs"]}
    for r in data["runs"]:
        assert (r["test_accuracy"] * data["test_size"]) == pytest.approx(round(r["test_accuracy"] * data["test_size"]))
        removed = data["dense"]["parameters"] - r["parameters"]
        assert removed == pytest.approx(r["sparsity"] * prunable, abs=0.5), r
        # every run has its own file, with its provenance, named in the aggregate
        record = json.loads((out / "accuracy_sparsity" / r["provenance"]["file"]).read_text())
        assert (
            record["test_accuracy"] == r["test_accuracy"]
            and record["provenance"]["command"] == r["provenance"]["command"]
        )
        assert set(METADATA) <= set(record["provenance"])
    assert abs(runs["hf_l0"]["sparsity"] - runs["hf_l0"]["target"]) <= 0.05  # a few steps: no final phase to pin it
    name = f"hf_l0-t{runs['hf_l0']['target']:g}-s{runs['hf_l0']['steps']}"
    trajectory = out / "accuracy_sparsity" / "trajectories" / name / "sparsity_trajectory.json"
    record = json.loads((out / "accuracy_sparsity" / "runs" / f"{name}.json").read_text())
    assert json.loads(trajectory.read_text())["rows"] == record["trajectory"]  # the run records its trajectory
    for name in ("magnitude", "fisher", "activation"):  # every baseline is cut to the size hf-l0 reached
        assert abs(runs[name]["sparsity"] - runs["hf_l0"]["sparsity"]) <= 0.03, name
    assert list((out / "models").glob("hf_l0-*/config.json")), "the compact model for speed.py was not saved"
    # the headline numbers: the best baseline is the one of highest validation accuracy, the margin its test gap
    (c,) = data["comparisons"]
    best = max(("magnitude", "fisher", "activation"), key=lambda m: runs[m]["validation_accuracy"])
    assert runs[c["best_baseline"]]["validation_accuracy"] == runs[best]["validation_accuracy"]
    assert c["margin_points"] == pytest.approx(
        100 * (runs["hf_l0"]["test_accuracy"] - runs[c["best_baseline"]]["test_accuracy"])
    )
    assert c["fraction_of_dense"] == pytest.approx(runs["hf_l0"]["test_accuracy"] / data["dense"]["test_accuracy"])


def _stable(data: dict) -> dict:
    """An aggregate without what names the invocation that wrote it."""
    return {k: v for k, v in data.items() if k not in ("command", "started_utc", "wall_seconds", "hardware")}


def test_accuracy_sparsity_resumes_splits_targets_and_collects(out, capsys):
    runs_dir = out / "accuracy_sparsity" / "runs"
    if not (runs_dir / "dense.json").is_file():
        pytest.skip("needs the quick run of test_accuracy_sparsity_quick")
    before = {p.name: p.read_text() for p in runs_dir.glob("*.json")}
    # A second process with another target: the dense stage and the finished 0.75 runs are reused, 0.5 runs.
    data = accuracy_sparsity.main(["--quick", "--output_dir", str(out), "--targets", "0.5", "0.75"])
    printed = capsys.readouterr().out
    assert "dense: " in printed and "reused" in printed and printed.count("skipped") == 4
    assert all((runs_dir / name).read_text() == text for name, text in before.items()), "a finished run was rerun"
    assert data["targets"] == [0.5, 0.75] and len(data["runs"]) == 8
    assert all(r["provenance"]["file"] for r in data["runs"])
    # --collect runs nothing and rebuilds the same aggregate from the run files
    collected = accuracy_sparsity.main(["--quick", "--output_dir", str(out), "--collect"])
    assert _stable(collected) == _stable(data)
    assert sorted(p.name for p in runs_dir.glob("*.json")) == sorted(
        {*before, *(f"{r['method']}-t0.5-s6.json" for r in data["runs"] if r["target"] == 0.5)}
    )
    # a stored run with other settings is an error naming the way out, not a silent mix of budgets
    with pytest.raises(SystemExit, match="--overwrite"):
        accuracy_sparsity.main(["--quick", "--output_dir", str(out), "--learning_rate", "1e-4", "--methods", "hf-l0"])


def test_accuracy_steps_curve_quick(out):
    if not (out / "accuracy_sparsity" / "runs" / "dense.json").is_file():
        pytest.skip("needs the quick run of test_accuracy_sparsity_quick")
    accuracy_sparsity.main(["--quick", "--output_dir", str(out), "--steps_curve", "100", "300"])  # 2 and 6 steps
    curve = _check_outputs(out, "accuracy_steps")
    sweep = json.loads((out / "accuracy_sparsity.json").read_text())
    at_reference = {r["method"]: r for r in sweep["runs"] if r["target"] == 0.75}
    best = max(("magnitude", "fisher", "activation"), key=lambda m: at_reference[m]["validation_accuracy"])
    assert curve["best_baseline"] == best and curve["steps"] == [2, 6] and curve["choice_steps"] == 6
    assert sorted((r["method"], r["steps"]) for r in curve["runs"] if r["steps"] == 2) == sorted(
        [("hf_l0", 2), (best, 2)]
    )  # the other budgets run hf-l0 and the chosen baseline only
    assert [c["steps"] for c in curve["comparisons"]] == [2, 6]
    l0 = {r["steps"]: r for r in curve["runs"] if r["method"] == "hf_l0"}
    for c in curve["comparisons"]:
        assert c["above"] == (c["margin_points"] > 0) and c["best_baseline"] == best
        assert c["landing_error"] == pytest.approx(l0[c["steps"]]["sparsity"] - 0.75)


def test_recovery_quick(out):
    """Two hf-l0 variants and Fisher over two seeds, then the mask-quality diagnostic: per-example correctness stored,
    the variant chosen on validation, the paired difference computed on the same test examples."""
    common_args = ["--quick", "--output_dir", str(out / "rec"), "--seeds", "0", "1"]
    variants = ["--variants", "recovery_ratio=0.5", "recovery_ratio=0"]
    recovery.main([*common_args, *variants, "--methods", "hf-l0,fisher"])
    recovery.main([*common_args, "--methods", "mask", "--mask_of", "recovery_ratio=0.5"])
    data = _check_outputs(out / "rec", "recovery")
    groups = {(g["method"], g["variant"]): g for g in data["groups"]}
    assert set(groups) == {
        ("hf_l0", "recovery_ratio=0.5"),
        ("hf_l0", "recovery_ratio=0"),
        ("fisher", None),
        ("mask", "recovery_ratio=0.5"),
    }
    assert all(g["seeds"] == [0, 1] for g in groups.values())
    runs = out / "rec" / "recovery" / "runs"
    frozen = json.loads((runs / "hf_l0-recoveryratio0.5-t0.75-s6-seed0.json").read_text())
    assert (
        frozen["frozen_step"] == 3
        and json.loads((runs / "hf_l0-recoveryratio0-t0.75-s6-seed0.json").read_text())["frozen_step"] == -1
    )
    assert len(frozen["test_correct"]) == 32 and set(frozen["test_correct"]) <= {"0", "1"}
    mask = json.loads((runs / "mask-recoveryratio0.5-t0.75-s6-seed0.json").read_text())
    assert mask["settings"]["mask_of"][0] == frozen["name"] and abs(mask["sparsity"] - frozen["sparsity"]) < 0.02
    (comparison,) = data["comparisons"]
    best = max((g for g in groups.values() if g["method"] == "hf_l0"), key=lambda g: g["validation_accuracy"])
    assert comparison["variant"] == best["variant"] and comparison["best_baseline"] == "fisher"
    fisher = [json.loads((runs / f"fisher-t0.75-s6-seed{s}.json").read_text()) for s in (0, 1)]
    chosen = [
        json.loads((runs / f"hf_l0-{recovery.variant_slug(best['variant'])}-t0.75-s6-seed{s}.json").read_text())
        for s in (0, 1)
    ]
    diffs = [int(a) - int(b) for x, y in zip(chosen, fisher) for a, b in zip(x["test_correct"], y["test_correct"])]
    assert comparison["paired_points"][0] == pytest.approx(100 * statistics.fmean(diffs))
    assert "paired difference" in (out / "rec" / "recovery.md").read_text()


def test_teacher_missing_from_a_checkout_is_trained_again_or_refused(tmp_path, capsys):
    """Model directories are git-ignored: on a fresh checkout the stored runs' teacher is trained again, and its
    record stands only with the same weights; other weights stop the run, and collect leaves out runs of a teacher
    that is not the store's."""
    command = ["--quick", "--output_dir", str(tmp_path), "--methods", "fisher"]
    recovery.main(command)
    runs = tmp_path / "recovery" / "runs"
    dense_file, fisher_file = runs / "dense.json", runs / "fisher-t0.75-s6-seed0.json"
    dense_text, fisher_text = dense_file.read_text(), fisher_file.read_text()
    assert len(json.loads(dense_text)["weights_sha256"]) == 64
    teacher_dir = tmp_path / "models" / "recovery" / "dense"
    shutil.rmtree(teacher_dir)
    capsys.readouterr()
    recovery.main(command)
    assert "trained again, the same weights" in capsys.readouterr().out
    assert (teacher_dir / "config.json").is_file()
    assert dense_file.read_text() == dense_text and fisher_file.read_text() == fisher_text  # record and run stand
    # another teacher's weights: refused, naming the way out, with the record and the runs untouched
    record = json.loads(dense_text)
    dense_file.write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    shutil.rmtree(teacher_dir)
    with pytest.raises(SystemExit, match="gave other weights.*Copy the original"):
        recovery.main(command)
    assert fisher_file.read_text() == fisher_text and not teacher_dir.exists()
    # a record from before digests: refused before any training, nothing to check the weights against
    dense_file.write_text(json.dumps({k: v for k, v in record.items() if k != "weights_sha256"}))
    with pytest.raises(SystemExit, match="records no weights digest"):
        recovery.main(command)
    # a run distilled from another teacher is named and left out of the aggregate
    dense_file.write_text(dense_text)
    fisher = json.loads(fisher_text)
    fisher["settings"]["teacher"] = ["elsewhere", "2000-01-01T00:00:00+00:00"]
    fisher_file.write_text(json.dumps(fisher))
    capsys.readouterr()
    assert recovery.main([*command, "--collect"]) is None
    assert "left out, distilled from another teacher" in capsys.readouterr().out


def test_recovery_variant_values_may_hold_commas():
    """``l0_structures=heads,ffn,layers`` is one setting: a comma starts a new one only before ``key=``."""
    assert recovery.parse_variant("recovery_ratio=0.5,l0_structures=heads,ffn,layers,gate_learning_rate=1") == {
        "recovery_ratio": 0.5,
        "l0_structures": "heads,ffn,layers",
        "gate_learning_rate": 1.0,
    }
    with pytest.raises(SystemExit, match="takes a number"):
        recovery.parse_variant("recovery_ratio=0.5,heads")
    with pytest.raises(SystemExit, match="not key=value"):
        recovery.parse_variant("recovery_ratio=0.5,no_such_field=1")


def test_recovery_compares_the_variant_of_best_validation_among_those_with_the_most_seeds():
    lucky = {"variant": "one seed", "seeds": [0], "validation_accuracy": 0.9}
    chosen = {"variant": "b", "seeds": [0, 1, 2], "validation_accuracy": 0.8}
    other = {"variant": "c", "seeds": [0, 1, 2], "validation_accuracy": 0.79}
    assert recovery.best_by_validation([lucky, other, chosen]) is chosen
    assert recovery.best_by_validation([lucky]) is lucky and recovery.best_by_validation([]) is None


def test_speed_quick(out):
    speed.main(["--quick", "--output_dir", str(out)])
    data = _check_outputs(out, "speed")
    assert {r["batch_size"] for r in data["latency"]} == {1, 32}
    for r in data["latency"]:  # timings have no order on a tiny model; the reported ratios must be their ratios
        assert r["ideal_speedup"] > 1.0 and r["parameters"] < r["dense_parameters"]
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["compact_ms"])
        assert r["measured_over_ideal"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
        share = r["fixed_share_of_dense"]
        assert r["fixed_ms"] > 0 and r["ideal_with_fixed_cost"] == pytest.approx(
            1.0 / (share + (1.0 - share) / r["ideal_speedup"])
        )
        assert r["measured_over_ideal_with_fixed_cost"] == pytest.approx(r["speedup"] / r["ideal_with_fixed_cost"])
    training = data["training"]
    for kind in ("trainer", "l0_trainer"):
        assert training[kind]["step_seconds"] == pytest.approx(statistics.median(training[kind]["step_times"]))
    assert training["step_time_ratio"] == pytest.approx(
        training["l0_trainer"]["step_seconds"] / training["trainer"]["step_seconds"]
    )
    assert training["peak_memory_ratio"] == pytest.approx(
        training["l0_trainer"]["peak_rss_mib"] / training["trainer"]["peak_rss_mib"]
    )


def test_llm_quick(out, capsys):
    llm.main(["--quick", "--output_dir", str(out)])
    data = _check_outputs(out, "llm")
    assert [r["method"] for r in data["runs"]] == ["hf-l0", "magnitude", "fisher", "activation"]
    models = {r["method"]: r for r in data["runs"]}
    dense, finetuned = data["dense"], data["dense_finetuned"]
    assert finetuned["parameters"] == dense["parameters"] and finetuned["steps"] == data["budget"]["max_steps"]
    assert all(m["perplexity"] > 1.0 and m["selection_perplexity"] > 1.0 for m in [dense, finetuned, *data["runs"]])
    assert all(r["tokens_per_second"] > 0 and r["dense_tokens_per_second"] > 0 for r in data["runs"])
    (c,) = data["comparisons"]
    best = min(("magnitude", "fisher", "activation"), key=lambda m: models[m]["selection_perplexity"])
    assert c["best_baseline"] == best and c["ratio"] == pytest.approx(
        models["hf-l0"]["perplexity"] / models[best]["perplexity"]
    )
    assert data["budget"]["train_tokens"] > 0
    assert abs(models["hf-l0"]["sparsity"] - c["target"]) <= 0.05
    assert abs(models["magnitude"]["sparsity"] - models["hf-l0"]["sparsity"]) <= 0.02  # cut to hf-l0's size
    # both sparsities share one denominator (the dense attention + FFN count): removed counts are in their ratio
    removed = {name: dense["parameters"] - models[name]["parameters"] for name in ("hf-l0", "magnitude")}
    assert removed["hf-l0"] * models["magnitude"]["sparsity"] == pytest.approx(
        removed["magnitude"] * models["hf-l0"]["sparsity"], rel=1e-9
    )
    # a second invocation finds every run finished; --collect rebuilds the same aggregate
    capsys.readouterr()
    again = llm.main(["--quick", "--output_dir", str(out)])
    assert capsys.readouterr().out.count("skipped") == 6  # dense, dense fine-tuned, hf-l0 and three baselines
    assert _stable(again) == _stable(data)
    assert _stable(llm.main(["--quick", "--output_dir", str(out), "--collect"])) == _stable(data)


def test_onnx_speed_quick(out):
    """Dense and compact classifiers in PyTorch, ONNX Runtime fp32 and int8: the accuracies are those of the models
    (recomputed in PyTorch), ONNX Runtime fp32 predicts what PyTorch does, the reported ratios and goals are those of
    the reported timings, and the int8 graph runs quantized kernels."""
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    pytest.importorskip("onnxscript", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    from benchmarks import onnx_speed
    from hf_l0.cost.measure import forward_flops
    from hf_l0.demo.evaluation import metrics_from_logits

    data = onnx_speed.main(["--quick", "--threads", "1", "--output_dir", str(out)])
    _check_outputs(out, "onnx_speed", (".json", ".md"))
    assert data["parameters"]["compact"] < data["parameters"]["dense"]
    # the quick models are seeded: rebuilt here, their PyTorch accuracy and FLOPs are the reported ones
    models_dir = onnx_speed.quick_models(out / "onnx_models", data["seed"])
    models = {"dense": hf_l0.from_pretrained(models_dir / "dense"), "compact": hf_l0.from_pretrained(models_dir)}
    tokenizer = tf.AutoTokenizer.from_pretrained(models_dir)
    batches, labels = onnx_speed.review_batches(tokenizer, data["max_length"], data["accuracy"]["dense"]["test_size"])
    for name, model in models.items():
        accuracy = data["accuracy"][name]
        logits = np.concatenate([model.eval()(**batch).logits.detach().numpy() for batch in batches])
        assert accuracy["pytorch"] == pytest.approx(metrics_from_logits(logits, labels)["accuracy"])
        assert accuracy["ort_fp32"] == accuracy["pytorch"] and accuracy["ort_fp32_max_abs_diff"] <= 1e-4
        for backend in ("ort_fp32", "ort_int8"):
            assert (data["exports"][name][backend]["onnx_mb"]) > 0
        assert data["exports"][name]["ort_fp32"]["check_max_abs_diff"] <= 1e-4
        # the int8 graph runs ONNX Runtime's quantized matrix products, the fp32 one none
        quantized = {"DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeLinear"}
        assert quantized & set(data["op_time_ms"][name]["ort_int8"]) and not (
            quantized & set(data["op_time_ms"][name]["ort_fp32"])
        )
    dense_int8, compact_int8 = (data["op_time_ms"][name]["ort_int8"] for name in ("dense", "compact"))
    unshrunk = data["int8_unshrunk_time"]  # the operators named as not shrinking are those whose times say so
    assert all(dense_int8[op] / compact_int8[op] < 1.2 for op in unshrunk["operators"])
    assert unshrunk["ms"]["compact"] == pytest.approx(sum(compact_int8[op] for op in unshrunk["operators"]))
    assert [r["batch_size"] for r in data["latency"]] == [1, 32]
    for r in data["latency"]:
        ms = r["ms"]
        for backend in onnx_speed.BACKENDS:
            assert r["speedup"][backend] == pytest.approx(ms["dense"][backend] / ms["compact"][backend])
        flops = {name: forward_flops(model, r["seq_len"], r["batch_size"]) for name, model in models.items()}
        assert r["flops"] == flops and r["flops_ratio"] == pytest.approx(flops["dense"] / flops["compact"])
        assert all(diff <= 1e-4 for diff in r["ort_fp32_max_abs_diff"].values())
    # every goal's verdict is that of the reported numbers
    goals = {g["goal"]: g["met"] for g in data["goals"]}
    largest = data["latency"][-1]
    assert goals["int8 compact ÷ dense speedup at 32 × 128 ≥ 0.9 × FLOPs ratio"] == (
        largest["speedup"]["ort_int8"] >= 0.9 * largest["flops_ratio"]
    )
    for name in ("dense", "compact"):
        a = data["accuracy"][name]
        assert goals[f"int8 costs ≤ 1 point of test accuracy ({name})"] == (a["ort_fp32"] - a["ort_int8"] <= 0.01)
        for r in data["latency"]:
            met = goals[f"ONNX Runtime fp32 not slower than PyTorch ({name}, {r['batch_size']} × 128)"]
            assert met == (r["ms"][name]["ort_fp32"] <= r["ms"][name]["pytorch"])
    assert len(goals) == 7


def test_onnx_generation_quick(out):
    """Greedy generation in ONNX Runtime against transformers: the recorded tokens are the dense model's (rebuilt
    here), every timed round decodes all its tokens, and the reported speeds, ratios and goals are the recorded
    ones'."""
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    pytest.importorskip("onnxscript", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    import torch

    from benchmarks import onnx_generation

    data = onnx_generation.main(["--quick", "--threads", "1", "--output_dir", str(out)])
    _check_outputs(out, "onnx_generation", (".json", ".md"))
    new_tokens, decode = data["new_tokens"], data["decode"]
    dense, tokenizer, _ = onnx_generation.load_dense(True, data["seed"])
    prompt = onnx_generation.shakespeare_prompt(tokenizer, data["prompt_tokens"])
    expected = dense.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False
    )
    assert data["tokens"]["dense"]["transformers"] == expected[0, prompt.shape[1] :].tolist()
    for name in ("dense", "compact"):
        tokens = data["tokens"][name]
        assert tokens["identical"] == (tokens["onnxruntime"] == tokens["transformers"]) and tokens["identical"]
        assert tokens["first_difference"] is None and 0 < tokens["generated"] <= new_tokens
        # the decode graph holds the model's fp32 weights (tied embeddings once), and a few constants
        assert decode["weight_bytes"][name] == pytest.approx(4 * data["parameters"][name], rel=0.01)
        for runtime in onnx_generation.RUNTIMES:
            assert decode["steps"][f"{name}/{runtime}"] == new_tokens - 1  # no end-of-sequence stop when timed
            rates = decode["rates"][f"{name}/{runtime}"]
            assert len(rates) == data["rounds"]
            assert decode["tokens_per_s"][name][runtime] == pytest.approx(statistics.median(rates))
    for runtime in onnx_generation.RUNTIMES:
        tps = decode["tokens_per_s"]
        assert decode["speedup"][runtime] == pytest.approx(tps["compact"][runtime] / tps["dense"][runtime])
    ratio = decode["weight_bytes"]["dense"] / decode["weight_bytes"]["compact"]
    assert decode["weight_bytes_ratio"] == pytest.approx(ratio)
    assert [g["met"] for g in data["goals"]] == [True, True, decode["speedup"]["onnxruntime"] >= 0.9 * ratio]


def test_gguf_llamacpp_quick(out, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (opt-in): the llama.cpp benchmark")
    import gguf
    import numpy as np

    from benchmarks import gguf_llamacpp
    from hf_l0.demo.evaluation import perplexity
    from hf_l0.deploy.gguf_export import export_gguf, gguf_layers
    from hf_l0.pruning.baselines import magnitude_prune

    # --compact reads a saved compact directory: the quick dense model magnitude-pruned, saved and loaded back
    dense, _, blocks, _ = gguf_llamacpp.load(gguf_llamacpp.parse_args(["--quick"]))
    compact = magnitude_prune(copy.deepcopy(dense), 0.5).eval()
    hf_l0.save_pretrained(compact, tmp_path / "compact", model_card=False)
    argv = ["--quick", "--compact", str(tmp_path / "compact"), "--output_dir", str(out), "--new_tokens", "4"]
    data = gguf_llamacpp.main([*argv, "--rounds", "1"])
    saved = json.loads((out / "gguf_llamacpp.json").read_text())
    assert saved["quick"] is True and common.finite_numbers(saved) and saved["compact"]["source"].endswith("compact")
    assert "QUICK" in (out / "gguf_llamacpp.md").read_text()
    exports = data["exports"]
    assert list(exports) == ["f32", "q8_0", "q4_0"] and all(set(e) == {"dense", "compact"} for e in exports.values())
    # the quantized files carry the padding the export computes for the compact widths; f32 none, dense none
    expected_ffn = sum(layer.pad_ffn for layer in gguf_layers(compact, 32))
    assert expected_ffn > 0 and exports["q8_0"]["compact"]["padding"]["ffn"] == expected_ffn
    assert all(e["dense"]["padding"]["weights"] == 0 for e in exports.values())
    assert exports["f32"]["compact"]["padding"]["weights"] == 0
    assert exports["q4_0"]["compact"]["weight_bytes"] < exports["q8_0"]["compact"]["weight_bytes"]
    assert all(e[m]["file_bytes"] > e[m]["weight_bytes"] for e in exports.values() for m in ("dense", "compact"))
    # llama.cpp's f32 perplexity is the library's causal-LM perplexity of the same blocks
    labelled = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    for name, model in (("dense", dense), ("compact", compact)):
        reference = perplexity(model, labelled)
        assert exports["f32"][name]["perplexity"] == pytest.approx(reference, rel=1e-3)
        assert exports["f32"][name]["rounded_weights_perplexity"] == pytest.approx(reference, rel=1e-6)
    parity = data["parity"]["f32"]["compact"]
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_logit_diff"] < 1e-3
    assert set(data["parity"]) == {"f32", "q8_0"} and all(
        set(p) == {"dense", "compact"} for p in data["parity"].values()
    )
    # the rounded-weights model holds exactly the matrices the quantized file stores (padding cut off)
    q8 = gguf_llamacpp.rounded_weights(compact, "q8_0")
    stored = gguf.GGUFReader(str(export_gguf(compact, tmp_path / "q8.gguf", dtype="q8_0").path))
    stored = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in stored.tensors}
    mlp = q8.model.layers[0].mlp
    np.testing.assert_array_equal(stored["token_embd.weight"], q8.model.embed_tokens.weight.detach().numpy())
    width = mlp.up_proj.out_features
    np.testing.assert_array_equal(stored["blk.0.ffn_down.weight"][:, :width], mlp.down_proj.weight.detach().numpy())
    assert not np.array_equal(
        q8.model.embed_tokens.weight.detach().numpy(), compact.model.embed_tokens.weight.detach().numpy()
    )
    for row in data["comparisons"]:  # the reported ratios are those of the reported numbers
        pair = exports[row["dtype"]]
        assert row["speedup"] == pytest.approx(pair["compact"]["tokens_per_s"] / pair["dense"]["tokens_per_s"])
        assert row["weight_bytes_ratio"] == pytest.approx(
            pair["dense"]["weight_bytes"] / pair["compact"]["weight_bytes"]
        )
        if row["dtype"] != "f32":
            ratios = {m: pair[m]["perplexity"] / exports["f32"][m]["perplexity"] for m in ("dense", "compact")}
            assert row["perplexity_ratio_excess"] == pytest.approx(ratios["compact"] - ratios["dense"])
    with pytest.raises(SystemExit):  # f32 is the reference of the ratios: it must come first
        gguf_llamacpp.parse_args(["--quick", "--dtypes", "q8_0", "f32"])
    with pytest.raises(SystemExit):  # not a compact directory
        gguf_llamacpp.parse_args(["--quick", "--compact", str(tmp_path)])


def test_latency_table_quick(out):
    from benchmarks import latency_table

    data = latency_table.main(["--quick", "--output_dir", str(out / "latency")])  # the default layout
    saved = json.loads((out / "latency" / "latency_table_b1_s16_t1.json").read_text())
    assert (
        saved["quick"] is True
        and common.finite_numbers(saved)
        and "QUICK" in (out / "latency" / "latency_table_b1_s16_t1.md").read_text()
    )
    assert len(data["shapes"]) == 3
    for row in data["shapes"]:  # the reported errors are those of the reported times
        assert row["error"] == pytest.approx(row["predicted_ms"] / row["measured_ms"] - 1.0)
    assert data["median_abs_error"] == pytest.approx(statistics.median(abs(r["error"]) for r in data["shapes"]))


def test_latency_targets_quick(out):
    from benchmarks import latency_targets
    from hf_l0.cost.flops import compact_flops
    from hf_l0.pruning.structure import apply_structure

    data = latency_targets.main(["--quick", "--output_dir", str(out)])
    _check_outputs(out, "latency_targets")
    runs = {r["name"]: r for r in data["runs"]}
    # per batch size: a reachable latency target (trained, timed) and one the trainer refuses (recorded, not trained)
    for b in (1, 2):
        trained, refused = sorted(
            (r for r in data["runs"] if r.get("batch_size") == b and r["metric"] == "latency"),
            key=lambda r: r["target"],
        )
        assert refused["target_speedup"] == 1000 and "cannot be reached" in refused["refused"]
        assert "test_accuracy" not in refused and "train_seconds" not in refused
        assert trained["refused"] is None and trained["target"] == pytest.approx(1 - 1 / trained["target_speedup"])
        # What the table predicts, near the target: 6 steps on a tiny model whose table is one round of timings,
        # where one sublayer is several hundredths of the latency (landing precision: test_cost.py).
        assert abs(trained["predicted_latency_reduction"] - trained["target"]) <= 0.15
        # the reported numbers are ratios of the reported timings
        assert trained["measured_speedup"] == pytest.approx(trained["dense_ms"] / trained["compact_ms"])
        assert trained["latency_error"] == pytest.approx(trained["target_speedup"] / trained["measured_speedup"] - 1)
        rows = next(p for p in data["per_batch_size"] if p["batch_size"] == b)["latency_targets"]
        assert [r["refused"] is None for r in rows] == [True, False]
    # params and FLOPs runs: trained once, their saved compact model timed at each batch size in its own file
    dense = tf.AutoModelForSequenceClassification.from_pretrained(out / "models" / "dense")
    for metric in ("params", "flops"):
        (train,) = (r for r in data["runs"] if r["metric"] == metric and r["kind"] == "train")
        timings = [r for r in data["runs"] if r["metric"] == metric and r["kind"] == "timing"]
        assert sorted(r["batch_size"] for r in timings) == [1, 2] and {r["of"] for r in timings} == {train["name"]}
        compact = hf_l0.from_pretrained(Path(train["model_path"]))
        reached = 1 - compact_flops(compact, 16) / compact_flops(dense, 16)
        assert reached == pytest.approx(train["flops_reduction"])
    assert abs(runs["params-t0.5-s6"]["parameter_sparsity"] - 0.5) <= 0.05
    flops = runs["flops-t0.5-s6"]
    assert flops["flops_error"] == pytest.approx((1 - flops["flops_reduction"]) / 0.5 - 1)
    assert data["run_count"] == len(data["runs"]) + 1  # and the dense stage's file
    # a second invocation finds every run file and runs nothing
    files = {p: p.stat().st_mtime_ns for p in (out / "latency_targets" / "runs").glob("*.json")}
    again = latency_targets.main(["--quick", "--output_dir", str(out)])
    assert {p: p.stat().st_mtime_ns for p in (out / "latency_targets" / "runs").glob("*.json")} == files
    assert [r["name"] for r in again["runs"]] == [r["name"] for r in data["runs"]]
    assert not list((out / "latency_targets" / "runs").glob("*.lock"))
    # --retime: every timing measured again on the shape its training run recorded; the aggregate reads the new one
    before = {r["name"]: r for r in again["runs"] if r.get("measured_speedup") is not None}
    retimed = latency_targets.main(["--quick", "--output_dir", str(out), "--retime"])
    assert sorted(r["name"] for r in retimed["runs"] if r.get("retimed")) == sorted(before)
    for r in retimed["runs"]:
        if r["name"] in before:
            assert r["timing_during_training"]["measured_speedup"] == before[r["name"]]["measured_speedup"]
            assert r["measured_speedup"] == pytest.approx(r["dense_ms"] / r["compact_ms"])
            assert r["timed_model"] == "saved"  # every run saves its compact model, latency runs included
            assert r["predicted_latency_reduction"] == pytest.approx(before[r["name"]]["predicted_latency_reduction"])
            if r["metric"] == "latency":
                assert r["latency_error"] == pytest.approx(r["target_speedup"] / r["measured_speedup"] - 1)
    assert "measured again once training was done" in (out / "latency_targets.md").read_text()
    # the shape rebuilt from the recorded structure is the trained compact model's
    train = runs["params-t0.5-s6"]
    rebuilt = apply_structure(copy.deepcopy(dense), train["structure"])
    assert rebuilt.num_parameters() == hf_l0.from_pretrained(Path(train["model_path"])).num_parameters()
    # another teacher than the one accuracy_sparsity's runs name would replace its record: refused before anything runs
    with pytest.raises(SystemExit, match="is not the teacher asked for"):
        latency_targets.main(["--quick", "--output_dir", str(out), "--dense_model", str(out / "another")])


def test_update_readme_fills_markers_from_results(out, tmp_path):
    if not all((out / f"{name}.json").is_file() for name in ("llm", "latency_targets")):
        pytest.skip("needs the quick results of the tests above")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Benchmarks\n\n{update_readme.START}\nstale\n{update_readme.END}\n\n## Next\n")
    assert update_readme.main(["--readme", str(readme), "--results_dir", str(out), "--check"]) == 1
    assert update_readme.main(["--readme", str(readme), "--results_dir", str(out)]) == 0
    text = readme.read_text()
    # the README's short table: accuracy against the best baseline and the LLM, and where the rest lives
    assert "stale" not in text and "| benchmark | result | goal | met |" in text and "docs/benchmarks.md" in text
    assert "hf-l0 − best baseline" in text and "not run yet" in text and "speed.png" not in text
    assert text.endswith("## Next\n")
    full = update_readme.render(out)  # the documentation's table: every benchmark, its plots and runs
    assert "speed.png" in full and "accuracy_steps.png" in full
    # the latency rows: table accuracy per batch size, latency targets and equal-latency accuracy, FLOPs targets
    assert "latency_targets.png" in full and "median \\|error\\|" in full and "pruned to dense latency ÷" in full
    assert "FLOPs targets" in full
    assert update_readme.main(["--readme", str(readme), "--results_dir", str(out), "--check"]) == 0


def test_update_readme_llm_rows_per_budget(tmp_path):
    """The default budget's aggregate is llm.json, a longer one llm-s<steps>.json; the README shows both."""

    def aggregate(steps: int, l0: float, fisher: float) -> dict:
        runs = [
            {"method": m, "target": 0.5, "sparsity": 0.5, "perplexity": p, "selection_perplexity": p}
            for m, p in (("hf-l0", l0), ("fisher", fisher))
        ]
        budget = {"train_tokens": steps * 4 * 128}
        return {"model": "SmolLM2", "targets": [0.5], "budget": budget, "dense": {"perplexity": 9.0}, "runs": runs}

    assert (llm.aggregate_name(60), llm.aggregate_name(300), llm.aggregate_name(2, quick=True)) == (
        "llm",
        "llm-s300",
        "llm",
    )
    (tmp_path / "llm.json").write_text(json.dumps(aggregate(60, 300.0, 200.0)))
    rows = [" | ".join(map(str, row)) for row in update_readme.llm_budget_rows(tmp_path)]
    assert any("30,720 training tokens" in r and "300.0 ÷ 200.0 = 1.500" in r for r in rows)
    assert not any("153,600" in r for r in rows)
    (tmp_path / "llm-s300.json").write_text(json.dumps(aggregate(300, 150.0, 200.0)))
    rows = [" | ".join(map(str, row)) for row in update_readme.llm_budget_rows(tmp_path)]
    assert any("30,720 training tokens" in r and "300.0 ÷ 200.0 = 1.500" in r for r in rows)
    assert any("153,600 training tokens" in r and "150.0 ÷ 200.0 = 0.750" in r and "✅" in r for r in rows)
    assert sum("153,600" in r for r in rows) == 1  # a longer budget lists only the targets it ran


def test_update_readme_latency_target_rows():
    """Each latency target's landing (a refused one said so), the equal-latency comparison and the FLOPs landing;
    a batch size's goal is met only when every trained target landed."""
    panel = {
        "batch_size": 1,
        "latency_targets": [
            {"target_speedup": 2, "refused": None, "measured_speedup": 2.04, "latency_error": -0.02, "met": True},
            {"target_speedup": 5, "refused": None, "measured_speedup": 4.5, "latency_error": 0.111, "met": False},
            {"target_speedup": 99, "refused": "cannot be reached", "met": None},
        ],
        "equal_latency": [
            {"speedup": 2.0, "latency_test_accuracy": 0.81, "params_test_accuracy": 0.8, "met": True},
            {"speedup": 3.0, "latency_test_accuracy": 0.75, "params_test_accuracy": 0.76, "met": False},
        ],
    }
    flops = [{"target": 0.5, "refused": None, "flops_reduction": 0.5004, "flops_error": -0.0008, "met": True}]
    data = {"model": "m", "latency": {"seq_len": 128}, "per_batch_size": [panel], "flops_targets": flops}
    latency, equal, reached = update_readme.latency_target_rows(data)
    assert latency[1] == "÷2 → 2.04× (-2.0%); ÷5 → 4.50× (+11.1%); ÷99: refused" and latency[3] == common.goal(False)
    assert equal[1] == "2.00×: 0.810 vs 0.800, 3.00×: 0.750 vs 0.760" and equal[3] == common.goal(False)
    assert reached[1] == "0.5 → 0.5004 (-0.08%)" and reached[3] == common.goal(True)
    panel["latency_targets"].pop(1)
    panel["equal_latency"].pop()
    latency, equal, _ = update_readme.latency_target_rows(data)
    assert latency[3] == equal[3] == common.goal(True)
    assert update_readme.latency_target_rows(None)[0][1] == update_readme.NOT_RUN
    # a second store (another configuration) names its setting in every row
    data["budget"] = {"l0_structures": "heads,ffn", "recovery_ratio": 0.5}
    setting = update_readme._latency_setting(data)
    assert setting == "heads,ffn, recovery_ratio=0.5"
    rows = update_readme.latency_target_rows(data, setting=setting)
    assert rows[0][0].startswith("m (heads,ffn, recovery_ratio=0.5) pruned") and "both heads,ffn" in rows[1][0]


def test_update_readme_recovery_and_main_job_rows(tmp_path):
    """The goal table's search-then-recover rows: a goal met only when the margin and the landing are, every budget of
    the goals listed (those not run say so); the main job's ratio against its goal."""
    comparison = {
        "target": 0.75,
        "steps": 300,
        "variant": "recovery_ratio=0.5",
        "best_baseline": "fisher",
        "hf_l0_test": [0.81, 0.004, 3],
        "baseline_test": [0.795, 0.006, 3],
        "margin_points": 1.5,
        "paired_points": [1.5, 0.7, 3],
        "margin_met": True,
        "landing_met": True,
    }
    rows = update_readme.recovery_rows({"comparisons": [comparison]})
    assert len(rows) == len(recovery.MARGIN_GOALS)
    (row,) = [r for r in rows if "at 0.75, 300 steps" in r[0]]
    assert row[1] == "0.810 ± 0.004 (3 seeds) vs 0.795 ± 0.006 (3): +1.5 points; paired +1.5 ± 0.7 (s.e.)"
    assert row[2] == "≥ +1.0 points" and row[3] == common.goal(True)
    assert all(r[1] == update_readme.NOT_RUN for r in rows if r is not row)
    comparison["landing_met"] = False
    (row,) = [r for r in update_readme.recovery_rows({"comparisons": [comparison]}) if "at 0.75, 300" in r[0]]
    assert row[3] == common.goal(False)
    assert update_readme.main_job_rows(tmp_path)[0][1] == update_readme.NOT_RUN
    (tmp_path / "main_job").mkdir()
    summary = {"target_sparsity": 0.6, "dense": {"accuracy": 0.82}, "pruned": {"accuracy": 0.8118}}
    (tmp_path / "main_job" / "summary.json").write_text(json.dumps(summary))
    (row,) = update_readme.main_job_rows(tmp_path)
    assert row[1] == "0.812 ÷ 0.820 = 0.990" and row[3] == common.goal(True)
    summary["pruned"]["accuracy"] = 0.8117
    (tmp_path / "main_job" / "summary.json").write_text(json.dumps(summary))
    assert update_readme.main_job_rows(tmp_path)[0][3] == common.goal(False)


def test_committed_readme_section_is_generated():
    """The README's headline table is exactly what update_readme renders from the committed results."""
    assert update_readme.main(["--check"]) == 0, "run python benchmarks/update_readme.py"


def test_run_store_claim(tmp_path):
    """Processes sharing a store take a run by its lock file; a lock whose process died is taken over."""
    import subprocess

    store = common.RunStore(common.Run("claims", 0, True, tmp_path))
    assert store.claim("a") and not store.claim("a")  # held (by this live process)
    store.release("a")
    assert store.claim("a")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (store.runs_dir / "b.lock").write_text(f"{__import__('platform').node()} {int(dead.stdout)}")
    assert store.claim("b")
    (store.runs_dir / "c.lock").write_text(f"another-host {int(dead.stdout)}")
    assert not store.claim("c")  # another machine's process: its liveness is unknown here


def test_latency_targets_equal_latency_interpolates_where_both_reach():
    from benchmarks.latency_targets import equal_latency

    params = [{"measured_speedup": 1.5, "test_accuracy": 0.8}, {"measured_speedup": 3.0, "test_accuracy": 0.7}]
    latency = [{"measured_speedup": 4.0, "test_accuracy": 0.75}, {"measured_speedup": 2.0, "test_accuracy": 0.82}]
    rows = equal_latency(params, sorted(latency, key=lambda p: p["measured_speedup"]))
    assert [r["speedup"] for r in rows] == pytest.approx([2.0, 2.25, 2.5, 2.75, 3.0])  # the range both cover
    assert rows[0]["params_test_accuracy"] == pytest.approx(0.8 - 0.1 / 3) and rows[0]["latency_test_accuracy"] == 0.82
    assert rows[-1]["params_test_accuracy"] == pytest.approx(0.7) and rows[-1][
        "latency_test_accuracy"
    ] == pytest.approx(0.785)
    assert all(r["met"] == (r["latency_test_accuracy"] >= r["params_test_accuracy"]) for r in rows)
    assert equal_latency(params, [{"measured_speedup": 3.5, "test_accuracy": 0.9}]) == []  # no common speedup
