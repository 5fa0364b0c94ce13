#!/usr/bin/env python
"""ONNX Runtime: a fine-tuned dense classifier and its L0-pruned compact model, fp32 and int8, against PyTorch.

The two models come as ``hf-l0 prune-classifier`` writes them: ``--compact DIR`` (the compact model and its tokenizer)
and its dense teacher in ``DIR/dense`` (``--dense`` names another). Both are loaded with `hf_l0.from_pretrained` and
exported with `hf_l0.export_onnx` in fp32 and in int8 (ONNX Runtime's dynamic quantization), each export checked
against PyTorch by `export_onnx` itself. Then:

* test accuracy on the rotten_tomatoes test reviews (`hf_l0.demo.data.rotten_tomatoes`, 1,000), tokenized with each
  model's tokenizer and truncated to ``--max_length`` tokens (64, as the main job trains and evaluates), for PyTorch
  fp32, ONNX Runtime fp32 and ONNX Runtime int8, dense and compact; the batches are the same for every backend;
* latency at batch 1 and 32 x 128 tokens (full attention mask) of the six (model, backend) pairs, taking turns run
  by run (a slow spell of a shared machine hits them alike), ``--threads`` threads for PyTorch and ONNX Runtime
  alike; medians;
* the FLOPs ratio dense / compact (`hf_l0.cost.measure.forward_flops`) at each shape.

Goals (✅/❌ in the markdown): the int8 compact ÷ dense speedup at 32 x 128 is at least 0.9 x the FLOPs ratio; int8
costs at most 1 point of test accuracy (ONNX Runtime int8 against fp32, each model); ONNX Runtime fp32 is not slower
than PyTorch for the same model at either shape.

    python benchmarks/onnx_speed.py --compact outputs/minilm-rotten-tomatoes --threads 1   # ~8 min on 2 CPU cores
    python benchmarks/onnx_speed.py --quick --output_dir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding  # noqa: E402

import hf_l0  # noqa: E402
from benchmarks.common import Run, benchmark_parser, goal, load_average, markdown_table, set_threads  # noqa: E402
from benchmarks.speed import tiny_bert  # noqa: E402
from hf_l0.cost.measure import forward_flops  # noqa: E402
from hf_l0.demo import assets, data  # noqa: E402
from hf_l0.deploy.onnx import example_inputs, export_onnx  # noqa: E402
from hf_l0.pruning.baselines import magnitude_prune  # noqa: E402

SEQ_LEN = 128
MODELS = ("dense", "compact")
BACKENDS = ("pytorch", "ort_fp32", "ort_int8")
BACKEND_NAMES = {"pytorch": "PyTorch fp32", "ort_fp32": "ONNX Runtime fp32", "ort_int8": "ONNX Runtime int8"}
SPEEDUP_GOAL = 0.9  # int8 compact ÷ dense speedup ≥ this x the FLOPs ratio, at the largest batch
INT8_ACCURACY_GOAL = 0.01  # int8 costs at most 1 point of test accuracy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, "tiny random BERT classifier, magnitude-pruned; 64 reviews, a few runs")
    p.add_argument("--compact", default=None, help="the compact model's directory (hf-l0 prune-classifier's output)")
    p.add_argument("--dense", default=None, help="the dense model's directory (default: <compact>/dense)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--max_length", type=int, default=64, help="tokens per test review (the main job's 64)")
    p.add_argument("--test_size", type=int, default=None, help="test reviews (default: all 1,000; --quick: 64)")
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timed runs per model, backend and shape (default: 50 at batch 1, 20 above)",
    )
    args = p.parse_args(argv)
    if args.compact is None and not args.quick:
        p.error("--compact DIR is required (the output directory of hf-l0 prune-classifier), or --quick")
    return args


def quick_models(directory: Path, seed: int) -> Path:
    """A tiny random BERT classifier and its magnitude-pruned compact model, saved the way prune-classifier saves
    them (the compact model in ``directory``, the dense one in ``directory/dense``, each with the MiniLM tokenizer),
    so ``--quick`` loads them through the same path as real models."""
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    dense = tiny_bert(tokenizer.vocab_size, seed)
    dense.save_pretrained(directory / "dense")
    tokenizer.save_pretrained(directory / "dense")
    compact = magnitude_prune(dense, 0.5).eval()
    hf_l0.save_pretrained(compact, directory, tokenizer)
    return directory


def review_batches(tokenizer: Any, max_length: int, test_size: int | None) -> tuple[list[dict[str, torch.Tensor]], Any]:
    """The test reviews in batches of 64 padded to their longest review (sorted by length, so little padding is
    computed; the attention mask hides it, so the logits do not depend on it), and the labels in the same order."""
    test = data.rotten_tomatoes()["test"]
    if test_size is not None:
        test = test.select(range(min(test_size, len(test))))
    encoded = tokenizer(list(test["text"]), truncation=True, max_length=max_length)
    order = sorted(range(len(test)), key=lambda i: len(encoded["input_ids"][i]))
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    rows = [{key: values[i] for key, values in encoded.items()} for i in order]
    batches = [collator(rows[start : start + 64]) for start in range(0, len(rows), 64)]
    return batches, np.asarray(list(test["label"]))[order]


def session(path: Path, threads: int, profile_prefix: Path | None = None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (and its default graph optimizations); with
    ``profile_prefix``, one that records every node's run time (ONNX Runtime's profiler)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_by_op_type(path: Path, threads: int, feed: dict[str, Any], runs: int, prefix: Path) -> dict[str, float]:
    """Milliseconds per run spent in each operator type of the graph ONNX Runtime runs (after its optimizations:
    fused operators count under their own names): the mean over ``runs`` runs of a fresh profiled session, after a
    warm-up run that is left out."""
    profiled = session(path, threads, prefix)
    for _ in range(runs + 1):
        profiled.run(None, feed)
    return profile_by_op_type(Path(profiled.end_profiling()), skip_runs=1)


def profile_by_op_type(profile: Path, skip_runs: int) -> dict[str, float]:
    """Milliseconds per run in each operator type, from an ONNX Runtime profile (``enable_profiling``): the node
    events inside each run (``model_run``) but the first ``skip_runs``, averaged over those runs; largest first."""
    events = json.loads(profile.read_text())
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[skip_runs:]
    if not windows:
        raise ValueError(f"{profile} holds no run after the first {skip_runs}.")
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= event["ts"] <= end for start, end in windows):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1e3 / len(windows)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def runner(model: torch.nn.Module, sessions: dict[str, Any], backend: str) -> Callable[[dict[str, torch.Tensor]], Any]:
    """The logits of a batch (numpy) from one backend: the PyTorch model or one of its ONNX Runtime sessions."""
    if backend == "pytorch":

        def run_pytorch(inputs: dict[str, torch.Tensor]) -> Any:
            with torch.inference_mode():
                return model(**inputs).logits.numpy()

        return run_pytorch
    onnx_session = sessions[backend]
    names = [i.name for i in onnx_session.get_inputs()]

    def run_onnx(inputs: dict[str, torch.Tensor]) -> Any:
        return onnx_session.run(["logits"], {name: inputs[name].numpy() for name in names})[0]

    return run_onnx


def interleaved_latency(
    runners: dict[str, Callable[[], Any]], runs: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Median (and min, max) seconds per call of each runner, the runners taking turns call by call (a slow spell of
    a shared machine hits all alike); the order within a turn alternates."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(warmup + runs):
        for name in names if step % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runners[name]()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = args.threads or 1
    set_threads(threads)
    run = Run("onnx_speed", args.seed, args.quick, args.output_dir)
    test_size = args.test_size or (64 if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        compact_dir = quick_models(tmp_dir / "models", args.seed) if args.quick else Path(args.compact)
        dense_dir = Path(args.dense) if args.dense else compact_dir / "dense"
        dirs = {"dense": dense_dir, "compact": compact_dir}
        for name, directory in dirs.items():
            if not (directory / "config.json").is_file():
                raise SystemExit(f"{directory} holds no config.json: pass the {name} model's directory as --{name}.")
        models = {name: hf_l0.from_pretrained(directory).eval() for name, directory in dirs.items()}
        tokenizers = {name: AutoTokenizer.from_pretrained(directory) for name, directory in dirs.items()}
        exports: dict[str, dict[str, Any]] = {name: {} for name in MODELS}
        sessions: dict[str, dict[str, Any]] = {name: {} for name in MODELS}
        input_names: list[str] = []  # the graphs' inputs (the dense fp32 export's; both models take the same)
        for name, model in models.items():
            for backend, quantize in (("ort_fp32", None), ("ort_int8", "int8")):
                path = tmp_dir / f"{name}-{backend}.onnx"
                result = export_onnx(model, path, quantize=quantize)
                exports[name][backend] = {
                    "onnx_mb": path.stat().st_size / 2**20,
                    "check_max_abs_diff": result.max_abs_diff,
                    "check_top1_agreement": result.top1_agreement,
                }
                sessions[name][backend] = session(path, threads)
                input_names = input_names or result.input_names
        runners = {name: {b: runner(models[name], sessions[name], b) for b in BACKENDS} for name in MODELS}

        # Test accuracy: every backend on the same batches.
        accuracy: dict[str, dict[str, Any]] = {}
        for name in MODELS:
            batches, labels = review_batches(tokenizers[name], args.max_length, test_size)
            logits = {b: np.concatenate([runners[name][b](batch) for batch in batches]) for b in BACKENDS}
            predictions = {b: v.argmax(-1) for b, v in logits.items()}
            accuracy[name] = {
                **{b: float((predictions[b] == labels).mean()) for b in BACKENDS},
                "ort_fp32_max_abs_diff": float(np.abs(logits["ort_fp32"] - logits["pytorch"]).max()),
                "ort_int8_max_abs_diff": float(np.abs(logits["ort_int8"] - logits["pytorch"]).max()),
                "int8_prediction_agreement": float((predictions["ort_int8"] == predictions["ort_fp32"]).mean()),
                "test_size": len(labels),
            }

        # Latency: the six (model, backend) pairs take turns at each shape.
        latency = []
        for batch in args.batch_sizes:
            inputs = example_inputs(models["dense"], input_names, batch, SEQ_LEN, seed=args.seed)
            inputs["attention_mask"].fill_(1)  # full-length sequences: every token costs
            parity = {
                name: float(np.abs(runners[name]["ort_fp32"](inputs) - runners[name]["pytorch"](inputs)).max())
                for name in MODELS
            }
            runs = args.runs or (3 if args.quick else (50 if batch == 1 else 20))
            timed = interleaved_latency(
                {f"{name}/{b}": (lambda r=runners[name][b], x=inputs: r(x)) for name in MODELS for b in BACKENDS}, runs
            )
            ms = {name: {b: timed[f"{name}/{b}"]["median"] * 1e3 for b in BACKENDS} for name in MODELS}
            flops = {name: forward_flops(models[name], SEQ_LEN, batch) for name in MODELS}
            latency.append(
                {
                    "batch_size": batch,
                    "seq_len": SEQ_LEN,
                    "runs": runs,
                    "load_average": load_average(),
                    "ms": ms,
                    "spread_ms": {k: {s: v[s] * 1e3 for s in ("min", "max")} for k, v in timed.items()},
                    "speedup": {b: ms["dense"][b] / ms["compact"][b] for b in BACKENDS},
                    "ort_over_pytorch": {name: ms[name]["ort_fp32"] / ms[name]["pytorch"] for name in MODELS},
                    "flops": flops,
                    "flops_ratio": flops["dense"] / flops["compact"],
                    "ort_fp32_max_abs_diff": parity,
                }
            )
        # Where the time goes at the largest shape: ONNX Runtime's profiler, per operator type.
        largest = example_inputs(models["dense"], input_names, max(args.batch_sizes), SEQ_LEN, seed=args.seed)
        feed = {k: v.fill_(1).numpy() if k == "attention_mask" else v.numpy() for k, v in largest.items()}
        op_ms = {
            name: {
                b: time_by_op_type(tmp_dir / f"{name}-{b}.onnx", threads, feed, 3, tmp_dir / f"profile-{name}-{b}")
                for b in ("ort_fp32", "ort_int8")
            }
            for name in MODELS
        }
    return report(run, args, threads, models, exports, accuracy, latency, op_ms)


def structure_of(model: torch.nn.Module) -> dict[str, list[int]] | None:
    structure = getattr(model.config, "l0_structure", None)
    if not structure:
        return None
    layers = structure["layers"]
    return {
        "attention_heads": [layer["attention_heads"] for layer in layers],
        "intermediate_size": [layer["intermediate_size"] for layer in layers],
    }


def op_time_rows(
    op_ms: dict[str, dict[str, dict[str, float]]],
    backends: tuple[str, ...] = ("ort_int8", "ort_fp32"),
    share: float = 0.02,
) -> list[list[Any]]:
    """The operator types that take at least ``share`` of a dense graph's profiled time (``op_ms[model][backend]``),
    then the others and the total: ms dense / compact and their ratio, for each of ``backends``."""
    totals = {(n, b): sum(op_ms[n][b].values()) for n in MODELS for b in backends}
    ops = [
        op
        for op in dict.fromkeys(op for b in backends for op in op_ms["dense"][b])
        if any(op_ms["dense"][b].get(op, 0.0) >= share * totals[("dense", b)] for b in backends)
    ]

    def cells(get: Callable[[str, str], float]) -> list[Any]:
        row: list[Any] = []
        for b in backends:
            dense, compact = get("dense", b), get("compact", b)
            row += [dense, compact, dense / compact if compact else float("nan")]
        return row

    rows = [[op, *cells(lambda n, b, op=op: op_ms[n][b].get(op, 0.0))] for op in ops]
    rows.append(["others", *cells(lambda n, b: sum(v for k, v in op_ms[n][b].items() if k not in ops))])
    rows.append(["total", *cells(lambda n, b: totals[(n, b)])])
    return rows


def unshrunk_time(dense: dict[str, float], compact: dict[str, float], below: float = 1.2) -> dict[str, Any]:
    """The operator types whose profiled time pruning does not shrink (dense ÷ compact below ``below``), their ms in
    each model, and the dense ÷ compact ratio of the rest of the graph's time."""
    ops = [op for op in dense if compact.get(op) and dense[op] / compact[op] < below and dense[op] > 0]
    fixed = {"dense": sum(dense[op] for op in ops), "compact": sum(compact[op] for op in ops)}
    rest = {"dense": sum(dense.values()) - fixed["dense"], "compact": sum(compact.values()) - fixed["compact"]}
    return {
        "operators": ops,
        "ms": fixed,
        "share_of_compact": fixed["compact"] / sum(compact.values()),
        "rest_ratio": rest["dense"] / rest["compact"] if rest["compact"] > 0 else float("nan"),
    }


