"""What a cost target is: a cost whose *reduction* ``1 - cost / dense cost`` the Lagrangian controller drives
through its ``metric`` hook (:class:`hf_l0.cost.flops.FlopsTarget`, :class:`hf_l0.cost.latency.LatencyTarget`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..gates.hard_concrete import sublayer_gate_names
from ..gates.patch import get_gates

TARGET_METRICS = ("params", "flops", "latency")
# (sublayer, its unit gate, its whole-sublayer gate), from the one gate table
SUBLAYER_GATES = tuple((kind, *sublayer_gate_names(kind)) for kind in ("attention", "ffn"))


class CostTarget:
    """A cost whose reduction the Lagrangian controller drives: ``target(model, deterministic) -> reduction``.

    Subclasses give :meth:`cost` (``mode`` = expected, deterministic, full or minimum, the last with every gate shut
    except what uniform targets keep) and a unit for the logs.
    """

    name = "cost"
    unit = ""
    scale = 1.0  # cost x scale is logged in ``unit``
    fixed_description = "the fixed cost"

    def cost(self, model: nn.Module, mode: str) -> torch.Tensor:
        raise NotImplementedError

    def fixed_cost(self, model: nn.Module) -> float:
        """What no gate can remove (with every structure gated)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, deterministic: bool = False) -> torch.Tensor:
        cost = self.cost(model, "deterministic" if deterministic else "expected")
        return 1.0 - cost / self.cost(model, "full").detach()

    def max_reduction(self, model: nn.Module) -> float:
        """The largest reduction the model's gates can reach (every gate shut; sizes only grow with each gate)."""
        return float(1.0 - self.cost(model, "minimum") / self.cost(model, "full"))

    def check_target(self, model: nn.Module, target: float) -> None:
        """Raise a ``ValueError`` naming the problem and the fix when ``target`` (a reduction) cannot be reached."""
        if not 0.0 < target < 1.0:
            raise ValueError(
                f"a {self.name} target of {target} is impossible: it is the fraction of the dense "
                f"{self.name} to remove (1 - compact / dense) and must lie strictly between 0 and 1."
            )
        full = float(self.cost(model, "full"))
        fixed_share = self.fixed_cost(model) / full
        if target > 1.0 - fixed_share + 1e-12:
            raise ValueError(
                f"a {self.name} reduction of {target} cannot be reached: {self.fixed_description} is "
                f"{fixed_share:.4f} of the dense {self.name}, and pruning heads, neurons and sublayers never removes "
                f"it. Choose a target of at most {1.0 - fixed_share:.4f}."
            )
        maximum = self.max_reduction(model)
        if target > maximum + 1e-12:
            structures = ", ".join(get_gates(model).gates)
            raise ValueError(
                f"a {self.name} reduction of {target} cannot be reached: with gates on {structures} this model can "
                f"lose at most {maximum:.4f} of its {self.name} (every gate shut). Gate more structures (layers "
                f"remove whole sublayers; drop uniform targets like target_heads) or lower the target to at most "
                f"{maximum:.4f}."
            )

    def log_values(self, model: nn.Module) -> dict[str, float]:
        """Expected and deterministic cost in :attr:`unit` (for the trainer's logs)."""
        with torch.no_grad():
            return {
                f"expected_{self.name}": float(self.cost(model, "expected")) * self.scale,
                f"deterministic_{self.name}": float(self.cost(model, "deterministic")) * self.scale,
                f"dense_{self.name}": float(self.cost(model, "full")) * self.scale,
            }

    def config_dict(self) -> dict[str, Any]:
        return {"metric": self.name}
