"""`L0Config`: which structures of a model get hard concrete gates, and how."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .hard_concrete import GATE_KINDS

STRUCTURES = ("heads", "ffn", "hidden", "layers")
CONFIG_NAME = "l0_config.json"


@dataclass
class L0Config:
    """Configuration of structured L0 pruning, in the spirit of peft's ``LoraConfig``."""

    heads: bool = field(
        default=True,
        metadata={
            "help": "Gate attention heads. On GQA models one gate covers a whole KV group (one KV head and "
            "its query heads), so a closed gate removes K, V and the queries together."
        },
    )
    ffn: bool = field(default=True, metadata={"help": "Gate intermediate (FFN) neurons."})
    hidden: bool = field(
        default=False,
        metadata={"help": "Gate hidden dimensions of the residual stream, shared by all layers (CoFi)."},
    )
    layers: bool = field(
        default=False,
        metadata={
            "help": "Gate whole sublayers: one gate per attention block and one per FFN block (CoFi). Off by "
            "default: a sublayer already goes when all its heads or neurons close, and a whole-sublayer gate moves "
            "the size in steps of a sublayer, which costs accuracy on short budgets."
        },
    )
    droprate_init: float = field(
        default=0.01, metadata={"help": "Initial probability that a gate is zero; small means 'start all open'."}
    )
    temperature: float = field(default=2.0 / 3.0, metadata={"help": "Hard concrete temperature beta."})
    limit_left: float = field(default=-0.1, metadata={"help": "Stretch interval left end gamma (< 0)."})
    limit_right: float = field(default=1.1, metadata={"help": "Stretch interval right end zeta (> 1)."})
    target_heads: int | None = field(
        default=None,
        metadata={"help": "Uniform target: keep exactly this many heads (KV groups on GQA models) in every layer."},
    )
    target_intermediate_size: int | None = field(
        default=None, metadata={"help": "Uniform target: keep exactly this many FFN neurons in every layer."}
    )
    target_hidden_size: int | None = field(
        default=None, metadata={"help": "Uniform target: keep exactly this many hidden dimensions."}
    )
    width_multiple: int = field(
        default=1,
        metadata={
            "help": "Keep every surviving width a multiple of this many dimensions (or the full width): FFN neurons "
            "and hidden dimensions per layer, and attention widths (heads x head_dim; on GQA models the K/V "
            "columns of the kept KV groups), so the compact model needs no padding: 32 for llama.cpp's "
            "quantization blocks, 8 or 64 for GPU kernels. Uniform targets must then be multiples too."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def structures(self) -> tuple[str, ...]:
        return tuple(name for name in STRUCTURES if getattr(self, name))

    def validate(self) -> None:
        if not self.structures:
            raise ValueError(f"L0Config gates nothing: set at least one of {', '.join(STRUCTURES)} to True.")
        if not 0.0 < self.droprate_init < 1.0:
            raise ValueError(f"droprate_init={self.droprate_init} must lie strictly between 0 and 1.")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be positive (the paper uses 2/3).")
        if not (self.limit_left < 0.0 and self.limit_right > 1.0):
            raise ValueError(
                f"hard concrete stretch ({self.limit_left}, {self.limit_right}) must satisfy limit_left < 0 and "
                "limit_right > 1 (the paper uses -0.1 and 1.1)."
            )
        if isinstance(self.width_multiple, bool) or not isinstance(self.width_multiple, int) or self.width_multiple < 1:
            raise ValueError(
                f"width_multiple={self.width_multiple!r} must be a positive integer (1: any width; e.g. 32 for "
                "llama.cpp's quantization blocks)."
            )
        for kind in GATE_KINDS:
            if kind.keep_per_row is None:
                continue
            name, gated_by = kind.keep_per_row, kind.switch
            value = getattr(self, name)
            if value is None:
                continue
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0.")
            if not getattr(self, gated_by):
                raise ValueError(f"{name} is set but {gated_by}=False: a uniform target needs its gates.")
            if self.layers:
                raise ValueError(
                    f"{name} asks for a uniform target architecture, which keeps every sublayer: "
                    "set layers=False (no whole-sublayer gates)."
                )
            if kind.sublayer != "attention":  # one dimension per unit (heads depend on head_dim: see patch_model)
                check_uniform_target_multiple(name, value, unit_multiple(self.width_multiple, 1), self.width_multiple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> L0Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if "target_sparsity" in unknown:
            raise ValueError(
                "target_sparsity is not an L0Config field: the target is a training setting; set it on "
                "L0TrainingArguments (--target_sparsity) or LagrangianController."
            )
        if unknown:
            raise ValueError(f"unknown L0Config fields {unknown}; known fields are {sorted(known)}.")
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # never a half-written file, whenever the process dies
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> L0Config:
        with open(os.path.join(directory, CONFIG_NAME)) as f:
            return cls.from_dict(json.load(f))


def unit_multiple(width_multiple: int, unit_width: int) -> int:
    """The fewest units (gate entries) whose width is a multiple of ``width_multiple`` dimensions, for units of
    ``unit_width`` dimensions each (1 for FFN neurons and hidden dimensions, head_dim for heads and KV groups)."""
    return width_multiple // math.gcd(width_multiple, unit_width)


def check_uniform_target_multiple(
    name: str, value: int, step: int, width_multiple: int, unit_width: int = 1, limit: int | None = None
) -> None:
    """Refuse a uniform target that ``width_multiple`` cannot keep: not a multiple of ``step`` units (nor the full
    width ``limit``, when known). The message names the nearest counts that are."""
    if value % step == 0 or value == limit:
        return
    below, above = value // step * step, -(-value // step) * step
    nearest = [below, above if limit is None or above <= limit else limit]
    per_unit = f" (units of {unit_width} dimensions)" if unit_width > 1 else ""
    raise ValueError(
        f"{name}={value} is not a multiple of {step}: width_multiple={width_multiple} keeps widths in steps of "
        f"{step} units{per_unit}. Use {nearest[0]} or {nearest[1]}, or lower width_multiple."
    )
