"""The sparsity trajectory of a pruning run: what a user reads to see the controller keep to its schedule.

:class:`hf_l0.L0Trainer` writes ``sparsity_trajectory.json`` and ``sparsity_trajectory.png`` next to its output at the
end of training; a custom loop can build the same rows itself and call :func:`write_sparsity_trajectory`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

TRAJECTORY_KEYS = ("target_sparsity", "expected_sparsity", "deterministic_sparsity", "lambda_1")


def trajectory_from_log_history(log_history: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The rows of a Trainer's ``log_history`` that carry the L0 statistics: step, scheduled target, expected and
    deterministic sparsity, ``lambda_1``."""
    return [
        {"step": int(row["step"]), **{key: float(row[key]) for key in TRAJECTORY_KEYS}}
        for row in log_history
        if all(key in row for key in ("step", *TRAJECTORY_KEYS))
    ]


def tracking_gap(rows: Iterable[Mapping[str, float]], max_steps: int, skip_fraction: float = 0.1) -> float | None:
    """Largest |deterministic sparsity - scheduled target| over the rows after the first ``skip_fraction`` of the
    steps (None when there is no such row)."""
    gaps = [
        abs(r["deterministic_sparsity"] - r["target_sparsity"]) for r in rows if r["step"] >= skip_fraction * max_steps
    ]
    return max(gaps) if gaps else None


def write_sparsity_trajectory(
    rows: list[dict[str, float]], output_dir: str | os.PathLike, max_steps: int, title: str | None = None
) -> dict[str, Any]:
    """Write ``sparsity_trajectory.json`` and, where matplotlib is installed, ``sparsity_trajectory.png`` into
    ``output_dir``; returns the JSON content (rows and the tracking gap after the first 10% of the steps)."""
    os.makedirs(output_dir, exist_ok=True)
    summary = {"max_steps": max_steps, "max_gap_after_10_percent": tracking_gap(rows, max_steps), "rows": rows}
    path = os.path.join(output_dir, "sparsity_trajectory.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(path + ".tmp", path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional: the JSON holds the same numbers
        return summary
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=(3, 1.3))
    top.plot(steps, [r["target_sparsity"] for r in rows], "k--", label="scheduled target")
    top.plot(steps, [r["expected_sparsity"] for r in rows], label="expected sparsity")
    top.plot(steps, [r["deterministic_sparsity"] for r in rows], label="deterministic sparsity (what pruning keeps)")
    top.set_ylabel("attention + FFN sparsity")
    top.legend(loc="lower right", fontsize=8)
    top.grid(alpha=0.3)
    if title:
        top.set_title(title, fontsize=10)
    bottom.plot(steps, [r["lambda_1"] for r in rows], color="tab:red")
    bottom.set_ylabel("lambda_1")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "sparsity_trajectory.png"), dpi=110)
    plt.close(fig)
    return summary
