"""The README's main-job table is generated from the committed summary.json of the main job (no typed numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import update_readme  # noqa: E402
from benchmarks.common import RESULTS_DIR  # noqa: E402


def summary() -> dict:
    # the fields hf-l0 prune-classifier writes (values are arbitrary: the test reads them back)
    return {
        "split": "test",
        "num_examples": 1000,
        "latency_batch": [32, 64],
        "dense": {"accuracy": 0.8123, "f1": 0.8345},
        "pruned": {"accuracy": 0.7911, "f1": 0.8022},
        "gated": {"accuracy": 0.7911, "f1": 0.8022},
        "target_sparsity": 0.6,
        "reached_sparsity": 0.59987,
        "dense_parameters": 22713986,
        "pruned_parameters": 16331096,
        "dense_latency_ms": 187.91,
        "pruned_latency_ms": 88.53,
        "speedup": 2.1226,
        "latency_threads": 2,
        "saved_to": "/x",
        "dense_finetune_seconds": 450.0,
        "prune_seconds": 468.0,
        "wall_seconds": 954.0,
    }


def test_committed_readme_main_job_section_is_generated_from_the_committed_summary():
    readme = (ROOT / "README.md").read_text()
    assert update_readme.MAIN_START in readme and update_readme.MAIN_END in readme
    section = readme.split(update_readme.MAIN_START, 1)[1].split(update_readme.MAIN_END, 1)[0].strip()
    assert section == update_readme.render_main_job(RESULTS_DIR)
    if not (RESULTS_DIR / update_readme.MAIN_JOB_SUMMARY).is_file():
        assert "No committed main-job summary yet" in section
    assert update_readme.main(["--check"]) == 0, "run python benchmarks/update_readme.py"


def test_main_job_table_follows_the_summary(tmp_path):
    results = tmp_path / "results"
    (results / "main_job").mkdir(parents=True)
    data = summary()
    (results / "main_job" / "summary.json").write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n{update_readme.START}\n{update_readme.END}\n\nMain job:\n\n{update_readme.MAIN_START}\n"
        f"| typed | by | hand |\n{update_readme.MAIN_END}\n"
    )
    args = ["--readme", str(readme), "--results_dir", str(results)]
    assert update_readme.main([*args, "--check"]) == 1
    assert update_readme.main(args) == 0 and update_readme.main([*args, "--check"]) == 0
    text = readme.read_text()
    assert "typed" not in text
    for value in (
        f"{data['dense']['accuracy']:.3f}",
        f"{data['pruned']['accuracy']:.3f}",
        f"{data['pruned']['f1']:.3f}",
        f"{data['dense_parameters']:,}",
        f"{data['reached_sparsity']:.4f}",
        f"{data['speedup']:.2f}×",
        f"{data['pruned_latency_ms']:.1f} ms",
        f"{data['wall_seconds'] / 60:.1f} min",
    ):
        assert value in text, value
    data["pruned"]["accuracy"] = 0.5  # a new run: the README is stale until regenerated
    (results / "main_job" / "summary.json").write_text(json.dumps(data))
    assert update_readme.main([*args, "--check"]) == 1
