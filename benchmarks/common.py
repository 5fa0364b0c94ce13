"""Shared pieces of the benchmarks: run metadata, result files (JSON + markdown), the distilling baseline trainer.
What the benchmarks share with the example scripts (evaluation loops, packaged data) lives in :mod:`hf_l0.demo`."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the benchmarks only write PNG files

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Trainer  # noqa: E402

import hf_l0  # noqa: E402
from hf_l0.training.distill import DistillationLoss  # noqa: E402
from hf_l0.training.trainer import L0Trainer, L0TrainingArguments  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def benchmark_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: where results go, seed, torch threads and the seconds-long --quick mode."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--output_dir", default=str(RESULTS_DIR), help="where the JSON / markdown / PNG go")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    return p


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (on a shared machine, 1 thread per process avoids oversubscription)."""
    if threads is not None:
        torch.set_num_threads(threads)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        # "-dirty" when tracked files differ from the commit: the result then belongs to no commit exactly.
        return (
            subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=7"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


class Run:
    """Wall clock and metadata of one benchmark invocation; :meth:`write` stores ``<name>.json`` and ``.md``."""

    def __init__(self, name: str, seed: int, quick: bool, output_dir: str | os.PathLike) -> None:
        self.name, self.seed, self.quick = name, seed, quick
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.started = datetime.now(timezone.utc)
        self.commit = git_commit()  # the code that runs; a commit made while it runs must not be credited
        self._start = time.perf_counter()

    def metadata(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "quick": self.quick,
            "seed": self.seed,
            "started_utc": self.started.isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - self._start, 1),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "hf_l0": hf_l0.__version__,
                "git_commit": self.commit,
            },
            "hardware": {
                "cpu": cpu_model(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "gpu": None,
                "platform": platform.platform(),
            },
        }

    def path(self, suffix: str) -> Path:
        return self.output_dir / f"{self.name}{suffix}"

    def write(self, results: dict[str, Any], markdown: str) -> dict[str, Any]:
        """Write ``<name>.json`` (metadata + results) and ``<name>.md`` (the table plus a provenance line)."""
        data = {**self.metadata(), **results}
        tmp = self.path(f".json.tmp{os.getpid()}")  # processes sharing an output directory write their own tmp
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=float) + "\n")
        os.replace(tmp, self.path(".json"))
        meta = data["hardware"]
        footer = (
            f"\n_{'QUICK (smoke-test) run — not a result. ' if self.quick else ''}"
            f"`{data['command']}` — seed {self.seed}, wall time {data['wall_seconds'] / 60:.1f} min, "
            f"{meta['cpu']} ({meta['cpu_count']} cores, {meta['torch_threads']} torch threads), torch "
            f"{torch.__version__}, transformers {transformers.__version__}, hf-l0 {hf_l0.__version__}._\n"
        )
        self.path(".md").write_text(markdown.rstrip() + "\n" + footer)
        return data


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "–"
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> str:
    """``/proc/loadavg``, recorded next to timings: they mean something only on an otherwise idle machine."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def goal(met: bool) -> str:
    return "✅" if met else "❌"


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """The options both quality benchmarks share: which methods run and how hf-l0's gates start."""
    p.add_argument(
        "--methods",
        default="hf-l0,magnitude,fisher,activation",
        help="comma-separated, from hf-l0, magnitude, fisher, activation",
    )
    add_gate_arguments(p)


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """How hf-l0's gates start and its recovery stage (what `hf_l0_trainer` reads besides the distillation options)."""
    p.add_argument("--gate_init", default="uniform", help="hf-l0's gate start (see L0TrainingArguments.gate_init)")
    p.add_argument("--gate_init_batches", type=int, default=16)
    p.add_argument("--gate_init_scale", type=float, default=1.0)
    p.add_argument(
        "--recovery_ratio",
        type=float,
        default=0.0,
        help="hf-l0's recovery stage (L0TrainingArguments.recovery_ratio, whose default is 0.5); 0 here, the setting "
        "of the committed runs, which predate the stage",
    )


