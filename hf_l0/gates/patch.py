"""Attach hard concrete gates to a stock transformers model with hooks (no modeling code is copied or replaced)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..cost.layout import SizeLayout, layout_of
from ..pruning.slicing import base_layer, norm_on_subset
from .config import L0Config, check_uniform_target_multiple, unit_multiple
from .hard_concrete import GATE_KINDS, HIDDEN_GATE, SUBLAYER_KINDS, HardConcreteGate, sublayer_gate_names

GATES_ATTR = "l0_gates"
_HANDLES_ATTR = "_l0_hook_handles"


class L0Gates(nn.Module):
    """All gates of one model, attached as ``model.l0_gates``.

    ``heads`` [layers, units] (a unit is a head, or a KV group on GQA models), ``ffn`` [layers, neurons],
    ``attention_layers`` / ``ffn_layers`` [layers], ``hidden`` [hidden_size] (binary at eval). Each is a
    :class:`HardConcreteGate`; ``head_dim`` (the K/V columns of one attention unit) turns ``config.width_multiple``
    into the heads gate's ``unit_multiple``. One sample of every gate is drawn per model forward (``refresh``) and
    shared by all hooks of that forward, so gradient checkpointing recomputes with the same gate values.
    """

    def __init__(
        self,
        config: L0Config,
        num_layers: int,
        attention_units: int,
        ffn_units: int,
        hidden_size: int,
        size_layout: SizeLayout | None = None,
        head_dim: int = 1,
    ):
        super().__init__()
        kwargs = dict(
            droprate_init=config.droprate_init,
            temperature=config.temperature,
            limit_left=config.limit_left,
            limit_right=config.limit_right,
        )
        units = {"attention": attention_units, "ffn": ffn_units}
        for kind in GATE_KINDS:
            if not getattr(config, kind.switch):
                continue
            if kind.level == "unit":
                shape = (num_layers, units[kind.sublayer])
            else:
                shape = (num_layers,) if kind.level == "sublayer" else (hidden_size,)
            gate = HardConcreteGate(shape, binary=kind.binary, **kwargs)
            gate.keep_per_row = getattr(config, kind.keep_per_row) if kind.keep_per_row else None
            if kind.level != "sublayer":  # whole-sublayer gates keep any count
                width = head_dim if kind.sublayer == "attention" else 1  # dimensions per entry
                gate.unit_multiple = unit_multiple(config.width_multiple, width)
            self.add_module(kind.name, gate)
        # The dense model's parameter counts the sizes are computed from (hf_l0.cost.size), read once by patch_model.
        self.size_layout = size_layout
        self._values: dict[str, torch.Tensor] = {}
        self._depth = 0  # patched forwards running now (the outermost draws the sample, see _refresh_gates)
        # The recovery stage: every gate at its deterministic value in training mode too (see freeze).
        self.frozen = False

    def named_gates(self) -> Iterator[tuple[str, HardConcreteGate]]:
        """``(name, gate)`` pairs, like every ``named_*`` of ``nn.Module``, in creation order (the order of
        :data:`hf_l0.gates.hard_concrete.GATE_KINDS`)."""
        for name, module in self.named_children():
            if isinstance(module, HardConcreteGate):
                yield name, module

    @property
    def gates(self) -> dict[str, HardConcreteGate]:
        """The gates by name, in creation order."""
        return dict(self.named_gates())

    def freeze(self) -> None:
        """Fix the architecture: from now on every forward, in training mode too, uses the deterministic gate values
        (what :func:`hf_l0.prune_model` folds into the weights), and ``log_alpha`` takes no gradient. The weights then
        train the compact model exactly, as CoFi's and Sheared-LLaMA's second stage does (the recovery stage)."""
        self.frozen = True
        for gate in self.gates.values():
            gate.log_alpha.requires_grad_(False)
        self._values = {}

    def unfreeze(self) -> None:
        """Undo :meth:`freeze`: sampled gates in training mode, ``log_alpha`` trainable again."""
        self.frozen = False
        for gate in self.gates.values():
            gate.log_alpha.requires_grad_(True)
        self._values = {}

    def refresh(self) -> None:
        if self.frozen:
            self._values = self.deterministic()
        else:
            self._values = {name: gate() for name, gate in self.named_gates()}

    def value(self, name: str) -> torch.Tensor | None:
        if name not in self._values and hasattr(self, name):
            self.refresh()
        return self._values.get(name)

    @torch.no_grad()
    def deterministic(self) -> dict[str, torch.Tensor]:
        return {name: gate.deterministic() for name, gate in self.named_gates()}


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (``PeftModel``), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` (or the transformers model inside a peft wrapper) carries L0 gates."""
    return isinstance(transformers_model(model)._modules.get(GATES_ATTR), L0Gates)


