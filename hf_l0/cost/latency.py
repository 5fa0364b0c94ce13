"""Latency tables (ZipLM, Kurtic et al., 2023): the model's speed on *this* machine, measured, as a pruning target.

A table holds, for one dense model shape, batch size, sequence length, torch thread count and dtype:

* the time of an attention sublayer with ``k`` heads (KV groups on GQA models) and of an FFN sublayer with ``n``
  neurons, over a grid of widths, with 0 for a sublayer that pruning removes;
* the fixed time: embeddings, norms, head and the per-layer dispatch that stays when both sublayers of a layer are
  removed (:func:`hf_l0.prune_model` keeps the layer, with stand-ins that return the output bias). On pre-norm
  decoders such a layer is the identity when neither stand-in returns a bias, and pruning drops it: its share of the
  fixed time (``layer_s``, the layer with neither sublayer) goes with it.

A sublayer's time is measured inside the whole model, built by the stock class from the model's own config (with the
model's weights: speed depends on the values) and cut by :func:`hf_l0.pruning.structure.apply_structure`: the model
whose every layer keeps ``k`` heads and no FFN, minus the model with every sublayer removed (the fixed time, measured
directly), divided by the number of layers. (A layer timed alone, replaying its inputs with its weights hot in cache,
ran ~0.4 ms faster per sublayer than inside MiniLM at batch 1, so narrow compact models looked up to 8% faster than
they were.) The grid's models share everything outside the layers; their layers take about half the memory of
``len(grid)`` dense models' layers: pass a coarser grid for a large model. Widths between grid points are
interpolated linearly, and each column is made non-decreasing by a least-squares fit (a wider sublayer never counts
as faster), so the predicted latency of the compact model is::

    fixed + sum over layers of attention(k_i) + ffn(n_i)

and the expected latency of a gated model replaces ``k_i`` by the expected units and multiplies by the layer gate's
``P(z != 0)``, less ``layer_s`` times the probability that a droppable layer loses both sublayers: differentiable in
every ``log_alpha``. Tables are built once and cached on disk (``$HF_L0_CACHE``,
default ``~/.cache/hf_l0``, under ``latency/``), keyed by all of the above plus the torch version, the grid, every
config field that changes the computation (:func:`config_digest`) and the machine (:func:`machine_identity`): a
different batch size, thread count, activation or processor is measured anew, and a table given explicitly that
was measured for another configuration is refused (on another machine: a warning).
``python -m hf_l0 latency-table --model PATH`` shows one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..arch import get_adapter
from ..gates.patch import get_gates, transformers_model
from ..pruning.structure import apply_structure
from ..pruning.structure_format import STRUCTURE_FORMAT, STRUCTURE_KEY
from .base import SUBLAYER_GATES, CostTarget
from .size import dropped_layers, size_layout, unit_probabilities

TABLE_FORMAT = 2  # 2: widths timed inside the whole model (1 timed one layer alone)


def default_cache_dir() -> Path:
    """``$HF_L0_CACHE/latency`` (default ``~/.cache/hf_l0/latency``)."""
    return Path(os.environ.get("HF_L0_CACHE", Path.home() / ".cache" / "hf_l0")) / "latency"


@dataclass
class LatencyTable:
    """Measured seconds per forward pass of the sublayers of one model shape at one batch shape (see module doc)."""

    key: dict[str, Any]  # what the times depend on: model shape, batch size, sequence length, threads, dtype, torch
    attention_units: list[int]
    attention_s: list[float]  # non-decreasing, 0 at 0 units
    ffn_units: list[int]
    ffn_s: list[float]
    fixed_s: float  # everything that no gate removes
    dense_s: float  # the dense model measured whole (a check of the table: compare with predict_dense())
    layer_s: float  # a layer with both sublayers removed, timed alone (its share of the fixed time)
    raw: dict[str, Any] = field(default_factory=dict)  # medians before the subtraction, for inspection
    path: str | None = field(default=None, compare=False)
    loaded: bool = field(default=False, compare=False)  # read from the cache rather than measured now

    @property
    def num_layers(self) -> int:
        return int(self.key["shape"]["num_layers"])

    def attention_time(self, units: torch.Tensor | float) -> torch.Tensor:
        return _interpolate(units, self.attention_units, self.attention_s)

    def ffn_time(self, units: torch.Tensor | float) -> torch.Tensor:
        return _interpolate(units, self.ffn_units, self.ffn_s)

    def predict(self, layers: Iterable[tuple[int, int]]) -> float:
        """Predicted seconds of a model whose layers keep ``(attention units, FFN neurons)`` each."""
        total = self.fixed_s
        for units, neurons in layers:
            total += float(self.attention_time(float(units))) + float(self.ffn_time(float(neurons)))
        return total

    def predict_dense(self) -> float:
        shape = self.key["shape"]
        return self.predict([(shape["attention_units"], shape["intermediate_size"])] * self.num_layers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data.pop("loaded")
        return {"format": TABLE_FORMAT, **data}

    def save(self, path: str | os.PathLike) -> str:
        """Write the table as JSON, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        self.path = str(path)
        return str(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        data = json.loads(Path(path).read_text())
        if data.pop("format", None) != TABLE_FORMAT:
            raise ValueError(f"{path} is not a latency table of format {TABLE_FORMAT}; delete it to measure anew.")
        return cls(**data, path=str(path), loaded=True)

    def summary(self) -> str:
        """The table as text: sublayer times by width, fixed time, predicted vs measured dense time."""
        key = self.key
        attention = ", ".join(f"{u}: {s * 1e3:.3f}" for u, s in zip(self.attention_units, self.attention_s))
        ffn = ", ".join(f"{u}: {s * 1e3:.3f}" for u, s in zip(self.ffn_units, self.ffn_s))
        lines = [
            (
                f"latency table: {key['shape']['class']} ({key['shape']['num_layers']} layers), batch "
                f"{key['batch_size']} x {key['seq_len']} tokens, {key['threads']} thread(s), {key['dtype']}, "
                f"torch {key['torch']}"
            ),
            f"  fixed (embeddings, norms, head, layer dispatch): {self.fixed_s * 1e3:.3f} ms",
            f"  attention units -> ms per layer: {attention}",
            f"  FFN neurons -> ms per layer: {ffn}",
            f"  dense model: predicted {self.predict_dense() * 1e3:.3f} ms, measured {self.dense_s * 1e3:.3f} ms",
        ]
        if self.path:
            lines.append(f"  {'loaded from' if self.loaded else 'saved to'} {self.path}")
        return "\n".join(lines)


def _interpolate(x: torch.Tensor | float, xs: Sequence[int], ys: Sequence[float]) -> torch.Tensor:
    """Piecewise-linear ``y(x)`` through the grid, differentiable in ``x`` (clamped to the grid's range)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    grid = torch.tensor(xs, dtype=torch.float64, device=x.device)
    values = torch.tensor(ys, dtype=torch.float64, device=x.device)
    x = x.clamp(float(grid[0]), float(grid[-1]))
    index = (torch.searchsorted(grid, x.detach().contiguous(), right=True) - 1).clamp(0, len(xs) - 2)
    x0, x1, y0, y1 = grid[index], grid[index + 1], values[index], values[index + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


# -- measuring -----------------------------------------------------------------------------------------------------
def _model_shape(model: nn.Module) -> dict[str, Any]:
    target = transformers_model(model)
    if getattr(target.config, STRUCTURE_KEY, None):
        raise ValueError(
            "this model is already pruned: a latency table is measured for the dense model it came "
            "from (its shapes are the grid's upper ends). Pass the dense model."
        )
    adapter = get_adapter(target)
    attention, ffn = adapter.attention(0), adapter.ffn(0)
    config = target.config
    return {
        "class": type(target).__name__,
        "model_type": config.model_type,
        "hidden_size": adapter.hidden_size,
        "num_layers": adapter.num_layers,
        "attention_units": attention.num_units,
        "heads_per_unit": adapter.query_heads_per_unit(),
        "head_dim": adapter.head_dim(),
        "intermediate_size": ffn.num_units,
        "vocab_size": getattr(config, "vocab_size", None),
        "num_labels": getattr(config, "num_labels", None),
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }


def default_grid(units: int, points: int = 12) -> list[int]:
    """Every width up to 16 units; else 0, 1 (the dispatch cost of a one-unit sublayer) and ``points`` even steps."""
    if units <= 16:
        return list(range(units + 1))
    return sorted({0, 1, *(round(units * j / points) for j in range(1, points + 1))})


def _check_grid(grid: Sequence[int], units: int, what: str) -> list[int]:
    grid = sorted({int(g) for g in grid} | {0, units})
    if grid[0] < 0 or grid[-1] > units:
        raise ValueError(f"{what} grid {grid} must lie within [0, {units}] (the dense model's width).")
    return grid


def _structure(shape: dict[str, Any], num_layers: int, attention_units: int, neurons: int) -> dict[str, Any]:
    layer = {
        "attention_heads": attention_units * shape["heads_per_unit"],
        "key_value_heads": attention_units,
        "attention_output_bias": attention_units > 0,
        "intermediate_size": neurons,
        "ffn_output_bias": neurons > 0,
    }
    return {
        "format": STRUCTURE_FORMAT,
        "hidden_size": shape["hidden_size"],
        "head_dim": shape["head_dim"],
        "layers": [dict(layer) for _ in range(num_layers)],
    }


def _fresh(model: nn.Module, dtype: torch.dtype, num_layers: int | None = None) -> nn.Module:
    """A stock, ungated model of the same class with the model's config (optionally fewer layers) and its weights.

    The weights matter: the time of a forward pass depends on the values (activations of a randomly initialized
    model run ~20% faster through MiniLM's layers than those of the trained one).
    """
    config = copy.deepcopy(model.config)
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    with torch.device("cpu"):
        fresh = type(model)(config)
    own = fresh.state_dict()
    weights = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
    fresh.load_state_dict(weights, strict=False)  # the first layers' (and everything outside the layers) weights
    return fresh.to(dtype).eval()


def _layer_call(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
    """The positional and keyword arguments the model's first layer receives in a forward pass on ``inputs``."""
    captured: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["call"] = (args, kwargs)

    layer = get_adapter(model).layers()[0]
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        handle.remove()
    return captured["call"]


def latency_inputs(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Token ids (fixed seed) and a full attention mask: what a latency table and its checks time."""
    vocab = int(getattr(transformers_model(model).config, "vocab_size", 100))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq_len), generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if getattr(transformers_model(model).config, "use_cache", False):
        inputs["use_cache"] = False
    return inputs


@torch.inference_mode()
def _time_rounds(calls: dict[str, Any], repeats: int, rounds: int, warmup: int, progress: Any) -> dict[str, float]:
    """Median seconds of each call; the calls take turns round by round, so a slow spell hits them alike, and every
    other round runs them in reverse order, so a machine that slows down or speeds up over a round favours none."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    for round_index in range(rounds):
        order = list(calls.items())
        for name, call in order if round_index % 2 == 0 else reversed(order):
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
            if progress is not None:
                progress.update(1)
    return {name: statistics.median(values) for name, values in times.items()}


def _non_decreasing(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): one slow spell at one width
    is averaged with its neighbours instead of raising every wider width, as a running maximum would."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (mean_a, n_a), (mean_b, n_b) = blocks[-2], blocks.pop()
            blocks[-1] = [(mean_a * n_a + mean_b * n_b) / (n_a + n_b), n_a + n_b]
    return [mean for mean, count in blocks for _ in range(int(count))]


def measure_latency_table(
    model: nn.Module,
    batch_size: int = 1,
    seq_len: int = 128,
    threads: int = 1,
    dtype: torch.dtype | None = None,
    attention_grid: Sequence[int] | None = None,
    ffn_grid: Sequence[int] | None = None,
    repeats: int = 3,
    rounds: int = 8,
    warmup: int = 2,
    progress: bool = True,
) -> LatencyTable:
    """Measure a latency table now (no cache); see :func:`latency_table`."""
    target = transformers_model(model)
    shape = _model_shape(target)
    dtype = dtype or next(target.parameters()).dtype
    attention_grid = _check_grid(
        attention_grid or default_grid(shape["attention_units"]), shape["attention_units"], "attention"
    )
    ffn_grid = _check_grid(ffn_grid or default_grid(shape["intermediate_size"]), shape["intermediate_size"], "FFN")
    num_layers = shape["num_layers"]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dense = _fresh(target, dtype)
        inputs = latency_inputs(dense, batch_size, seq_len)
        # the copies share everything outside the layers (a 50k-token embedding copied 30 times would take GBs)
        layer_params = {id(p) for layer in get_adapter(dense).layers() for p in layer.parameters()}
        shared = {id(p): p for p in dense.parameters() if id(p) not in layer_params}
        calls: dict[str, Any] = {}
        for kind, grid in (("attention", attention_grid), ("ffn", ffn_grid)):
            for units in grid:
                if units == 0 and kind == "ffn":
                    continue  # the same model as attention 0: no sublayer at all, the fixed time
                whole = apply_structure(
                    copy.deepcopy(dense, dict(shared)),
                    _structure(shape, num_layers, units if kind == "attention" else 0, units if kind == "ffn" else 0),
                )
                calls[f"{kind}:{units}"] = lambda whole=whole: whole(**inputs)
        # a layer with neither sublayer, replaying the inputs it receives: the dispatch time a dropped layer saves
        one_layer = _fresh(target, dtype, num_layers=1)
        args, kwargs = _layer_call(one_layer, latency_inputs(one_layer, batch_size, seq_len))
        empty = get_adapter(apply_structure(one_layer, _structure(shape, 1, 0, 0))).layers()[0]
        calls["empty_layer"] = lambda: empty(*args, **kwargs)
        calls["dense"] = lambda: dense(**inputs)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=rounds * len(calls), desc="latency table", unit="config")
        try:
            medians = _time_rounds(calls, repeats, rounds, warmup, bar)
        finally:
            if bar is not None:
                bar.close()
    finally:
        torch.set_num_threads(previous)
    fixed = medians["attention:0"]

    def per_layer(kind: str, grid: list[int]) -> list[float]:
        # 0 for a removed sublayer stays exact: the fit runs over the measured widths only
        return [0.0, *_non_decreasing([max(medians[f"{kind}:{u}"] - fixed, 0.0) / num_layers for u in grid[1:]])]

    key = _table_key(
        shape, batch_size, seq_len, threads, dtype, attention_grid, ffn_grid, repeats, rounds, config_digest(model)
    )
    return LatencyTable(
        key=key,
        attention_units=attention_grid,
        attention_s=per_layer("attention", attention_grid),
        ffn_units=ffn_grid,
        ffn_s=per_layer("ffn", ffn_grid),
        fixed_s=fixed,
        dense_s=medians["dense"],
        # at most the fixed time's share per layer, so what stays when all but one layer drop is never negative
        layer_s=min(medians["empty_layer"], fixed / num_layers),
        raw=medians,
    )


# Config fields that name, label or document a model without changing its forward computation, and those training
# toggles (a dense fine-tuning stage sets problem_type, and the Trainer turns use_cache off): left out of the key.
_NOT_TIMED = {
    "_name_or_path",
    "name_or_path",
    "architectures",
    "auto_map",
    "id2label",
    "label2id",
    "finetuning_task",
    "problem_type",
    "task_specific_params",
    "tokenizer_class",
    "transformers_version",
    "use_cache",
    "dtype",
    "torch_dtype",
    STRUCTURE_KEY,
    "l0_export",
}


def config_digest(model: nn.Module) -> str:
    """A hash of every config field that can change the forward computation (activation, position embeddings,
    norms, attention implementation, ...): two models that differ in one of them never share a table."""
    config = transformers_model(model).config
    data = {key: value for key, value in config.to_dict().items() if key not in _NOT_TIMED}
    data["_attn_implementation"] = getattr(config, "_attn_implementation", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def machine_identity() -> dict[str, Any]:
    """What a table's times depend on outside the model: the processor, the CPUs this process may use, the
    platform and the torch build. A table measured elsewhere is measured anew rather than reused."""
    processor = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            processor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), processor)
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "processor": processor,
        "cpus": cpus,
        "machine": platform.machine(),
        "system": platform.system(),
    }


