#!/usr/bin/env python
"""Fill the README's benchmark section (between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->``) from
the committed results: a headline table built from ``benchmarks/results/*.json``, the plots, and links to the full
tables (``*.md``); and the main job's table (between ``<!-- main-job:start -->`` and ``<!-- main-job:end -->``) from
``benchmarks/results/main_job/summary.json``, the ``summary.json`` that ``hf-l0 prune-classifier`` writes
(copy it there after a run). Nothing in either section is typed by hand.

    python benchmarks/update_readme.py             # rewrites README.md in place
    python benchmarks/update_readme.py --check     # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` finds the package

from benchmarks import accuracy_sparsity, llm, recovery  # noqa: E402
from benchmarks.accuracy_sparsity import DEFAULT_TARGETS, GOALS, LANDING_TOLERANCE, MARGIN_GOALS  # noqa: E402
from benchmarks.common import BASELINES, RESULTS_DIR, ROOT, goal, markdown_table  # noqa: E402
from benchmarks.latency_table import TABLE_ERROR_GOAL  # noqa: E402
from benchmarks.latency_targets import FLOPS_TOLERANCE, LATENCY_TOLERANCE  # noqa: E402
from benchmarks.llm import PERPLEXITY_GOAL  # noqa: E402
from benchmarks.speed import MEMORY_GOAL, SPEEDUP_GOAL, STEP_GOAL  # noqa: E402

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
MAIN_START, MAIN_END = "<!-- main-job:start -->", "<!-- main-job:end -->"
MAIN_JOB_SUMMARY = Path("main_job") / "summary.json"  # under the results directory
TITLES = {
    "accuracy_sparsity": "accuracy vs sparsity",
    "accuracy_steps": "accuracy vs steps",
    "speed": "speed",
    "llm": "LLM",
    **{llm.aggregate_name(steps): f"LLM, {steps} steps" for steps in llm.OTHER_BUDGETS},
    "latency_targets": "latency and FLOPs targets",
    "recovery": "search, then recover",
}
LATENCY_TABLES = "latency"  # latency_table.py's results folder, one file per batch size
# latency_targets.py's store of the best params-targeted configuration (heads,ffn with the recovery stage), against
# which latency targets are compared at equal measured latency; its results lie in this folder of results/
LATENCY_RECOVERY = "latency_recovery"
CURVE_STEPS, CURVE_TARGET = (100, 300, 1000), 0.75  # the steps curve the README asks for (accuracy_sparsity.py)
MAIN_JOB_GOAL = 0.99  # the main job's pruned test accuracy, as a fraction of its dense model's
NOT_RUN = "not run yet"


def _load(results_dir: Path, name: str) -> dict[str, Any] | None:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def headline_rows(results_dir: Path) -> list[list[Any]]:
    """One row per benchmark goal: (what, measured, goal, met)."""
    rows: list[list[Any]] = [*accuracy_rows(_load(results_dir, "accuracy_sparsity"))]
    rows += steps_rows(_load(results_dir, "accuracy_steps"))
    rows += recovery_rows(_load(results_dir, "recovery")) + main_job_rows(results_dir)
    speed = _load(results_dir, "speed")
    if speed:
        for r in speed["latency"]:
            if r["target"] == 0.75:
                fixed = (
                    ""
                    if "ideal_with_fixed_cost" not in r
                    else f" (ideal with the {r['fixed_ms']:.1f} ms fixed cost {r['ideal_with_fixed_cost']:.2f}×: "
                    f"{r['measured_over_ideal_with_fixed_cost']:.2f})"
                )
                rows.append(
                    [
                        f"CPU speedup at 0.75, batch {r['batch_size']} × {r['seq_len']}: measured ÷ ideal",
                        f"{r['speedup']:.2f}× ÷ {r['ideal_speedup']:.2f}× = {r['measured_over_ideal']:.2f}" + fixed,
                        f"≥ {SPEEDUP_GOAL}",
                        goal(r["measured_over_ideal"] >= SPEEDUP_GOAL),
                    ]
                )
        t = speed["training"]
        rows.append(
            [
                "L0Trainer ÷ Trainer step time",
                f"{t['step_time_ratio']:.3f}",
                f"≤ {STEP_GOAL}",
                goal(t["step_time_ratio"] <= STEP_GOAL),
            ]
        )
        rows.append(
            [
                "L0Trainer ÷ Trainer peak training memory (RSS)",
                f"{t['peak_memory_ratio']:.3f}",
                f"≤ {MEMORY_GOAL}",
                goal(t["peak_memory_ratio"] <= MEMORY_GOAL),
            ]
        )
    rows += llm_budget_rows(results_dir)
    rows += latency_table_rows(results_dir / LATENCY_TABLES)
    rows += latency_target_rows(_load(results_dir, "latency_targets"))
    recovery_store = _load(results_dir / LATENCY_RECOVERY, "latency_targets")
    if recovery_store:
        rows += latency_target_rows(recovery_store, setting=_latency_setting(recovery_store))
    rows += deployment_rows(results_dir)
    return rows


def _points_goal(need: float) -> str:
    return "> 0 points" if need == 0 else f"≥ {need:.1f} points"


def accuracy_rows(acc: dict[str, Any] | None) -> list[list[Any]]:
    """Per target: hf-l0 ÷ dense, hf-l0 − the best baseline (by validation), then one row for the landing; targets
    with no run yet get a row that says so. Reads the single-file results of older runs too (no ``steps``)."""
    model = acc["model"] if acc else "all-MiniLM-L6-v2"
    compared = {c["target"]: c for c in accuracy_sparsity.comparisons(acc)} if acc else {}
    rows: list[list[Any]] = []
    for target in sorted({*DEFAULT_TARGETS, *compared}):
        c = compared.get(target)
        what = f"{model} rotten_tomatoes test acc. at {target:g} sparsity"
        need, margin_need = GOALS.get(target), MARGIN_GOALS.get(target)
        if c is None:
            rows.append([f"{what}, ÷ dense", NOT_RUN, "–" if need is None else f"≥ {need}", "–"])
            continue
        what += f" ({c['steps']} steps)"
        dense = c["test_accuracy"] / c["fraction_of_dense"]
        rows.append(
            [
                f"{what}, ÷ dense {dense:.3f}",
                f"{c['test_accuracy']:.3f} ({c['fraction_of_dense']:.3f} of dense)",
                "–" if need is None else f"≥ {need}",
                "–" if need is None else goal(c["fraction_met"]),
            ]
        )
        if c["best_baseline"] is not None:
            only = " — the only baseline run" if len(c["baselines"]) == 1 else ", best by validation"
            rows.append(
                [
                    f"… hf-l0 − best baseline ({c['best_baseline']}{only}) at {c['sparsity']:.3f}",
                    f"{c['test_accuracy']:.3f} vs {c['best_baseline_test_accuracy']:.3f}: "
                    f"{c['margin_points']:+.1f} points",
                    "–" if margin_need is None else _points_goal(margin_need),
                    "–" if margin_need is None else goal(c["margin_met"]),
                ]
            )
    if compared:
        landed = ", ".join(f"{t:g} → {c['sparsity']:.4f}" for t, c in compared.items())
        rows.append(
            [
                "hf-l0 reached sparsity, every target",
                landed,
                f"± {LANDING_TOLERANCE}",
                goal(all(c["landing_met"] for c in compared.values())),
            ]
        )
    return rows


def steps_rows(curve: dict[str, Any] | None) -> list[list[Any]]:
    """Per budget of the steps curve: hf-l0 above the best baseline?"""
    if not curve:
        return [
            [
                f"accuracy vs steps at {CURVE_TARGET:g} ({' / '.join(map(str, CURVE_STEPS))} steps): hf-l0 − best "
                "baseline at each budget",
                NOT_RUN,
                "> 0 points",
                "–",
            ]
        ]
    rows = []
    compared = {c["steps"]: c for c in accuracy_sparsity.steps_comparisons(curve)}
    for steps in sorted({*CURVE_STEPS, *curve["steps"]}):
        c = compared.get(steps)
        what = f"accuracy vs steps at {curve['target']:g}, {steps} steps: hf-l0 − best baseline"
        if c is None:
            rows.append([what, NOT_RUN, "> 0 points", "–"])
        else:
            rows.append(
                [
                    f"{what} ({c['best_baseline']})",
                    f"{c['test_accuracy']:.3f} vs {c['best_baseline_test_accuracy']:.3f}: {c['margin_points']:+.1f} "
                    "points",
                    "> 0 points",
                    goal(c["above"]),
                ]
            )
    if compared:
        landed = ", ".join(
            f"{steps} steps → {c['landing_error'] + curve['target']:.4f}" for steps, c in compared.items()
        )
        rows.append(
            [
                f"hf-l0 reached sparsity at {curve['target']:g}, every budget",
                landed,
                f"± {LANDING_TOLERANCE}",
                goal(all(c["landing_met"] for c in compared.values())),
            ]
        )
    return rows


def recovery_rows(data: dict[str, Any] | None) -> list[list[Any]]:
    """Per (target, steps) with a goal: hf-l0 (its variant of highest validation accuracy) − the best baseline, mean
    over seeds, with the paired difference on the same test examples (``recovery.py``); budgets not run say so."""
    compared = {(c["target"], c["steps"]): c for c in (data or {}).get("comparisons", [])}
    rows: list[list[Any]] = []
    for (target, steps), need in sorted(recovery.MARGIN_GOALS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        c = compared.get((target, steps))
        what = f"search, then recover: hf-l0 − best baseline at {target:g}, {steps} steps, mean over seeds"
        if c is None:
            rows.append([what, NOT_RUN, _signed_points_goal(need), "–"])
            continue
        (l0, l0_std, l0_seeds), (base, base_std, base_seeds) = c["hf_l0_test"], c["baseline_test"]
        pair = c["paired_points"]
        paired = "" if pair is None else f"; paired {pair[0]:+.1f} ± {pair[1]:.1f} (s.e.)"
        rows.append(
            [
                f"{what} (hf-l0 {c['variant']}, {c['best_baseline']})",
                f"{l0:.3f} ± {l0_std:.3f} ({l0_seeds} seed{'s' * (l0_seeds != 1)}) vs {base:.3f} ± "
                f"{base_std:.3f} ({base_seeds}): "
                f"{c['margin_points']:+.1f} points{paired}",
                _signed_points_goal(need),
                goal(c["margin_met"] and c["landing_met"]),
            ]
        )
    return rows


def _signed_points_goal(need: float) -> str:
    return f"≥ {need:+.1f} points"


def main_job_rows(results_dir: Path) -> list[list[Any]]:
    """The main job's pruned ÷ dense test accuracy (``main_job/summary.json``)."""
    path = results_dir / MAIN_JOB_SUMMARY
    what = "main job (README command): pruned ÷ dense test accuracy"
    if not path.is_file():
        return [[what, NOT_RUN, f"≥ {MAIN_JOB_GOAL}", "–"]]
    s = json.loads(path.read_text())
    dense, pruned = s["dense"]["accuracy"], s["pruned"]["accuracy"]
    return [
        [
            f"{what} at {s['target_sparsity']:g}",
            f"{pruned:.3f} ÷ {dense:.3f} = {pruned / dense:.3f}",
            f"≥ {MAIN_JOB_GOAL}",
            goal(pruned / dense >= MAIN_JOB_GOAL),
        ]
    ]


