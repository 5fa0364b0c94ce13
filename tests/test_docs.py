"""The documentation site: every Python example on its pages runs, every public name has an API entry, and the site
builds with ``mkdocs build --strict``.

An example that cannot run here (a Hub push, several processes) is marked by ``<!-- not-run: reason -->`` on the line
before its fence and is reported as skipped with that reason.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import hf_l0

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOT_RUN = re.compile(r"<!-- not-run: (\S.*?) -->")
PAGES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]  # the README's examples are guides too


@dataclass
class CodeBlock:
    page: str  # relative to docs/
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason given by a not-run marker, if any


def code_blocks(language: str = "python") -> list[CodeBlock]:
    """The fenced ``language`` blocks of every page under docs/ and of the README, with the not-run reason that
    precedes each."""
    blocks = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == f"```{language}":
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
                before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                marker = NOT_RUN.fullmatch(before)
                code = "\n".join(lines[i + 1 : end])
                name = page.relative_to(DOCS).as_posix() if page.is_relative_to(DOCS) else f"../{page.name}"
                blocks.append(CodeBlock(name, i + 1, code, marker and marker.group(1)))
                i = end
            i += 1
    return blocks


BLOCKS = code_blocks()


def test_the_pages_have_python_examples_and_every_not_run_marker_precedes_one():
    assert len(BLOCKS) >= 15, [f"{b.page}:{b.line}" for b in BLOCKS]
    marked = sum(b.not_run is not None for b in BLOCKS)
    markers = sum(len(NOT_RUN.findall(page.read_text())) for page in PAGES)
    # a marker before anything else (a bash block, a paragraph) would skip nothing and hide a typo
    assert markers == marked, f"{markers} not-run markers, but {marked} precede a python block"
    assert marked <= len(BLOCKS) // 4, "most examples must run: mark only what cannot run here"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}:{b.line}" for b in BLOCKS])
def test_docs_example_runs(block, tmp_path, monkeypatch):
    if block.not_run:
        pytest.skip(f"not run: {block.not_run}")
    monkeypatch.chdir(tmp_path)  # examples write their outputs into the working directory
    monkeypatch.setenv("HF_L0_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    code = compile(block.code, f"docs/{block.page}:{block.line}", "exec")
    exec(code, {"__name__": "__docs__"})  # a fresh namespace per example, as a reader's session


def api_directives() -> set[str]:
    """The identifiers the API pages render (``::: hf_l0.gates.patch`` lines)."""
    directives = set()
    for page in (DOCS / "api").glob("*.md"):
        directives |= {m.group(1) for m in re.finditer(r"^::: (\S+)", page.read_text(), re.MULTILINE)}
    return directives


def has_docstring(module_name: str, name: str) -> bool:
    """Whether the module's source gives ``name`` a docstring (what mkdocstrings reads; members without one are not
    rendered, see ``show_if_no_docstring`` in mkdocs.yml)."""
    tree = ast.parse(Path(importlib.import_module(module_name).__file__).read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return ast.get_docstring(node) is not None
    return False


def test_every_public_name_has_an_api_entry():
    directives = api_directives()
    missing = []
    for name in hf_l0.__all__:
        module = getattr(hf_l0, name).__module__
        explicit = f"{module}.{name}" in directives
        if not explicit and not (module in directives and has_docstring(module, name)):
            missing.append(f"{name} ({module})")
    assert not missing, f"hf_l0.__all__ names without a rendered API entry: {missing}"


def inventory_names(site: Path) -> set[str]:
    """The objects mkdocstrings rendered: the site's Sphinx inventory (objects.inv, version 2)."""
    data = (site / "objects.inv").read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line.strip()}


def test_site_builds_with_mkdocs_strict_and_renders_every_public_name(tmp_path):
    for package in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            importlib.import_module(package)
        except ImportError:
            pytest.skip(f'{package} is not installed: pip install -e ".[docs]" builds the site')
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    result = subprocess.run(
        [*command, "--site-dir", str(site)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    rendered = inventory_names(site)
    missing = [name for name in hf_l0.__all__ if f"{getattr(hf_l0, name).__module__}.{name}" not in rendered]
    assert not missing, f"not rendered on the site: {missing}"
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- generated:" not in benchmarks and "all-MiniLM-L6-v2" in benchmarks