def training_arguments(output_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Trainer settings every benchmark run shares (CPU, no checkpoints, no reporters; a log every 10 steps, the
    resolution of the sparsity trajectory)."""
    return {
        "output_dir": str(output_dir),
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 10,
        "dataloader_num_workers": 0,
        **overrides,
    }


class DistillationTrainer(Trainer):
    """Fine-tunes an (already pruned) model with `hf_l0.L0Trainer`'s distillation loss (:class:`DistillationLoss`:
    ``alpha`` x logit KL to the frozen teacher + (1 - alpha) x task loss), so the baseline gets the same signal."""

    def __init__(
        self, *args: Any, teacher: torch.nn.Module, alpha: float = 0.9, temperature: float = 2.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.distillation_loss = DistillationLoss(teacher, alpha, temperature)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ):
        if not model.training:
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        loss, outputs = self.distillation_loss(model, inputs)
        return (loss, outputs) if return_outputs else loss


BASELINES = ("magnitude", "fisher", "activation")  # one-shot importance pruning (hf_l0.pruning.baselines) + recovery
METHODS = ("hf-l0", *BASELINES)


def trainable_copy(teacher: torch.nn.Module) -> torch.nn.Module:
    """A student initialised from the teacher (the trainers freeze the teacher in place, so re-enable grads)."""
    return copy.deepcopy(teacher).train().requires_grad_(True)


def hf_l0_trainer(
    args: argparse.Namespace,
    trainer_arguments: dict[str, Any],
    dense: torch.nn.Module,
    train_dataset: Any,
    data_collator: Any,
    processing_class: Any = None,
    **l0_arguments: Any,
) -> L0Trainer:
    """hf-l0's run in the quality benchmarks, not yet trained: seeded, a student copied from ``dense`` and distilled
    from it, with the shared method options of ``args`` (distillation, gate learning rate and start, recovery stage)
    and ``l0_arguments``, which win over them (a benchmark's own settings). Its constructor raises the ``ValueError``
    of an unreachable target (``L0Trainer`` checks it against the gated model), which a benchmark may record instead
    of a run."""
    transformers.set_seed(args.seed)
    shared = {
        "distill_alpha": args.distill_alpha,
        "distill_temperature": args.distill_temperature,
        "gate_learning_rate": args.gate_learning_rate,
        "gate_init": args.gate_init,
        "gate_init_batches": args.gate_init_batches,
        "gate_init_scale": args.gate_init_scale,
        "recovery_ratio": args.recovery_ratio,
    }
    return L0Trainer(
        model=trainable_copy(dense),
        args=L0TrainingArguments(**trainer_arguments, **{**shared, **l0_arguments}),
        teacher_model=dense,
        train_dataset=train_dataset,
        data_collator=data_collator,
        processing_class=processing_class,
    )


def parse_methods(text: str) -> list[str]:
    """``--methods`` (comma-separated, e.g. ``hf-l0,magnitude,fisher,activation``) as a list in that order."""
    names = [name.strip().replace("hf_l0", "hf-l0") for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown or not names:
        raise SystemExit(f"--methods {text!r}: unknown or no methods {unknown}; choose from {', '.join(METHODS)}.")
    return list(dict.fromkeys(names))


def baseline_prune(
    method: str, dense: torch.nn.Module, sparsity: float, batches: list[dict[str, Any]]
) -> tuple[torch.nn.Module, float]:
    """A trainable copy of ``dense`` pruned one-shot by ``method``'s importance scores (calibration ``batches`` for
    fisher / activation) down to ``sparsity`` of the attention + FFN parameters, and the seconds scoring took."""
    model = copy.deepcopy(dense).train().requires_grad_(True)
    start = time.perf_counter()
    if method == "magnitude":
        scores = hf_l0.magnitude_scores(model)
    elif method == "fisher":
        scores = hf_l0.fisher_scores(model, batches)
    elif method == "activation":
        scores = hf_l0.activation_scores(model, batches)
    else:
        raise ValueError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}.")
    seconds = time.perf_counter() - start
    return hf_l0.importance_prune(model, scores, sparsity).train(), seconds


def recover(
    model: torch.nn.Module,
    teacher: torch.nn.Module,
    train_dataset: Any,
    collator: Any,
    args: dict[str, Any],
    alpha: float,
    temperature: float,
) -> torch.nn.Module:
    """The recovery every baseline gets: hf-l0's budget (``args``: same steps, batch, learning rate, schedule, seed)
    and loss (distillation from the same teacher, :class:`DistillationTrainer`). Returns the model in eval mode."""
    DistillationTrainer(
        model=model,
        args=transformers.TrainingArguments(**args),
        teacher=teacher,
        alpha=alpha,
        temperature=temperature,
        train_dataset=train_dataset,
        data_collator=collator,
    ).train()
    return model.eval()


def finite_numbers(data: Any) -> bool:
    """True when every number in a nested JSON-like structure is finite (what the quick tests check)."""
    if isinstance(data, dict):
        return all(finite_numbers(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return all(finite_numbers(v) for v in data)
    if isinstance(data, float):
        return math.isfinite(data)
    return True


def record_trajectory(trainer: Any, output_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The sparsity trajectory of an `L0Trainer` run, written as ``trajectories/<name>/sparsity_trajectory.{json,png}``
    under the benchmark's output directory; returns what the run's JSON records (largest gap to the schedule after
    the first 10% of the steps, and the rows)."""
    from hf_l0.training.trajectory import trajectory_from_log_history, write_sparsity_trajectory

    rows = trajectory_from_log_history(trainer.state.log_history)
    summary = write_sparsity_trajectory(
        rows, Path(output_dir) / "trajectories" / name, trainer.state.max_steps, title=name
    )
    return {"trajectory_max_gap": summary["max_gap_after_10_percent"], "trajectory": rows}