def _llm_results(data: dict[str, Any]) -> dict[str, Any]:
    """An older single-file llm.json (``models`` keyed by method, one target) as the per-run aggregate reads."""
    if "runs" in data:
        return data
    target = data["target_sparsity"]
    runs = [{"method": m, "target": target, **r} for m, r in data["models"].items() if m != "dense"]
    for r in runs:  # no selection perplexity recorded: with one baseline there is no choice to make
        r.setdefault("selection_perplexity", r["perplexity"])
    return {**data, "targets": [target], "runs": runs, "dense": data["models"]["dense"], "dense_finetuned": None}


def llm_rows(data: dict[str, Any] | None, longer_budget: bool = False) -> list[list[Any]]:
    """Per target: hf-l0 ÷ the best baseline's validation perplexity (chosen on the selection split); the dense and
    dense fine-tuned perplexities alongside; generate() speed at the highest target. A ``longer_budget`` aggregate
    shows only the targets it ran, and no generate() row (the default budget's has one)."""
    if not data:
        return [
            [f"LLM perplexity at {t:g}: hf-l0 ÷ best baseline", NOT_RUN, f"≤ {PERPLEXITY_GOAL}", "–"]
            for t in llm.DEFAULT_TARGETS
        ]
    results = _llm_results(data)
    tokens = f"{results['budget']['train_tokens']:,} training tokens"
    compared = {c["target"]: c for c in llm.comparisons(results)}
    finetuned = results.get("dense_finetuned")
    reference = f"dense {results['dense']['perplexity']:.1f}" + (
        f", dense fine-tuned {finetuned['perplexity']:.1f}" if finetuned else ", dense fine-tuned: not run yet"
    )
    rows = []
    for target in sorted({*([] if longer_budget else llm.DEFAULT_TARGETS), *compared}):
        c = compared.get(target)
        what = f"{results['model']} Shakespeare perplexity at {target:g} sparsity ({tokens}): hf-l0 ÷ best baseline"
        if c is None:
            rows.append([what, NOT_RUN, f"≤ {PERPLEXITY_GOAL}", "–"])
            continue
        baselines = sum(1 for r in results["runs"] if r["target"] == target and r["method"] in BASELINES)
        chosen = "the only baseline run" if baselines == 1 else "best by selection perplexity"
        rows.append(
            [
                f"{what} ({c['best_baseline']}, {chosen})",
                f"{c['perplexity']:.1f} ÷ {c['best_baseline_perplexity']:.1f} = {c['ratio']:.3f} ({reference})",
                f"≤ {PERPLEXITY_GOAL}",
                goal(c["met"]),
            ]
        )
    l0 = [r for r in results["runs"] if r["method"] == "hf-l0" and r.get("tokens_per_second")]
    if l0 and not longer_budget:
        r = max(l0, key=lambda r: r["target"])
        dense_speed = r.get("dense_tokens_per_second") or results["dense"].get("tokens_per_second")
        rows.append(
            [
                f"{results['model']} generate() tokens/s, batch 1: dense → hf-l0 at {r['target']:g}",
                f"{dense_speed:.1f} → {r['tokens_per_second']:.1f}",
                "–",
                "–",
            ]
        )
    return rows