def get_gates(model: nn.Module) -> L0Gates:
    """The :class:`L0Gates` of a patched model (``model.l0_gates``); a ``ValueError`` that says to patch it first
    otherwise."""
    gates = transformers_model(model)._modules.get(GATES_ATTR)
    if not isinstance(gates, L0Gates):
        raise ValueError(f"{type(model).__name__} has no L0 gates: call hf_l0.patch_model(model, L0Config(...)) first.")
    return gates


class _GateScale(torch.autograd.Function):
    """``x * scale`` that keeps only its *output* for backward, not its input.

    The output is the input of the projection it feeds, which saves it anyway, so gating costs no activation
    memory. The gate gradient ``sum(grad * x)`` recovers ``x = y / scale``; where ``scale`` is 0 it returns 0, which
    is exact for hard concrete samples: they are 0 only where the clamp stops their gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        y = x * scale
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        y, scale = ctx.saved_tensors
        grad_x = grad * scale if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            if scale.dim() == 1 and grad.dim() > 1:  # per-feature scale: column-wise dot products, no [N, F] temporary
                features = grad.shape[-1]
                summed = torch.linalg.vecdot(grad.reshape(-1, features).t(), y.reshape(-1, features).t())
            else:
                summed = (grad * y).sum_to_size(scale.shape)
            closed = scale == 0
            grad_scale = (summed / scale.masked_fill(closed, 1)).masked_fill(closed, 0)
        return grad_x, grad_scale


def _scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    scale = scale.to(x.dtype)
    return _GateScale.apply(x, scale) if torch.is_grad_enabled() and scale.requires_grad else x * scale


def _input_scaler(
    gates: L0Gates, unit_gate: str | None, layer_gate: str | None, layer_idx: int, width: int
) -> Callable:
    """Scales the output projection's input by the unit gates (each repeated over its ``width`` features) and, when
    ``layer_gate`` is given, the layer gate: a layer gate folded into the input saves the activation that scaling
    the output would keep for backward (see :func:`_bias_corrector` for the bias)."""

    def pre_hook(module, args):
        units = gates.value(unit_gate) if unit_gate else None
        layer = gates.value(layer_gate) if layer_gate else None
        scale = None if units is None else units[layer_idx].repeat_interleave(width)
        if layer is not None:
            scale = layer[layer_idx] if scale is None else scale * layer[layer_idx]
        return (_scale(args[0], scale), *args[1:])

    return pre_hook


def _bias_corrector(gates: L0Gates, layer_gate: str, layer_idx: int) -> Callable:
    """``proj(x * z) + b * (z - 1) == proj(x) * z`` for a layer gate ``z`` folded into the input of ``proj``."""

    def hook(module, args, output):
        z = gates.value(layer_gate)[layer_idx]
        return output + base_layer(module).bias.to(output.dtype) * (z.to(output.dtype) - 1)

    return hook


def _output_scaler(gates: L0Gates, layer_gate: str | None, layer_idx: int) -> Callable:
    """Scales the sublayer output by its layer gate and the hidden gates (used when hidden dims are gated)."""

    def hook(module, args, output):
        layer, hidden = gates.value(layer_gate) if layer_gate else None, gates.value(HIDDEN_GATE)
        scale = hidden if layer is None else layer[layer_idx] * hidden
        return output * scale.to(output.dtype)

    return hook


def _hidden_scaler(gates: L0Gates) -> Callable:
    def hook(module, args, output):
        return output * gates.value(HIDDEN_GATE).to(output.dtype)

    return hook


def _hidden_norm(gates: L0Gates) -> Callable:
    # Norm statistics over the surviving hidden dimensions only (CoFi), and zeros elsewhere so the norm's bias does
    # not refill pruned dimensions: exactly what the compact model with fewer dimensions computes.
    def hook(module, args, output):
        keep = gates.value(HIDDEN_GATE) != 0
        if bool(keep.all()):
            return output
        index = keep.nonzero().squeeze(-1)
        result = output.new_zeros(output.shape)
        return result.index_copy(-1, index, norm_on_subset(module, args[0], index).to(output.dtype))

    return hook


def _refresh_gates(gates: L0Gates, root: nn.Module, hooked: dict[str, nn.Module]) -> tuple[Callable, Callable]:
    """Hooks for every module a user may call directly (the task model and the base model inside it): the outermost
    one that runs draws the gate sample (or the eval-mode values) for its whole forward; nested ones reuse it. So a
    direct ``model.model(...)`` in eval mode never sees the last training sample, and one forward is one sample."""

    def pre_hook(module, args):
        gates._depth += 1
        if gates._depth > 1:
            return
        for path, hooked_module in hooked.items():
            if root.get_submodule(path) is not hooked_module:
                raise RuntimeError(
                    f"{path} was replaced after hf_l0.patch_model (e.g. by peft.get_peft_model), so the L0 gates no "
                    "longer see its whole output. Call patch_model after get_peft_model, on the peft model."
                )
        gates.refresh()

    def hook(module, args, output):  # registered with always_call: runs after an error too (pre-hook's included)
        gates._depth = max(gates._depth - 1, 0)

    return pre_hook, hook


def _register(adapter: ArchAdapter, gates: L0Gates, config: L0Config) -> list:
    handles = []
    for i in range(adapter.num_layers):
        for kind in SUBLAYER_KINDS:
            sublayer, (unit_gate, layer_gate) = getattr(adapter, kind)(i), sublayer_gate_names(kind)
            unit_gate = unit_gate if hasattr(gates, unit_gate) else None
            layer_gate = layer_gate if hasattr(gates, layer_gate) else None
            # Hidden gates scale the sublayer output per dimension anyway, so the layer gate joins them there;
            # otherwise it is folded into the output projection's input (no extra activation kept for backward).
            fold_layer = layer_gate is not None and not config.hidden
            if unit_gate or fold_layer:
                handles.append(
                    sublayer.output.register_forward_pre_hook(
                        _input_scaler(gates, unit_gate, layer_gate if fold_layer else None, i, sublayer.unit_width)
                    )
                )
            if fold_layer and base_layer(sublayer.output).bias is not None:
                handles.append(sublayer.output.register_forward_hook(_bias_corrector(gates, layer_gate, i)))
            if config.hidden:
                handles.append(sublayer.output.register_forward_hook(_output_scaler(gates, layer_gate, i)))
    if config.hidden:
        stream = adapter.residual_stream()
        handles += [embedding.register_forward_hook(_hidden_scaler(gates)) for embedding in stream.embeddings]
        handles += [norm.register_forward_hook(_hidden_norm(gates)) for norm in stream.norms]
    hooked_ids = {handle.id for handle in handles}
    hooked = {
        path: module
        for path, module in adapter.model.named_modules()
        if hooked_ids & (set(module._forward_hooks) | set(module._forward_pre_hooks))
    }
    pre_hook, hook = _refresh_gates(gates, adapter.model, hooked)
    for entry in dict.fromkeys((adapter.model, adapter.base)):  # the base model is the task model itself for AutoModel
        handles.append(entry.register_forward_pre_hook(pre_hook))
        handles.append(entry.register_forward_hook(hook, always_call=True))
    return handles


def _uniform_units(adapter: ArchAdapter) -> tuple[int, int]:
    attention = {s.num_units for s in (adapter.attention(i) for i in range(adapter.num_layers)) if s is not None}
    ffn = {s.num_units for s in (adapter.ffn(i) for i in range(adapter.num_layers)) if s is not None}
    if len(attention) != 1 or len(ffn) != 1 or getattr(adapter.config, "l0_structure", None):
        if not attention or not ffn or len(attention) + len(ffn) > 2:
            why = "per-layer shapes differ or sublayers were removed"
        else:
            why = "its config carries l0_structure: a compact model saved or built by hf-l0"
        raise ValueError(
            f"{type(adapter.model).__name__} is already pruned ({why}); hf-l0 patches dense models only. "
            "Patch the original model instead."
        )
    return attention.pop(), ffn.pop()


def patch_model(model: nn.Module, config: L0Config) -> nn.Module:
    """Attach L0 gates to ``model`` in place and return it.

    ``model`` may be a peft model (LoRA adapters added by ``get_peft_model`` first): gates then join the transformers
    model inside it and gate the adapted projections' whole output; the base weights stay frozen, gates train.

    Gates live in ``model.l0_gates``; hooks apply them (CoFi semantics): a head gate scales that head's context
    before the output projection, an FFN gate scales the intermediate activation, a layer gate scales the whole
    sublayer output, and a hidden gate scales every hidden dimension at the embedding outputs and at each sublayer
    output while residual norms compute their statistics over the surviving dimensions only.
    """
    if not isinstance(config, L0Config):
        raise TypeError(f"config must be an hf_l0.L0Config, got {type(config).__name__}.")
    config.validate()
    if is_patched(model):
        raise ValueError(
            f"{type(model).__name__} is already patched with L0 gates; call hf_l0.unpatch_model(model) "
            "first to start again, or keep training the existing gates."
        )
    target = transformers_model(model)
    adapter = get_adapter(target)
    adapter.check_supported(gate_hidden=config.hidden)
    attention_units, ffn_units = _uniform_units(adapter)
    for name, value, limit in (
        ("target_heads", config.target_heads, attention_units),
        ("target_intermediate_size", config.target_intermediate_size, ffn_units),
        ("target_hidden_size", config.target_hidden_size, adapter.hidden_size),
    ):
        if value is not None and value > limit:
            raise ValueError(f"{name}={value} exceeds what the model has ({limit}); a target must not grow it.")
    if config.target_heads is not None:  # its step depends on head_dim (L0Config.validate checked the others)
        head_dim = adapter.head_dim()
        step = unit_multiple(config.width_multiple, head_dim)
        check_uniform_target_multiple(
            "target_heads", config.target_heads, step, config.width_multiple, head_dim, attention_units
        )
    param = next(target.parameters())
    gates = L0Gates(
        config,
        adapter.num_layers,
        attention_units,
        ffn_units,
        adapter.hidden_size,
        layout_of(adapter),
        head_dim=adapter.head_dim(),
    )
    gates.to(device=param.device)
    gates.train(target.training)  # a model patched after .eval() must stay deterministic
    target.add_module(GATES_ATTR, gates)
    setattr(target, _HANDLES_ATTR, _register(adapter, gates, config))
    target.l0_config = config
    return model


def unpatch_model(model: nn.Module) -> nn.Module:
    """Remove gates and hooks; the model computes exactly what it computed before :func:`patch_model`."""
    get_gates(model)
    target = transformers_model(model)
    for handle in getattr(target, _HANDLES_ATTR, []):
        handle.remove()
    delattr(target, _HANDLES_ATTR)
    delattr(target, GATES_ATTR)
    target.__dict__.pop("l0_config", None)
    return model
