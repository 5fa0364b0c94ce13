"""Saves that tests/hub/test_save_directory.py kills with SIGKILL at every step of the swap.

    python tests/crash_save.py OUT_DIR

For each scenario (old model -> new model) it writes ``OUT_DIR/<scenario>/old`` and ``new`` (plain saves into empty
directories, the references), ``base`` (the old save plus files of the user's), and for every step ``k`` of the new
save's swap ``crash-<k>``: a copy of ``base`` into which a forked child saved the new model and was killed with
SIGKILL right after step ``k``. ``steps.json`` lists the steps by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import compact_model, make_model  # noqa: E402

import hf_l0  # noqa: E402
from hf_l0.hub import save as hub_save  # noqa: E402

USER_FILES = {"model-notes.md": "notes\n", "hf_l0_notes.py": "# mine\n", "model-runs/run1.txt": "run 1\n"}


def scenarios():
    """name -> (old model, its save options, new model, its save options)."""
    old_remote = compact_model("gpt2", "AutoModelForCausalLM", seed=0)
    new_remote = compact_model("gpt2", "AutoModelForCausalLM", seed=1)
    return {
        # single file -> shards, remote code both times
        "single-to-sharded": (old_remote, {}, new_remote, {"max_shard_size": "20KB"}),
        # shards + remote code -> a dense stock model in one file (the code and the shards go)
        "sharded-to-dense": (new_remote, {"max_shard_size": "20KB"}, make_model("gpt2", seed=2), {}),
    }


def save_in_child(model, directory: Path, options: dict, kill_at: int | None, steps_file: Path | None) -> None:
    """Save in a forked child; it kills itself with SIGKILL right after step ``kill_at`` (no cleanup at all)."""
    pid = os.fork()
    if pid == 0:
        seen: list[str] = []

        def hook(step: str) -> None:
            seen.append(step)
            if kill_at is not None and len(seen) - 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        hub_save._step_hook = hook
        try:
            hf_l0.save_pretrained(model, directory, **options)
            if steps_file is not None:
                steps_file.write_text(json.dumps(seen))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if killed != (kill_at is not None):
        raise SystemExit(f"save child: status {status}, kill_at {kill_at}")


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    for name, (old, old_options, new, new_options) in scenarios().items():
        root = out / name
        hf_l0.save_pretrained(old, root / "old", **old_options)
        hf_l0.save_pretrained(new, root / "new", **new_options)
        base = root / "base"
        shutil.copytree(root / "old", base)
        for path, text in USER_FILES.items():
            (base / path).parent.mkdir(parents=True, exist_ok=True)
            (base / path).write_text(text)
        probe = root / "probe"
        shutil.copytree(base, probe)
        save_in_child(new, probe, new_options, None, root / "steps.json")
        for k in range(len(json.loads((root / "steps.json").read_text()))):
            shutil.copytree(base, root / f"crash-{k}", symlinks=True)
            save_in_child(new, root / f"crash-{k}", new_options, k, None)


if __name__ == "__main__":
    main()