def llm_budget_rows(results_dir: Path) -> list[list[Any]]:
    """The LLM rows of the default budget, then those of each longer budget whose aggregate is present."""
    rows = llm_rows(_load(results_dir, "llm"))
    for steps in llm.OTHER_BUDGETS:
        data = _load(results_dir, llm.aggregate_name(steps))
        rows += llm_rows(data, longer_budget=True) if data else []
    return rows


def latency_table_rows(folder: Path) -> list[list[Any]]:
    """Per measured batch size: the median error of the latency table's predictions over random compact shapes."""
    tables = [json.loads(p.read_text()) for p in folder.glob("latency_table_b*.json")]
    if not tables:
        return [["latency table: predicted vs measured latency of random compact shapes", NOT_RUN, "–", "–"]]
    rows = []
    for t in sorted(tables, key=lambda t: (t["batch_size"], t["seq_len"], t["threads"])):
        rows.append(
            [
                f"latency table, {t['model']}, batch {t['batch_size']} × {t['seq_len']}, {t['threads']} thread(s): "
                f"predicted vs measured latency of {len(t['shapes'])} random compact shapes",
                f"median \\|error\\| {t['median_abs_error']:.1%} (max {t['max_abs_error']:.1%}; of the predicted "
                f"speedup {t['median_abs_speedup_error']:.1%})",
                f"≤ {TABLE_ERROR_GOAL:.0%}",
                goal(t["median_abs_error"] <= TABLE_ERROR_GOAL),
            ]
        )
    return rows


