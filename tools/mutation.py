"""Mutation testing of the modules users depend on, one module per command (mutmut; not part of ``.ci/run``).

    pip install "hf-l0[mutation]"                # mutmut, pinned
    python tools/mutation.py --list              # the modules, their source files and their tests
    python tools/mutation.py distill             # mutate hf_l0/training/distill.py, run its tests per mutant, report
    python tools/mutation.py distill --report    # the last run's score and surviving mutants, again
    python tools/mutation.py distill --resume    # continue an interrupted run (results so far are kept)
    python tools/mutation.py distill --retest    # after adding tests: test again only the mutants not detected

A run works in ``.mutation/<module>/`` (git-ignored): a fresh copy of ``hf_l0``, ``tests`` and ``pyproject.toml``
plus a ``setup.cfg`` holding the mutmut config written from :data:`MODULES`. mutmut mutates only the module's
source files; it runs the module's (non-slow) test files once to learn which tests call which function, then runs
per mutant only the tests that call the mutated function, in ``--jobs`` processes (default 1) at ``nice`` 10 with
one torch thread. The report (``.mutation/<module>/report.md``) gives the score and the diff of every surviving
mutant; a survivor is a hole in the tests or an equivalent mutant (record which, and why, in tests/README.md).
``--retest`` copies the current tests and the package's other (not mutated) files into the work copy and runs only
the mutants the last run did not detect (the mutated sources and the module's test selection in :data:`MODULES` must
be unchanged since that run: mutmut starts over on another selection, so that needs a whole run).

mutmut leaves decorated functions alone (other than static / class methods), and the core of some modules is
decorated (``LagrangianController.on_step`` and ``_bisect_shift`` run under ``@torch.no_grad()``, so does
``export_gguf``). In the work copy only, each decorated top-level function or method ``@d def f`` of the mutated
files is therefore written as ``def f`` followed by ``f = d(f)``: the same object once the definition ends, and one
mutmut mutates. The report lists the functions so rewritten.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"

# module -> (source files to mutate, test files or node ids whose non-slow tests may kill its mutants). The one
# place to update when a module moves into a subpackage or gains a test file.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "lagrangian": (
        ["hf_l0/training/lagrangian.py"],
        ["tests/test_controller.py", "tests/test_recovery.py", "tests/test_trainer.py"],
    ),
    "distill": (
        ["hf_l0/training/distill.py"],
        [
            "tests/test_distill.py",
            "tests/test_trainer.py::test_distillation_loss_decreases",
            "tests/test_trainer.py::test_teacher_with_other_labels_fails_before_training",
            "tests/test_trainer.py::test_layerwise_distillation_needs_a_teacher",
        ],
    ),
    "cost": (
        ["hf_l0/cost/flops.py", "hf_l0/cost/base.py", "hf_l0/cost/targets.py"],
        ["tests/test_cost.py", "tests/test_reliability.py"],
    ),
    "latency": (["hf_l0/cost/latency.py"], ["tests/test_cost.py", "tests/test_latency_table.py"]),
    "hub": (["hf_l0/hub/save.py", "hf_l0/hub/load.py"], ["tests/hub", "tests/test_loader_fuzz.py"]),
    "gguf": (
        ["hf_l0/deploy/gguf_export.py"],
        [
            "tests/test_deploy_gguf.py",
            "tests/test_width_multiple.py::test_a_llama_pruned_with_width_multiple_32_needs_no_gguf_padding_in_q8_0",
        ],
    ),
}
# module -> tests of its files left out of the mutation runs (they stay in the suite), each run for nearly every
# mutant of the module (a whole run would take many hours): lagrangian's end-to-end training runs of 5-9 s (the unit
# tests on simulated plants in the same file check the rule those runs exercise); hub's real SmolLM2 round trip (59 s;
# the tiny-config round trips of every family cover the same save / load code) and the fresh-process load (7 s; the
# in-process loads of tests/hub check the same files).
DESELECT: dict[str, list[str]] = {
    "hub": [
        "tests/hub/test_export.py::test_smollm2_native_round_trip",
        "tests/hub/test_remote_code.py::test_fresh_process_without_hf_l0_loads_every_family",
    ],
    "lagrangian": [
        "tests/test_controller.py::test_pi_controller_tracks_the_schedule_and_lands_on_the_target",
        "tests/test_controller.py::test_gradient_ascent_controller_leaves_the_schedule",
        "tests/test_controller.py::test_custom_loop_and_trainer_share_the_controller",
        "tests/test_controller.py::test_trainer_writes_the_sparsity_trajectory",
    ],
}
NOT_SLOW = ["-m", "not slow"]
PYTEST_ARGS = ["-p", "no:cacheprovider"]
# mutmut's own status names (mutmut.models.results) counted as detected by the tests
DETECTED = ("killed", "timeout", "segfault")


def _mutmut() -> str:
    found = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if found is None:
        sys.exit('mutmut is not installed: pip install "hf-l0[mutation]" (or pip install mutmut==3.8.1).')
    return found


def _check_paths(module: str) -> None:
    sources, tests = MODULES[module]
    missing = [p for p in sources + [t.split("::")[0] for t in tests] if not (ROOT / p).exists()]
    if missing:
        sys.exit(f"{module}: {', '.join(missing)} not found: update MODULES in {Path(__file__).relative_to(ROOT)}.")


def _deselect(module: str) -> list[str]:
    return [arg for test in DESELECT.get(module, []) for arg in ("--deselect", test)]


def _setup_cfg(module: str) -> str:
    sources, tests = MODULES[module]

    def lines(values: list[str]) -> str:
        return "".join(f"\n    {v}" for v in values)

    return (
        "# written by tools/mutation.py from its MODULES table; edit that table, not this file\n"
        "[mutmut]\n"
        "source_paths = hf_l0\n"
        f"only_mutate ={lines(sources)}\n"
        f"pytest_add_cli_args_test_selection ={lines(tests + NOT_SLOW + _deselect(module))}\n"
        f"pytest_add_cli_args ={lines(PYTEST_ARGS)}\n"
        # torch is not fork-safe once it has run: every mutant's worker forks from a process that only imported
        "process_isolation = forkserver\n"
    )


def _lift_decorators(source: str) -> tuple[str, list[str]]:
    """``@d1 @d2 def f`` -> ``def f`` + ``f = d1(d2(f))`` for the top-level functions and the methods of top-level
    classes (static / class methods stay: mutmut handles them). Returns the new source and the functions lifted."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found = []
    for scope, prefix in [(tree, "")] + [(n, f"{n.name}.") for n in tree.body if isinstance(n, ast.ClassDef)]:
        for node in scope.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.decorator_list:
                continue
            decorators = [ast.get_source_segment(source, d) for d in node.decorator_list]
            if decorators in (["staticmethod"], ["classmethod"]):
                continue
            found.append((node, prefix, decorators))
    lifted = []
    for node, prefix, decorators in sorted(found, key=lambda item: -item[0].lineno):
        indent = lines[node.lineno - 1][: node.col_offset]
        wrapped = node.name
        for decorator in reversed(decorators):
            wrapped = f"{decorator}({wrapped})"
        lines.insert(node.end_lineno, f"{indent}{node.name} = {wrapped}\n")
        del lines[node.decorator_list[0].lineno - 1 : node.lineno - 1]
        lifted.append(f"{prefix}{node.name} (@{', @'.join(decorators)})")
    return "".join(lines), sorted(lifted)