# --- Resumable runs: one JSON file per (method, target, steps) run, aggregated by ``--collect`` -----------------------


def add_run_store_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that keep one file per run (resume, split across processes, aggregate)."""
    p.add_argument(
        "--overwrite", action="store_true", help="rerun runs whose file exists (default: skip them, as finished)"
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: rebuild the aggregate JSON / markdown / PNG from the run files present",
    )


def run_name(method: str, target: float | None = None, steps: int | None = None) -> str:
    """The file stem of one run: ``<method>[-t<target>][-s<steps>]``, e.g. ``hf_l0-t0.75-s300``."""
    return method + ("" if target is None else f"-t{target:g}") + ("" if steps is None else f"-s{steps}")


class RunStore:
    """The finished runs of one benchmark, one JSON file each under ``<output_dir>/<benchmark>/runs/``.

    A file is written atomically (tmp + ``os.replace``) as soon as its run ends, so an interrupted job loses only the
    run in progress, and several processes (each with its own ``--targets``) can fill one store. Every file records
    the ``settings`` it ran with and its own provenance (command, git commit, start time, threads, versions); a run
    whose file exists with the same settings is finished, one with other settings is an error (mixing them would
    compare runs of different budgets) unless the caller overwrites it."""

    def __init__(self, run: Run) -> None:
        self.run = run  # the invocation: its command, git commit (taken at its start), versions and hardware
        self.root = run.output_dir / run.name
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.runs_dir / f"{name}.json"

    def finished(self, name: str, settings: dict[str, Any], overwrite: bool = False) -> dict[str, Any] | None:
        """The record of run ``name`` if it already ran with ``settings`` (None if it must run)."""
        path = self.path(name)
        if overwrite or not path.is_file():
            return None
        record = json.loads(path.read_text())
        stored = json.loads(json.dumps(record.get("settings"), default=float))
        wanted = json.loads(json.dumps(settings, default=float))  # the JSON round trip: tuples, numpy floats
        if stored != wanted:
            keys = sorted(k for k in {*stored, *wanted} if stored.get(k) != wanted.get(k))
            raise SystemExit(
                f"{path} ran with other settings ({', '.join(keys)}): pass --overwrite to rerun it with these, or "
                "choose another --output_dir."
            )
        print(f"{name}: finished ({path}), skipped", flush=True)
        return record

    def write(self, name: str, settings: dict[str, Any], result: dict[str, Any], started: datetime) -> dict[str, Any]:
        """Store one finished run atomically, with its provenance; returns the record."""
        meta = self.run.metadata()
        meta["started_utc"] = started.isoformat(timespec="seconds")
        meta["wall_seconds"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
        record = {"name": name, "settings": settings, **result, "provenance": meta}
        self._replace(name, record)
        print(f"{name}: written to {self.path(name)}", flush=True)
        return record

    def amend(self, name: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
        """Add ``key`` (a later measurement of a finished run, with this invocation's provenance) to its record,
        atomically; the run's own settings, numbers and provenance stay as they are. Returns the record."""
        record = self.get(name)
        if record is None:
            raise KeyError(f"no finished run {name} under {self.runs_dir}")
        record[key] = {**value, "provenance": self.run.metadata()}
        self._replace(name, record)
        return record

    def _replace(self, name: str, record: dict[str, Any]) -> None:
        """Write run ``name``'s file atomically (tmp + ``os.replace``): a reader never sees half a record."""
        tmp = self.path(name).with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
        os.replace(tmp, self.path(name))

    def records(self) -> list[dict[str, Any]]:
        """Every finished run's record, in file-name order."""
        return [json.loads(path.read_text()) for path in sorted(self.runs_dir.glob("*.json"))]

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def claim(self, name: str) -> bool:
        """Take run ``name`` for this process (a ``<name>.lock`` file made atomically), so processes that share
        a run list don't both train it; False while another live process on this host holds it. A lock left by a
        process that died is taken over. :meth:`release` it when the run ends, written or not."""
        path = self.runs_dir / f"{name}.lock"
        me = f"{platform.node()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    host, pid = path.read_text().split()
                except (OSError, ValueError):
                    return False  # being written, or unreadable: leave it to its owner
                if host != platform.node() or _alive(int(pid)):
                    return False
                path.unlink(missing_ok=True)  # its process is gone: the run never ended
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return True
        return False

    def release(self, name: str) -> None:
        (self.runs_dir / f"{name}.lock").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def provenance_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What an aggregate says about the runs it was built from: their distinct commands and commits, and the
    compute they took (the sum of their wall times: parallel processes overlap in time)."""
    metas = [r["provenance"] for r in records if "provenance" in r]
    return {
        "run_count": len(metas),
        "run_commands": sorted({m["command"] for m in metas}),
        "run_commits": sorted({str(m["versions"]["git_commit"]) for m in metas}),
        "run_seconds": round(sum(m["wall_seconds"] for m in metas), 1),
        "first_started_utc": min((m["started_utc"] for m in metas), default=None),
        "torch_threads": sorted({m["hardware"]["torch_threads"] for m in metas}),
    }


def aggregate_run(record: dict[str, Any]) -> dict[str, Any]:
    """A run as an aggregate lists it: its numbers and where it came from (the trajectory rows stay in its file)."""
    meta = record["provenance"]
    run = {k: v for k, v in record.items() if k not in ("name", "settings", "provenance", "trajectory")}
    run["provenance"] = {
        **{k: meta[k] for k in ("command", "started_utc", "wall_seconds")},
        "git_commit": meta["versions"]["git_commit"],
        "torch_threads": meta["hardware"]["torch_threads"],
        "file": f"runs/{record['name']}.json",
    }
    return run