def _landing_row(what: str, runs: list[dict[str, Any]], label: Any, landed_at: Any, tolerance: float) -> list[Any]:
    """One row for a set of targets: where each landed (or that it was refused); met when every trained one did."""
    met = [r["met"] for r in runs if r["met"] is not None]
    shown = "; ".join(f"{label(r)}: refused" if r["refused"] else f"{label(r)} → {landed_at(r)}" for r in runs)
    return [what, shown, f"± {tolerance:.0%}", goal(all(met)) if met else "–"]


def _latency_setting(data: dict[str, Any]) -> str:
    """How a latency_targets store's runs were trained, for its rows: structures and recovery stage."""
    budget = data["budget"]
    stage = f", recovery_ratio={budget['recovery_ratio']:g}" if budget.get("recovery_ratio") else ""
    return f"{budget['l0_structures']}{stage}"


def latency_target_rows(data: dict[str, Any] | None, setting: str | None = None) -> list[list[Any]]:
    """Per batch size: where each latency target landed (measured against the dense model alongside) and the
    accuracy of latency- vs params-targeted models at equal measured speedup; then where the FLOPs targets landed.
    ``setting`` (how the store's runs were trained) names the model in every row, for a second store."""
    if not data:
        return [["latency targets (dense latency ÷ 2, ÷ 3, ÷ 5): measured ÷ target latency − 1", NOT_RUN, "–", "–"]]
    seq_len, rows = data["latency"]["seq_len"], []
    model = data["model"] if setting is None else f"{data['model']} ({setting})"
    for panel in data["per_batch_size"]:
        b, targets, compared = panel["batch_size"], panel["latency_targets"], panel["equal_latency"]
        if targets:
            rows.append(
                _landing_row(
                    f"{model} pruned to dense latency ÷ S, batch {b} × {seq_len}: measured speedup "
                    "(measured ÷ target latency − 1)",
                    targets,
                    lambda r: f"÷{r['target_speedup']:g}",
                    lambda r: f"{r['measured_speedup']:.2f}× ({r['latency_error']:+.1%})",
                    LATENCY_TOLERANCE,
                )
            )
        if compared:
            rows.append(
                [
                    f"… test acc. at equal measured speedup, batch {b}: latency- vs params-targeted (same steps"
                    + ("" if setting is None else f", both {setting}")
                    + ")",
                    ", ".join(
                        f"{c['speedup']:.2f}×: {c['latency_test_accuracy']:.3f} vs {c['params_test_accuracy']:.3f}"
                        for c in compared
                    ),
                    "≥",
                    goal(all(c["met"] for c in compared)),
                ]
            )
    if data["flops_targets"]:
        rows.append(
            _landing_row(
                f"{model} FLOPs targets ({seq_len} tokens): reached FLOPs reduction (reached ÷ target FLOPs − 1)",
                data["flops_targets"],
                lambda r: f"{r['target']:g}",
                lambda r: f"{r['flops_reduction']:.4f} ({r['flops_error']:+.2%})",
                FLOPS_TOLERANCE,
            )
        )
    return rows


