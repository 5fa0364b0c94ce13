"""Hard concrete gates (Louizos, Welling & Kingma, 2018) over structures of a transformer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

# CoFi's soft deterministic value of a kept gate, sigmoid(SOFT_VALUE_SCALE * log_alpha / temperature).
SOFT_VALUE_SCALE = 0.8

SublayerKind = Literal["attention", "ffn"]
GateLevel = Literal["unit", "sublayer", "hidden"]
SUBLAYER_KINDS: tuple[SublayerKind, ...] = ("attention", "ffn")


@dataclass(frozen=True)
class GateKind:
    """One kind of gate of a patched model (an attribute of :class:`hf_l0.gates.patch.L0Gates`) and what it covers.

    ``level`` fixes its shape and meaning: ``"unit"`` gates are [layers, units] of one ``sublayer`` kind (heads or KV
    groups, FFN neurons), ``"sublayer"`` gates are [layers], one per whole sublayer, ``"hidden"`` gates are
    [hidden_size], shared by the residual stream. ``switch`` is the :class:`hf_l0.L0Config` flag that turns the gate
    on and ``keep_per_row`` the config field of its uniform target, if it has one.
    """

    name: str
    switch: str
    level: GateLevel
    sublayer: SublayerKind | None = None
    keep_per_row: str | None = None
    binary: bool = False  # survivors take the value 1 (see HardConcreteGate)


# The one table of gate kinds: patching, sizes, pruning, the controller and the trainer read it. A new structure type
# is one entry here plus the hook that applies it (hf_l0.gates.patch). The order is the order gates are created in
# (their random init and the checkpoint's key order).
GATE_KINDS: tuple[GateKind, ...] = (
    GateKind("heads", "heads", "unit", "attention", keep_per_row="target_heads"),
    GateKind("ffn", "ffn", "unit", "ffn", keep_per_row="target_intermediate_size"),
    GateKind("attention_layers", "layers", "sublayer", "attention"),
    GateKind("ffn_layers", "layers", "sublayer", "ffn"),
    GateKind("hidden", "hidden", "hidden", keep_per_row="target_hidden_size", binary=True),
)
GATE_KIND = {kind.name: kind for kind in GATE_KINDS}
HIDDEN_GATE = next(kind.name for kind in GATE_KINDS if kind.level == "hidden")


def sublayer_gate_names(sublayer: SublayerKind) -> tuple[str, str]:
    """The names of the unit gate and of the whole-sublayer gate of a sublayer kind (``"attention"`` or ``"ffn"``)."""
    unit = next(k.name for k in GATE_KINDS if k.level == "unit" and k.sublayer == sublayer)
    whole = next(k.name for k in GATE_KINDS if k.level == "sublayer" and k.sublayer == sublayer)
    return unit, whole


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a possibly sharded one: FSDP2 keeps parameters as sharded DTensors between steps
    (gathering is a collective: every rank calls it at the same point)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


@torch.no_grad()
def block_keep_mask(rows: torch.Tensor, k: int, multiple: int) -> torch.Tensor:
    """The entries of ``rows`` [rows, width] that survive when each row keeps 0, ``multiple``, 2 ``multiple``, ... or
    all of its entries, about ``k`` in total (see :class:`HardConcreteGate`): blocks of ``multiple`` consecutive
    entries of each row's ranking, taken in the order of their mean (ties: the earlier block, then the earlier row)
    while that brings the total closer to ``k``."""
    num_rows, width = rows.shape
    ranked, order = rows.double().sort(dim=-1, descending=True, stable=True)
    block_of_rank = torch.arange(width, device=rows.device) // multiple
    num_blocks = (width + multiple - 1) // multiple
    sizes = torch.full((num_blocks,), multiple, dtype=torch.float64, device=rows.device)
    sizes[-1] = width - (num_blocks - 1) * multiple
    scores = ranked.new_zeros(num_rows, num_blocks).index_add_(1, block_of_rank, ranked) / sizes
    # Non-increasing along a row in exact arithmetic (float32 entries sum exactly in float64); the running minimum
    # keeps it so under any rounding too: a short last block's mean must never come out above the block before it.
    scores = scores.cummin(dim=-1).values
    # Blocks flattened block-major, so a stable sort breaks ties by block index, then by row.
    taken_order = scores.t().reshape(-1).argsort(descending=True, stable=True)
    block_sizes = sizes.repeat_interleave(num_rows)[taken_order]
    totals = torch.cat([block_sizes.new_zeros(1), block_sizes.cumsum(0)])
    distance = (totals - k).abs()
    num_taken = int((distance == distance.min()).nonzero().max())  # totals rise: on a tie, the larger count
    taken = torch.zeros(num_blocks * num_rows, dtype=torch.bool, device=rows.device)
    taken[taken_order[:num_taken]] = True
    kept_ranks = taken.reshape(num_blocks, num_rows).t()[:, block_of_rank]
    return torch.zeros_like(kept_ranks).scatter_(-1, order, kept_ranks)


class HardConcreteGate(nn.Module):
    """A tensor of hard concrete gates, one entry per structure (head, neuron, hidden dimension, sublayer).

    Training mode draws a reparameterized sample
    ``z = clamp(sigmoid((log u - log(1 - u) + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1)``.

    Eval mode is deterministic (the rule that :func:`hf_l0.prune_model` applies):

    * the number of surviving entries is the expected L0 norm, ``k = round(sum P(z != 0))``, taken over the whole
      gate tensor (CoFi), or exactly ``keep_per_row`` entries in every row when that is set (Sheared-LLaMA's
      target architectures);
    * the ``k`` entries with the largest ``log_alpha`` survive with the paper's deterministic value
      ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``, raised to CoFi's soft value
      ``sigmoid(0.8 * log_alpha / beta)`` where the paper's value is lower (it reaches 0 at ``log_alpha = -2.4``,
      the soft value never does); all others are 0. So the deterministic count is the rounded expected L0 norm, which
      the sparsity controller can track. A surviving entry whose value underflows to 0 is pruned as well.
      Survivors take the value 1 instead with ``binary=True`` (hidden dimensions, whose scale cannot be folded into
      tied embeddings) and with ``keep_per_row`` (a uniform target must keep exactly its count).
    * ``unit_multiple`` m > 1 (from ``L0Config.width_multiple``) keeps every row's count in 0, m, 2m, ... or the full
      width: each row is ranked by ``log_alpha`` and cut into blocks of m (the last one shorter when m does not divide
      the width), blocks are taken in the order of their mean ``log_alpha`` (non-increasing along a row, so a row
      keeps a prefix of its ranking) until the total is closest to ``k`` (within m / 2; on a tie, the larger), and
      survivors never underflow to 0 (so their count stays a multiple).
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        *,
        droprate_init: float = 0.01,
        temperature: float = 2.0 / 3.0,
        limit_left: float = -0.1,
        limit_right: float = 1.1,
        eps: float = 1e-6,
        binary: bool = False,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        if not 0.0 < droprate_init < 1.0:
            raise ValueError(f"droprate_init must lie in (0, 1), got {droprate_init}.")
        if not (limit_left < 0.0 and limit_right > 1.0):
            raise ValueError(f"need limit_left < 0 < 1 < limit_right, got ({limit_left}, {limit_right}).")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.temperature = temperature
        self.initial_temperature = temperature  # what an annealing schedule starts from (LagrangianController)
        self.limit_left = limit_left
        self.limit_right = limit_right
        self.eps = eps
        self.binary = binary
        self.keep_per_row: int | None = None
        self.unit_multiple: int = 1  # kept entries per row come in blocks of this many (see the class docstring)
        # log_alpha such that P(z != 0) starts at 1 - droprate_init (CoFi's "near all open" start).
        mean = (
            math.log(1.0 - droprate_init) - math.log(droprate_init) + temperature * math.log(-limit_left / limit_right)
        )
        self.log_alpha = nn.Parameter(torch.empty(shape).normal_(mean, init_std))

    def extra_repr(self) -> str:
        multiple = f", unit_multiple={self.unit_multiple}" if self.unit_multiple > 1 else ""
        return (
            f"shape={tuple(self.log_alpha.shape)}, temperature={self.temperature:.4g}, binary={self.binary}{multiple}"
        )

    def prob_nonzero(self, log_alpha: torch.Tensor | None = None) -> torch.Tensor:
        """P(z != 0) per entry: the differentiable expected L0 norm contribution (of every entry: a sharded
        ``log_alpha`` is gathered, see :meth:`whole_log_alpha`)."""
        log_alpha = self.whole_log_alpha() if log_alpha is None else log_alpha
        return torch.sigmoid(log_alpha - self.temperature * math.log(-self.limit_left / self.limit_right))

    def whole_log_alpha(self) -> torch.Tensor:
        """``log_alpha`` with every entry: the deterministic rule ranks all entries of a gate (see whole_tensor)."""
        return whole_tensor(self.log_alpha)

    def expected_l0(self) -> torch.Tensor:
        """Expected number of non-zero entries, differentiable in ``log_alpha``."""
        return self.prob_nonzero().sum()

    def sample(self) -> torch.Tensor:
        u = torch.empty_like(self.log_alpha).uniform_(self.eps, 1.0 - self.eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.temperature)
        return (s * (self.limit_right - self.limit_left) + self.limit_left).clamp(0.0, 1.0)

    @torch.no_grad()
    def keep_mask(self) -> torch.Tensor:
        """Boolean mask of the entries that survive under the deterministic rule (before the value test)."""
        log_alpha = self.whole_log_alpha().detach()
        if self.keep_per_row is not None:
            rows = log_alpha.reshape(-1, log_alpha.shape[-1])
            k = min(self.keep_per_row, rows.shape[-1])
            mask = torch.zeros_like(rows, dtype=torch.bool)
            if k > 0:
                mask.scatter_(-1, rows.topk(k, dim=-1).indices, True)
            return mask.reshape(log_alpha.shape)
        flat = log_alpha.flatten()
        k = int(torch.round(self.prob_nonzero(log_alpha).sum()).item())
        if self.unit_multiple > 1:
            return block_keep_mask(log_alpha.reshape(-1, log_alpha.shape[-1]), k, self.unit_multiple).reshape(
                log_alpha.shape
            )
        mask = torch.zeros_like(flat, dtype=torch.bool)
        if k > 0:
            mask[flat.topk(k).indices] = True
        return mask.reshape(log_alpha.shape)

    def deterministic(self) -> torch.Tensor:
        """The eval-mode gate values (see the class docstring); no gradient."""
        with torch.no_grad():
            keep = self.keep_mask()
            if self.binary or self.keep_per_row is not None:
                return keep.to(self.log_alpha.dtype)
            log_alpha = self.whole_log_alpha()
            value = torch.sigmoid(log_alpha) * (self.limit_right - self.limit_left) + self.limit_left
            # A kept entry never falls to 0: below the paper's value it takes CoFi's soft value, which is positive.
            # Otherwise gates crowding at the paper's zero crossing (log_alpha = -2.4, P(z != 0) = 0.31) would all be
            # pruned at once beyond the count, and the deterministic sparsity would jump away from the expected one.
            soft = torch.sigmoid(log_alpha * (SOFT_VALUE_SCALE / self.temperature))
            value = torch.maximum(value.clamp(0.0, 1.0), soft)
            if self.unit_multiple > 1:  # an underflowing survivor would be pruned and break the multiple
                value = value.clamp(min=torch.finfo(value.dtype).tiny)
            return value * keep

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()