def _prepare(module: str, resume: bool) -> Path:
    work = WORK / module
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "mutants").exists():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
        for name in ("hf_l0", "tests"):
            shutil.rmtree(work / name, ignore_errors=True)
            shutil.copytree(ROOT / name, work / name, ignore=ignore)
        shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
        for source in MODULES[module][0]:
            path = work / source
            path.write_text(_lift_decorators(path.read_text())[0])
    (work / "setup.cfg").write_text(_setup_cfg(module))
    return work


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        TOKENIZERS_PARALLELISM="false",
        # pytest's unraisable-exception plugin runs gc.collect() five times when a session ends: with torch and
        # transformers loaded that is ~1 s per mutant, more than most mutants' tests take. The warm-up plugin imports
        # once, in mutmut's fork server, what the tests would import lazily in every mutant's process (~1.6 s).
        # Each mutant is a pytest session in a forked process that exits without pytest's atexit cleanup, so its
        # numbered /tmp/pytest-of-<user> directory would stay (a hub run with its retest left 78 GB and filled the
        # disk): every test's tmp_path is removed when the test ends (module fixtures' directories stay, a few MB).
        PYTEST_ADDOPTS="-p no:unraisableexception -p hf_l0_mutation_warmup -o tmp_path_retention_policy=none",
        PYTHONPATH=str(ROOT / "tools" / "mutation_plugins"),  # that plugin only: nothing may shadow mutants/
    )
    return env