def named_ops(ops: list[str], ms: dict[str, float], share: float = 0.02) -> str:
    """``ops`` that take at least ``share`` of the total of ``ms`` by name, and how many smaller ones."""
    total = sum(ms.values())
    large = [op for op in ops if ms.get(op, 0.0) >= share * total]
    small = len(ops) - len(large)
    return ", ".join(large + ([f"{small} smaller ones"] if small else [])) or "none"


def shape(row: dict[str, Any]) -> str:
    return f"{row['batch_size']} × {row['seq_len']}"


def report(
    run: Run,
    args: argparse.Namespace,
    threads: int,
    models: dict[str, torch.nn.Module],
    exports: dict[str, dict[str, Any]],
    accuracy: dict[str, dict[str, Any]],
    latency: list[dict[str, Any]],
    op_ms: dict[str, dict[str, dict[str, float]]],
) -> dict[str, Any]:
    """The goals, the tables and the JSON."""
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    largest = max(latency, key=lambda r: r["batch_size"])
    needed = SPEEDUP_GOAL * largest["flops_ratio"]
    goals = [
        {
            "goal": f"int8 compact ÷ dense speedup at {shape(largest)} ≥ {SPEEDUP_GOAL} × FLOPs ratio",
            "measured": f"{largest['speedup']['ort_int8']:.2f}× vs {SPEEDUP_GOAL} × {largest['flops_ratio']:.2f}× "
            f"= {needed:.2f}×",
            "met": largest["speedup"]["ort_int8"] >= needed,
        }
    ]
    for name in MODELS:
        a = accuracy[name]
        change = a["ort_int8"] - a["ort_fp32"]
        goals.append(
            {
                "goal": f"int8 costs ≤ {INT8_ACCURACY_GOAL * 100:g} point of test accuracy ({name})",
                "measured": f"{a['ort_fp32']:.3f} → {a['ort_int8']:.3f} ({change * 100:+.1f} points)",
                "met": -change <= INT8_ACCURACY_GOAL + 1e-9,
            }
        )
    for r in latency:
        for name in MODELS:
            ms = r["ms"][name]
            goals.append(
                {
                    "goal": f"ONNX Runtime fp32 not slower than PyTorch ({name}, {shape(r)})",
                    "measured": f"{ms['ort_fp32']:.1f} vs {ms['pytorch']:.1f} ms ({r['ort_over_pytorch'][name]:.2f}×; "
                    f"fastest runs {r['spread_ms'][f'{name}/ort_fp32']['min']:.1f} vs "
                    f"{r['spread_ms'][f'{name}/pytorch']['min']:.1f})",
                    "met": ms["ort_fp32"] <= ms["pytorch"],
                }
            )
    latency_rows = [
        [shape(r), name, *(r["ms"][name][b] for b in BACKENDS), r["ort_over_pytorch"][name]]
        for r in latency
        for name in MODELS
    ]
    speedup_rows = [[shape(r), *(r["speedup"][b] for b in BACKENDS), r["flops_ratio"]] for r in latency]
    accuracy_rows = [
        [
            name,
            *(accuracy[name][b] for b in BACKENDS),
            f"{(accuracy[name]['ort_int8'] - accuracy[name]['ort_fp32']) * 100:+.1f}",
            f"{accuracy[name]['int8_prediction_agreement']:.1%}",
            f"{accuracy[name]['ort_fp32_max_abs_diff']:.1e}",
        ]
        for name in MODELS
    ]
    op_rows = op_time_rows(op_ms)
    unshrunk = unshrunk_time(op_ms["dense"]["ort_int8"], op_ms["compact"]["ort_int8"])
    unshrunk_names = named_ops(unshrunk["operators"], op_ms["compact"]["ort_int8"])
    structure = structure_of(models["compact"])
    label = "tiny random BERT" if args.quick else f"`{Path(args.compact).name}`"
    sizes = {name: {b: exports[name][b]["onnx_mb"] for b in exports[name]} for name in MODELS}
    test_size = accuracy["dense"]["test_size"]
    loads = ", ".join(f"{shape(r)}: {r['load_average'].split()[0]}" for r in latency)
    markdown = "\n".join(
        [
            f"## ONNX Runtime: {label}, dense and L0-pruned compact, fp32 and int8, against PyTorch",
            "",
            markdown_table(["goal", "measured", "met"], [[g["goal"], g["measured"], goal(g["met"])] for g in goals]),
            "",
            "### Latency (ms, medians)",
            "",
            markdown_table(
                ["batch × tokens", "model", *(BACKEND_NAMES[b] for b in BACKENDS), "ORT fp32 ÷ PyTorch"], latency_rows
            ),
            "",
            markdown_table(
                ["batch × tokens", *(f"speedup {BACKEND_NAMES[b]}" for b in BACKENDS), "FLOPs ratio"], speedup_rows
            ),
            "",
            f"### Where the time goes at {shape(largest)} (ONNX Runtime's profiler, ms per run by operator type)",
            "",
            markdown_table(
                ["operator", "dense int8", "compact int8", "ratio", "dense fp32", "compact fp32", "ratio"], op_rows
            ),
            "",
            f"In int8, the operators that pruning does not shrink (dense ÷ compact < 1.2: "
            f"{unshrunk_names}) take {unshrunk['ms']['dense']:.1f} ms in the dense graph "
            "and "
            f"{unshrunk['ms']['compact']:.1f} ms in the compact one ({unshrunk['share_of_compact']:.0%} of its "
            f"profiled time); the rest of the int8 graph runs {unshrunk['rest_ratio']:.2f}× faster in the compact "
            f"model, against a FLOPs ratio of {largest['flops_ratio']:.2f}×.",
            "",
            f"### Test accuracy ({test_size:,} rotten_tomatoes test reviews, {args.max_length} tokens)",
            "",
            markdown_table(
                [
                    "model",
                    *(BACKEND_NAMES[b] for b in BACKENDS),
                    "int8 − fp32 (points)",
                    "int8 predictions = fp32's",
                    "max abs logit diff ORT fp32 vs PyTorch",
                ],
                accuracy_rows,
            ),
            "",
            f"Compact shapes per layer: heads {structure['attention_heads'] if structure else '–'}, FFN "
            f"{structure['intermediate_size'] if structure else '–'}. Parameters {params['compact']:,} / "
            f"{params['dense']:,}. ONNX files (MB) fp32 {sizes['compact']['ort_fp32']:.1f} / "
            f"{sizes['dense']['ort_fp32']:.1f}, int8 {sizes['compact']['ort_int8']:.1f} / "
            f"{sizes['dense']['ort_int8']:.1f} (compact / dense). Exported with `hf_l0.export_onnx` (transformers' "
            "exporter; int8: ONNX Runtime's dynamic quantization), ONNX Runtime CPU provider with its default graph "
            f"optimizations; {threads} thread(s) for PyTorch and ONNX Runtime alike; the six (model, backend) pairs "
            "take turns run by run at each shape (random token ids, full attention mask). Load average at the end of "
            f"each shape: {loads}.",
        ]
    )
    return run.write(
        {
            "dense_dir": None if args.quick else str(Path(args.dense) if args.dense else Path(args.compact) / "dense"),
            "compact_dir": None if args.quick else str(Path(args.compact)),
            "threads": threads,
            "max_length": args.max_length,
            "parameters": params,
            "structure": structure,
            "exports": exports,
            "accuracy": accuracy,
            "latency": latency,
            "op_time_ms": {"batch_size": largest["batch_size"], "seq_len": SEQ_LEN, **op_ms},
            "int8_unshrunk_time": unshrunk,
            "goals": goals,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
