#!/usr/bin/env python
"""Fill the README's benchmark section (between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->``) from
the committed results: a headline table built from ``benchmarks/results/*.json``, the plots, and links to the full
tables (``*.md``); and the main job's table (between ``<!-- main-job:start -->`` and ``<!-- main-job:end -->``) from
``benchmarks/results/main_job/summary.json``, the ``summary.json`` that ``scripts/prune_classification.py`` writes
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

from benchmarks.accuracy_sparsity import GOALS  # noqa: E402
from benchmarks.common import RESULTS_DIR, ROOT, goal, markdown_table  # noqa: E402
from benchmarks.llm import PERPLEXITY_GOAL  # noqa: E402
from benchmarks.speed import MEMORY_GOAL, SPEEDUP_GOAL, STEP_GOAL  # noqa: E402

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
MAIN_START, MAIN_END = "<!-- main-job:start -->", "<!-- main-job:end -->"
MAIN_JOB_SUMMARY = Path("main_job") / "summary.json"  # under the results directory
TITLES = {"accuracy_sparsity": "accuracy vs sparsity", "speed": "speed", "llm": "LLM"}


def _load(results_dir: Path, name: str) -> dict[str, Any] | None:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def headline_rows(results_dir: Path) -> list[list[Any]]:
    """One row per benchmark goal: (what, measured, goal, met)."""
    rows: list[list[Any]] = []
    acc = _load(results_dir, "accuracy_sparsity")
    if acc:
        dense = acc["dense"]["test_accuracy"]
        by = {(r["method"], r["target"]): r for r in acc["runs"]}
        budget = f"{acc['budget']['prune_steps']} steps"
        for target in acc["targets"]:
            l0, base = by[("hf_l0", target)], by[("magnitude", target)]
            fraction = l0["test_accuracy"] / dense
            need = GOALS.get(target, float("nan"))
            rows.append(
                [
                    f"{acc['model']} rotten_tomatoes test acc. at {target:g} sparsity ({budget}), ÷ dense {dense:.3f}",
                    f"{l0['test_accuracy']:.3f} ({fraction:.3f} of dense)",
                    f"≥ {need}",
                    goal(fraction >= need),
                ]
            )
            rows.append(
                [
                    f"… vs structured magnitude + fine-tune at {l0['sparsity']:.3f}",
                    f"{l0['test_accuracy']:.3f} vs {base['test_accuracy']:.3f}",
                    "above",
                    goal(l0["test_accuracy"] > base["test_accuracy"]),
                ]
            )
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
    llm = _load(results_dir, "llm")
    if llm:
        m = llm["models"]
        rows.append(
            [
                f"{llm['model']} Shakespeare perplexity at {m['hf-l0']['sparsity']:.2f} sparsity "
                f"({llm['budget']['train_tokens']:,} training tokens): hf-l0 ÷ magnitude",
                f"{m['hf-l0']['perplexity']:.1f} ÷ {m['magnitude']['perplexity']:.1f} = {llm['perplexity_ratio']:.3f}",
                f"≤ {PERPLEXITY_GOAL}",
                goal(llm["perplexity_ratio"] <= PERPLEXITY_GOAL),
            ]
        )
        if llm.get("generate", {}).get("use_cache"):
            speed_text = (
                f"{m['dense']['tokens_per_second']:.1f} → {m['hf-l0']['tokens_per_second']:.1f} "
                f"(magnitude {m['magnitude']['tokens_per_second']:.1f})"
            )
        else:  # runs before the fix timed the trained (pruned) models without their KV cache
            speed_text = "not comparable in this run (pruned models generated without KV cache); rerun llm.py"
        rows.append([f"{llm['model']} generate() tokens/s, batch 1: dense → hf-l0", speed_text, "–", "–"])
    return rows


def render(results_dir: Path = RESULTS_DIR, link_prefix: str = "benchmarks/results/") -> str:
    """The section's body: headline table, plots, links to the full tables and the provenance of every run."""
    rows = headline_rows(results_dir)
    if not rows:
        return "No benchmark results yet: run the scripts in `benchmarks/`, then `python benchmarks/update_readme.py`."
    parts = [markdown_table(["benchmark", "result", "goal", "met"], rows), ""]
    images = [f"![{TITLES[n]}]({link_prefix}{n}.png)" for n in TITLES if (results_dir / f"{n}.png").is_file()]
    parts += [" ".join(images), ""]
    for name, title in TITLES.items():
        data = _load(results_dir, name)
        if data:
            parts.append(
                f"- [{title}]({link_prefix}{name}.md): `{data['command']}`, {data['wall_seconds'] / 60:.0f} "
                f"min on {data['hardware']['cpu']} ({data['hardware']['cpu_count']} cores), seed "
                f"{data['seed']}" + (" — QUICK smoke run, not a result" if data["quick"] else "")
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
    new = update(text, render(results_dir, prefix))
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
