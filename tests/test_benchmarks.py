"""Every benchmark in --quick mode (tiny models, a few steps), so the scripts cannot silently rot: the result files
exist, carry the run metadata and hold finite numbers. Outputs go to tmp_path, never to benchmarks/results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import accuracy_sparsity, common, llm, speed, update_readme  # noqa: E402

METADATA = ("command", "versions", "hardware", "seed", "wall_seconds", "quick")


def _check_outputs(out: Path, name: str) -> dict:
    for suffix in (".json", ".md", ".png"):
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
    assert data["methods"] == ["hf-l0", "magnitude", "fisher", "activation"]
    for r in data["runs"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 < r["sparsity"] < 1.0
        assert r["parameters"] < data["dense"]["parameters"]
    l0 = data["runs"][0]
    for r in data["runs"][1:]:  # every baseline is cut to the size hf-l0 reached
        assert abs(r["sparsity"] - l0["sparsity"]) < 0.01 and 0.0 <= r["one_shot_validation_accuracy"] <= 1.0
    assert list((out / "models").glob("hf_l0-*/config.json")), "the compact model for speed.py was not saved"


def test_speed_quick(out):
    speed.main(["--quick", "--output_dir", str(out)])
    data = _check_outputs(out, "speed")
    assert {r["batch_size"] for r in data["latency"]} == {1, 32}
    assert all(r["ideal_speedup"] > 1.0 and r["speedup"] > 0 for r in data["latency"])
    assert all(r["fixed_ms"] > 0 and r["ideal_with_fixed_cost"] > 0 for r in data["latency"])  # timings: no order
    training = data["training"]
    assert training["step_time_ratio"] > 0 and training["peak_memory_ratio"] > 0


def test_llm_quick(out):
    llm.main(["--quick", "--output_dir", str(out)])
    data = _check_outputs(out, "llm")
    assert list(data["models"]) == ["dense", "hf-l0", "magnitude", "fisher", "activation"]
    assert all(m["perplexity"] > 1.0 and m["selection_perplexity"] > 1.0 and m["tokens_per_second"] > 0
               for m in data["models"].values())
    assert data["best_baseline"] in ("magnitude", "fisher", "activation") and data["best_baseline_ratio"] > 0
    assert data["budget"]["train_tokens"] > 0


def test_update_readme_fills_markers_from_results(out, tmp_path):
    if not (out / "llm.json").is_file():
        pytest.skip("needs the quick results of the tests above")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Benchmarks\n\n{update_readme.START}\nstale\n{update_readme.END}\n\n## Next\n")
    assert update_readme.main(["--readme", str(readme), "--results_dir", str(out), "--check"]) == 1
    assert update_readme.main(["--readme", str(readme), "--results_dir", str(out)]) == 0
    text = readme.read_text()
    assert "stale" not in text and "| benchmark | result | goal | met |" in text and "speed.png" in text
    assert text.endswith("## Next\n")
    assert update_readme.main(["--readme", str(readme), "--results_dir", str(out), "--check"]) == 0


def test_committed_readme_section_is_generated():
    """The README's headline table is exactly what update_readme renders from the committed results."""
    assert update_readme.main(["--check"]) == 0, "run python benchmarks/update_readme.py"