# The deployment benchmarks, which record their own goals ({"goal", "measured", "met"} each) in their JSON.
DEPLOYMENT = {
    "onnx_speed": "ONNX Runtime, MiniLM classifier",
    "onnx_generation": "ONNX Runtime generation, SmolLM2",
    "gguf_llamacpp": "llama.cpp, SmolLM2",
}


def deployment_rows(results_dir: Path) -> list[list[Any]]:
    """One row per goal of each deployment benchmark (dense vs compact where users run them)."""
    rows = []
    for name, where in DEPLOYMENT.items():
        data = _load(results_dir, name)
        for g in (data or {}).get("goals", []):
            rows.append([where, g["measured"], g["goal"], goal(g["met"])])
        for c in (data or {}).get("comparisons", []):  # llama.cpp: one entry per GGUF type
            kind = c["dtype"].upper()
            rows.append(
                [
                    where,
                    f"{c['speedup']:.2f}× vs 0.9 × {c['weight_bytes_ratio']:.2f}× = {c['speed_goal']:.2f}×",
                    f"{kind} decode speedup compact ÷ dense ≥ 0.9 × weight-bytes ratio",
                    goal(c["speed_met"]),
                ]
            )
            if "perplexity_met" in c:
                rows.append(
                    [
                        where,
                        f"compact {c['compact_perplexity_ratio']:.3f} vs dense {c['dense_perplexity_ratio']:.3f}",
                        f"{kind} ÷ f32 perplexity: compact's ratio ≤ dense's + 0.02",
                        goal(c["perplexity_met"]),
                    ]
                )
    return rows


def short_rows(results_dir: Path) -> list[list[Any]]:
    """The README's rows: accuracy against the best baseline per target, search-then-recover against it over seeds,
    the main job, the LLM's perplexity, deployment."""
    return (
        accuracy_rows(_load(results_dir, "accuracy_sparsity"))
        + recovery_rows(_load(results_dir, "recovery"))
        + main_job_rows(results_dir)
        + llm_budget_rows(results_dir)
        + deployment_rows(results_dir)
    )