def _table_key(
    shape: dict[str, Any],
    batch_size: int,
    seq_len: int,
    threads: int,
    dtype: torch.dtype,
    attention_grid: Sequence[int] | None,
    ffn_grid: Sequence[int] | None,
    repeats: int,
    rounds: int,
    config: str | None = None,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    attention_grid = _check_grid(
        attention_grid or default_grid(shape["attention_units"]), shape["attention_units"], "attention"
    )
    ffn_grid = _check_grid(ffn_grid or default_grid(shape["intermediate_size"]), shape["intermediate_size"], "FFN")
    return {
        "format": TABLE_FORMAT,  # how the table is measured: a table of another format is measured anew
        "shape": shape,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "threads": threads,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "attention_grid": attention_grid,
        "ffn_grid": ffn_grid,
        "repeats": repeats,
        "rounds": rounds,
        "config": config,  # config_digest: the fields that change the computation beyond the shape
        "machine": machine if machine is not None else machine_identity(),
    }


def table_path(key: dict[str, Any], cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the table of ``key`` is cached: a file named by the model class and a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{key['shape']['class']}-b{key['batch_size']}-s{key['seq_len']}-t{key['threads']}-{digest}.json"


def latency_table(
    model: nn.Module,
    batch_size: int = 1,
    seq_len: int = 128,
    threads: int = 1,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    attention_grid: Sequence[int] | None = None,
    ffn_grid: Sequence[int] | None = None,
    repeats: int = 3,
    rounds: int = 8,
    rebuild: bool = False,
    progress: bool = True,
) -> LatencyTable:
    """The latency table of ``model`` (dense, gated or not) at ``batch_size`` x ``seq_len`` tokens with ``threads``
    torch threads and ``dtype`` (default: the model's), loaded from the cache or measured and cached.

    ``attention_grid`` / ``ffn_grid`` are the widths measured (default :func:`default_grid`); each sublayer width is
    timed ``repeats`` times per round over ``rounds`` interleaved rounds (median). ``rebuild`` measures anew.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("seq_len", seq_len),
        ("threads", threads),
        ("repeats", repeats),
        ("rounds", rounds),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int.")
    target = transformers_model(model)
    shape = _model_shape(target)
    dtype = dtype or next(target.parameters()).dtype
    key = _table_key(
        shape, batch_size, seq_len, threads, dtype, attention_grid, ffn_grid, repeats, rounds, config_digest(target)
    )
    path = table_path(key, cache_dir)
    if path.is_file() and not rebuild:
        table = LatencyTable.load(path)
        if table.key == key:
            return table
    table = measure_latency_table(
        target,
        batch_size,
        seq_len,
        threads,
        dtype,
        key["attention_grid"],
        key["ffn_grid"],
        repeats,
        rounds,
        progress=progress,
    )
    table.save(path)
    return table


# -- predicting ------------------------------------------------------------------------------------------------------
def compact_layers(model: nn.Module) -> list[tuple[int, int]]:
    """``(attention units, FFN neurons)`` of every layer of an ungated (dense or pruned) model."""
    adapter = get_adapter(transformers_model(model))
    layers = []
    for i in range(adapter.num_layers):
        attention, ffn = adapter.attention(i), adapter.ffn(i)
        layers.append((attention.num_units if attention is not None else 0, ffn.num_units if ffn is not None else 0))
    return layers


def predict_latency(table: LatencyTable, model: nn.Module) -> float:
    """Predicted seconds per forward pass of an ungated (dense or pruned) model, from its shapes and the table."""
    layers = compact_layers(model)
    structure = getattr(transformers_model(model).config, STRUCTURE_KEY, None) or {}
    dropped = len(structure.get("dropped_layers", []))
    if len(layers) + dropped != table.num_layers:
        raise ValueError(
            f"the model has {len(layers)} layers (and {dropped} dropped) but the latency table was measured for "
            f"{table.num_layers}."
        )
    return table.predict(layers) - dropped * table.layer_s


def _check_table(model: nn.Module, table: LatencyTable) -> None:
    gates = get_gates(model)
    if hasattr(gates, "hidden"):
        raise ValueError(
            "a latency target does not support hidden-dimension gates: the latency table is measured "
            "at the dense hidden size. Set hidden=False (l0_structures without 'hidden') or use "
            "target_metric='flops'."
        )
    if gates.__dict__.get("_latency_table_checked") is table:
        return  # checked once per model and table: the trainer asks at every step
    shape = _model_shape(transformers_model(model))
    if shape != table.key["shape"]:
        raise ValueError(
            f"the latency table was measured for another model shape ({table.key['shape']}), not this "
            f"one ({shape}). Build the table for this model."
        )
    config = table.key.get("config")
    if config is not None and config != config_digest(model):
        raise ValueError(
            "the latency table was measured for a model of this shape with another configuration (activation, "
            "position embeddings, attention implementation, ...): its times do not hold for this one. Build the "
            "table for this model."
        )
    machine = machine_identity()
    if table.key.get("machine") != machine:
        warnings.warn(
            f"the latency table{f' {table.path}' if table.path else ''} was measured on "
            f"{table.key.get('machine') or 'an unrecorded machine'}, this is {machine}: its times may not hold "
            "here. Measure a table on this machine (python -m hf_l0 latency-table ...).",
            stacklevel=4,
        )
    gates.__dict__["_latency_table_checked"] = table


def _latency(model: nn.Module, table: LatencyTable, mode: str) -> torch.Tensor:
    _check_table(model, table)
    probs = unit_probabilities(model, mode)
    device = next(iter(get_gates(model).gates.values())).log_alpha.device
    shape = table.key["shape"]
    total = torch.tensor(table.fixed_s, dtype=torch.float64, device=device)
    for (_kind, unit_gate, layer_gate), time_of, width in (
        (SUBLAYER_GATES[0], table.attention_time, shape["attention_units"]),
        (SUBLAYER_GATES[1], table.ffn_time, shape["intermediate_size"]),
    ):
        units = (
            probs[unit_gate].sum(-1)
            if unit_gate in probs
            else torch.full((table.num_layers,), float(width), dtype=torch.float64, device=device)
        )
        seconds = time_of(units)
        if layer_gate in probs:
            seconds = seconds * probs[layer_gate]
        total = total + seconds.sum()
    # prune_model drops a decoder layer whose sublayers both output zero, and its dispatch time with it
    return total - table.layer_s * dropped_layers(probs, size_layout(model), mode)


def expected_latency(model: nn.Module, table: LatencyTable, deterministic: bool = False) -> torch.Tensor:
    """Seconds per forward pass of the gated model predicted by ``table``: expected under the hard concrete
    distributions (differentiable in every ``log_alpha``) or, with ``deterministic``, of the model
    :func:`hf_l0.prune_model` will return."""
    return _latency(model, table, "deterministic" if deterministic else "expected")


class LatencyTarget(CostTarget):
    """Latency per forward pass predicted by a :class:`LatencyTable` (logged in milliseconds)."""

    name = "latency"
    unit = "ms"
    scale = 1e3
    fixed_description = "the fixed latency (embeddings, norms, head, per-layer dispatch)"

    def __init__(self, table: LatencyTable) -> None:
        self.table = table

    def cost(self, model: nn.Module, mode: str) -> torch.Tensor:
        return _latency(model, self.table, mode)

    def fixed_cost(self, model: nn.Module) -> float:
        if get_adapter(transformers_model(model)).can_drop_layers():  # all but one layer can leave the model
            return self.table.fixed_s - (self.table.num_layers - 1) * self.table.layer_s
        return self.table.fixed_s

    def config_dict(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "table": self.table.path,
            **{k: v for k, v in self.table.key.items() if k in ("batch_size", "seq_len", "threads")},
        }