def report(module: str) -> str:
    """The last run's score by mutmut's own results, with the diff of every mutant the tests did not detect."""
    work = WORK / module
    if not (work / "mutants").is_dir():
        sys.exit(f"no run of {module} yet: python tools/mutation.py {module}")
    mutmut, env = _mutmut(), _environment()

    def tool(*args: str) -> str:
        return subprocess.run([mutmut, *args], cwd=work, env=env, capture_output=True, text=True, check=True).stdout

    statuses: dict[str, str] = {}
    for line in tool("results", "--all", "true").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    tool("export-cicd-stats")
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    detected = sum(counts.get(s, 0) for s in DETECTED)
    total = len(statuses)
    sources, tests = MODULES[module]
    lines = [
        f"# Mutation report: {module}",
        "",
        f"source: {', '.join(sources)}; tests: {' '.join(tests + NOT_SLOW + _deselect(module))}",
        f"score: {detected} / {total} detected ({100 * detected / max(total, 1):.1f}%)",
        "by status: " + ", ".join(f"{status} {n}" for status, n in sorted(counts.items())),
        f"mutmut export-cicd-stats: {json.dumps(stats, sort_keys=True)}",
        "",
        "decorators lifted in the work copy (see tools/mutation.py): "
        + ("; ".join(f for s in sources for f in _lift_decorators((ROOT / s).read_text())[1]) or "none"),
    ]
    undetected = sorted(name for name, status in statuses.items() if status not in DETECTED)
    if undetected:
        lines += ["", f"## Not detected ({len(undetected)})", ""]
        for name in undetected:
            lines += ["```diff", tool("show", name).strip(), "```", ""]
    text = "\n".join(lines) + "\n"
    (work / "report.md").write_text(text)
    return text


def _undetected(work: Path, mutmut: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True)
    names = []
    for line in out.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and status not in DETECTED:
            names.append(name)
    return names


def retest(module: str, jobs: int) -> int:
    """Test again, with the current tests, only the mutants the last run of ``module`` did not detect."""
    work = WORK / module
    if not (work / "mutants").is_dir():
        sys.exit(f"no run of {module} yet: python tools/mutation.py {module}")
    _check_paths(module)
    for source in MODULES[module][0]:
        if _lift_decorators((ROOT / source).read_text())[0] != (work / source).read_text():
            sys.exit(f"{source} changed since the last run of {module}: run the whole module again.")
    if (work / "setup.cfg").read_text() != _setup_cfg(module):
        # mutmut fingerprints its config: with another test selection it forgets every result and starts over
        sys.exit(f"the test selection of {module} changed since the last run: run the whole module again.")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.rmtree(work / "tests")
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    # the files not mutated follow the checkout too (a helper the tests need, a stricter check in a shared module)
    mutated = set(MODULES[module][0])
    for path in sorted((ROOT / "hf_l0").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative not in mutated and "__pycache__" not in relative:
            for destination in (work / relative, work / "mutants" / relative):
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)
    mutmut, env = _mutmut(), _environment()
    names = _undetected(work, mutmut, env)
    print(f"testing again {len(names)} undetected mutant(s) of {module} in {work.relative_to(ROOT)}", flush=True)
    if names:
        command = ["nice", "-n", "10", mutmut, "run", "--max-children", str(jobs), *names]
        code = subprocess.run(command, cwd=work, env=env).returncode
        if code != 0:
            print(f"mutmut run exited with {code}", file=sys.stderr)
            return code
    print(report(module))
    return 0


def run(module: str, jobs: int, resume: bool) -> int:
    _check_paths(module)
    mutmut = _mutmut()
    work = _prepare(module, resume)
    print(f"mutation testing {module} in {work.relative_to(ROOT)} ({jobs} job(s))", flush=True)
    command = ["nice", "-n", "10", mutmut, "run", "--max-children", str(jobs)]
    code = subprocess.run(command, cwd=work, env=_environment()).returncode
    if code != 0:
        print(f"mutmut run exited with {code}", file=sys.stderr)
        return code
    print(report(module))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", choices=sorted(MODULES))
    parser.add_argument("--list", action="store_true", help="show the modules, their sources and tests")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel (default 1)")
    parser.add_argument("--resume", action="store_true", help="keep the previous run's results and continue")
    parser.add_argument("--report", action="store_true", help="print the last run's report without running")
    parser.add_argument(
        "--retest", action="store_true", help="test again, with the current tests, the mutants not detected last time"
    )
    args = parser.parse_args(argv)
    if args.list or args.module is None:
        for name, (sources, tests) in MODULES.items():
            print(f"{name}: {', '.join(sources)} <- {' '.join(tests)}")
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be >= 1.")
    if args.report:
        print(report(args.module))
        return 0
    if args.retest:
        return retest(args.module, args.jobs)
    return run(args.module, args.jobs, args.resume)


if __name__ == "__main__":
    sys.exit(main())