def render(results_dir: Path = RESULTS_DIR, link_prefix: str = "benchmarks/results/", short: bool = False) -> str:
    """The section's body: headline table, plots, links to the full tables and the provenance of every run; with
    ``short`` (the README) the accuracy and LLM rows and a link to the documentation's benchmarks page."""
    rows = short_rows(results_dir) if short else headline_rows(results_dir)
    if not rows:
        return "No benchmark results yet: run the scripts in `benchmarks/`, then `python benchmarks/update_readme.py`."
    if short:
        return (
            markdown_table(["benchmark", "result", "goal", "met"], rows)
            + "\n\nEvery result, plot and run (speed, latency and FLOPs targets, ONNX Runtime, llama.cpp): "
            "[docs/benchmarks.md](docs/benchmarks.md), generated from `benchmarks/results/`."
        )
    parts = [markdown_table(["benchmark", "result", "goal", "met"], rows), ""]
    images = [f"![{TITLES[n]}]({link_prefix}{n}.png)" for n in TITLES if (results_dir / f"{n}.png").is_file()]
    parts += [" ".join(images), ""]
    for name, title in TITLES.items():
        data = _load(results_dir, name)
        if data:
            if "run_commands" in data:  # built from run files: their commands and summed compute
                commands = "; ".join(f"`{c}`" for c in data["run_commands"])
                how = f"{data['run_count']} runs ({commands}), {data['run_seconds'] / 3600:.1f} h of compute"
            else:
                how = f"`{data['command']}`, {data['wall_seconds'] / 60:.0f} min"
            parts.append(
                f"- [{title}]({link_prefix}{name}.md): {how} on {data['hardware']['cpu']} "
                f"({data['hardware']['cpu_count']} cores), seed {data['seed']}"
                + (" — QUICK smoke run, not a result" if data["quick"] else "")
            )
    return "\n".join(parts).rstrip()


def render_main_job(results_dir: Path = RESULTS_DIR) -> str:
    """The main job's dense vs pruned table and its run time, from the committed ``summary.json``."""
    path = results_dir / MAIN_JOB_SUMMARY
    if not path.is_file():
        return (
            f"No committed main-job summary yet: run the command above, copy `outputs/minilm-rotten-tomatoes/"
            f"summary.json` to `benchmarks/results/{MAIN_JOB_SUMMARY.as_posix()}`, then run "
            "`python benchmarks/update_readme.py`."
        )
    s = json.loads(path.read_text())
    dense, pruned = s["dense"], s["pruned"]
    examples = f" ({s['num_examples']:,} reviews)" if "num_examples" in s else ""
    batch = f"batch {s['latency_batch'][0]} × {s['latency_batch'][1]} tokens, " if "latency_batch" in s else ""
    rows = [
        [f"{s['split']} accuracy{examples}", f"{dense['accuracy']:.3f}", f"{pruned['accuracy']:.3f}"],
        [f"{s['split']} F1", f"{dense['f1']:.3f}", f"{pruned['f1']:.3f}"],
        ["parameters", f"{s['dense_parameters']:,}", f"{s['pruned_parameters']:,}"],
        [f"attention + FFN sparsity (target {s['target_sparsity']:.3f})", "0", f"{s['reached_sparsity']:.4f}"],
        [
            f"CPU latency, {batch}{s['latency_threads']} threads",
            f"{s['dense_latency_ms']:.1f} ms",
            f"{s['pruned_latency_ms']:.1f} ms ({s['speedup']:.2f}×)",
        ],
    ]
    table = markdown_table(["", "dense", "pruned"], rows)
    dense_min = (s.get("dense_finetune_seconds") or 0.0) / 60
    return (
        f"{table}\n\nThat run took {s['wall_seconds'] / 60:.1f} min (dense stage {dense_min:.1f}, pruning "
        f"{s['prune_seconds'] / 60:.1f}); numbers from `benchmarks/results/{MAIN_JOB_SUMMARY.as_posix()}`."
    )


def update(readme_text: str, body: str, start: str = START, end: str = END) -> str:
    if start not in readme_text or end not in readme_text:
        raise ValueError(f"README has no {start} ... {end} markers.")
    head, rest = readme_text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--results_dir", default=str(RESULTS_DIR))
    p.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    results_dir = Path(args.results_dir)
    prefix = (
        Path(results_dir.resolve()).relative_to(readme.resolve().parent).as_posix() + "/"
        if results_dir.resolve().is_relative_to(readme.resolve().parent)
        else f"{results_dir.resolve().as_posix()}/"
    )
    text = readme.read_text()
    new = update(text, render(results_dir, prefix, short=True))
    if MAIN_START in new:  # the project README has it; a README with only the benchmark section is fine too
        new = update(new, render_main_job(results_dir), MAIN_START, MAIN_END)
    if args.check:
        if new != text:
            print(f"{readme} is out of date: run python benchmarks/update_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
