"""MkDocs hooks: pages and tables generated from the repository, so that nothing on the site is typed twice.

* ``benchmarks/*.md`` pages: the full result tables that the benchmark scripts write to ``benchmarks/results/``, with
  their plots (the main job's sparsity trajectory included).
* ``<!-- generated: benchmarks-summary -->``: the headline table, built from ``benchmarks/results/*.json`` by the
  code that fills the README (``benchmarks/update_readme.py``); ``<!-- generated: main-job -->``: the main job's
  dense-vs-pruned table from its committed ``summary.json``.
* ``<!-- generated: fields module.Class -->``: a dataclass's own fields (inherited transformers fields left out), with
  their defaults and ``help`` texts: every flag of :class:`hf_l0.L0TrainingArguments` and every :class:`hf_l0.L0Config`
  field, as the code defines them.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SITE_DIR = "benchmarks"  # where the result pages and plots land on the site, next to benchmarks.md
MAIN_JOB_PLOT = RESULTS / "main_job" / "sparsity_trajectory.png"
MARKER = re.compile(r"<!-- generated: (\S+)(?: (\S+))? -->")
TITLES = {  # result pages whose file has no title of its own
    "accuracy_sparsity": "Accuracy vs sparsity",
    "accuracy_steps": "Accuracy vs steps",
    "speed": "Speed and training cost",
    "llm": "LLM (SmolLM2-135M)",
    "llm-s300": "LLM (SmolLM2-135M), 300 steps",
    "latency_targets": "Latency and FLOPs targets",
    "gguf_llamacpp": "llama.cpp (GGUF)",
    "onnx_speed": "ONNX Runtime",
    "onnx_generation": "ONNX Runtime generation",
    "recovery": "Search, then recover",
    "latency_recovery": "Latency targets against the best params-targeted runs",
}
# latency_targets.py's second store (heads,ffn with the recovery stage): its page and plot, named after its folder
LATENCY_RECOVERY = RESULTS / "latency_recovery"


def result_pages() -> dict[str, Path]:
    """Site path -> source: the result tables (``results/*.md``, the latency tables' accuracy in ``results/latency``),
    the diagnostics' notes and the benchmarks' own README (how to run them)."""
    pages = {f"{SITE_DIR}/{p.name}": p for p in sorted(RESULTS.glob("*.md"))}
    pages.update({f"{SITE_DIR}/latency/{p.name}": p for p in sorted((RESULTS / "latency").glob("*.md"))})
    if (LATENCY_RECOVERY / "latency_targets.md").is_file():
        pages[f"{SITE_DIR}/latency_recovery.md"] = LATENCY_RECOVERY / "latency_targets.md"
    pages[f"{SITE_DIR}/diagnostics.md"] = RESULTS / "diagnostics" / "README.md"
    pages[f"{SITE_DIR}/running.md"] = RESULTS.parent / "README.md"
    return pages


def _page_text(uri: str, path: Path) -> str:
    """The file's text under a title of its own: the file's ``# `` heading, else one from :data:`TITLES`."""
    text = path.read_text()
    if uri.endswith("/running.md"):  # the benchmarks' README is titled "Benchmarks", as the summary page is
        return "# Running the benchmarks\n" + text.split("\n", 1)[1]
    if text.lstrip().startswith("# "):
        return text
    stem = Path(uri).stem if Path(uri).stem in TITLES else path.stem
    return f"# {TITLES.get(stem, stem.replace('_', ' ').capitalize())}\n\n{text}"


def on_files(files: Files, config: Any) -> Files:
    for uri, path in result_pages().items():
        files.append(File.generated(config, uri, content=_page_text(uri, path)))
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"{SITE_DIR}/{plot.name}", abs_src_path=str(plot)))
    if (LATENCY_RECOVERY / "latency_targets.png").is_file():
        plot = LATENCY_RECOVERY / "latency_targets.png"
        files.append(File.generated(config, f"{SITE_DIR}/latency_recovery.png", abs_src_path=str(plot)))
    if MAIN_JOB_PLOT.is_file():
        files.append(File.generated(config, f"{SITE_DIR}/main_job_trajectory.png", abs_src_path=str(MAIN_JOB_PLOT)))
    return files


def _module(name: str) -> Any:
    """Import ``name`` from this checkout (the hooks run wherever mkdocs was started)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


def _update_readme() -> Any:
    return _module("benchmarks.update_readme")


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(_module(module), name)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def fields_table(dotted: str) -> str:
    """Name, default and help of the fields ``dotted`` (a dataclass) declares in hf_l0 itself."""
    cls = _import(dotted)
    own: set[str] = set()
    for base in cls.__mro__:
        if base.__module__.startswith("hf_l0"):
            own |= set(vars(base).get("__annotations__", {}))
    rows = ["| field | default | what it does |", "|---|---|---|"]
    for field in dataclasses.fields(cls):
        if field.name not in own:
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        rows.append(f"| `{field.name}` | `{default!r}` | {_cell(field.metadata.get('help', ''))} |")
    return "\n".join(rows)


def public_api_table() -> str:
    """Every name of ``hf_l0.__all__`` linked to its entry in the API reference, with its docstring's first sentence.

    The links are cross-references: a name without a rendered entry fails ``mkdocs build --strict``."""
    hf_l0 = _module("hf_l0")
    rows = ["| name | what it is |", "|---|---|"]
    for name in sorted(hf_l0.__all__, key=str.lower):
        obj = getattr(hf_l0, name)
        paragraph = (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")
        summary = re.split(r"(?<=\.)\s+(?=[A-Z])", paragraph, maxsplit=1)[0]  # the first sentence
        summary = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", summary)
        rows.append(f"| [`{name}`][{obj.__module__}.{name}] | {_cell(summary)} |")
    return "\n".join(rows)


def _expand(match: re.Match[str]) -> str:
    name, argument = match.group(1), match.group(2)
    if name == "benchmarks-summary":
        return _update_readme().render(RESULTS, f"{SITE_DIR}/")
    if name == "main-job":
        return _update_readme().render_main_job(RESULTS)
    if name == "public-api":
        return public_api_table()
    if name == "fields" and argument:
        return fields_table(argument)
    raise ValueError(f"unknown generated block {match.group(0)!r}: see docs/hooks/generated.py")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return MARKER.sub(_expand, markdown)
