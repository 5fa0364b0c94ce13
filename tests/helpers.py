"""Test helpers that make tiny random models sensitive to the mistakes a default init hides."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

import hf_l0
from hf_l0.hub.auto_classes import register_compact_classes, unregister_compact_classes

# L0Config arguments that prune every layer alike (the native-export case).
UNIFORM = dict(target_heads=1, target_intermediate_size=20, layers=False)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every bias, norm weight / bias and embedding of ``model`` random values, in place.

    The default init of the tiny test models has zero biases and unit norm weights: with those, a missing bias
    correction or a wrong norm slice changes the output by ~1e-7 and slips under any tolerance. Random values make
    such a mistake cost ~1e-1 while the exact computations stay ~1e-6 apart in fp32.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor: torch.Tensor, mean: float, std: float) -> None:
        tensor.copy_(mean + std * torch.randn(tensor.shape, generator=generator, dtype=torch.float32))

    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen or "log_alpha" in name:
            continue
        seen.add(id(param))
        leaf = name.rsplit(".", 1)[-1]
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        is_norm = "norm" in type(owner).__name__.lower() or "LayerNorm" in name or ".ln_" in f".{name}"
        if leaf == "bias":
            normal(param, 0.0, 0.5 if is_norm else 0.2)
        elif is_norm and leaf == "weight":
            normal(param, 1.0, 0.3)
        elif isinstance(owner, nn.Embedding):
            normal(param, 0.0, 0.5)
    return model


def randomize_gates(model, seed: int = 0, closed_attention_layer: int = 0, closed_ffn_layer: int = 1) -> None:
    """Random log_alpha (a good share of every structure closes) plus whole sublayers forced shut: every unit of
    attention in ``closed_attention_layer`` and the layer gate of the FFN in ``closed_ffn_layer``. The other sublayer
    of those two layers stays (its layer gate open), so no layer loses both: decoders would drop it (see the tests of
    dropped layers, which shut both on purpose)."""
    gates = hf_l0.get_gates(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates.gates.values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=generator) * 3.0)
        if hasattr(gates, "heads"):
            gates.heads.log_alpha[closed_attention_layer] = -10.0
        if hasattr(gates, "ffn_layers"):
            gates.ffn_layers.log_alpha[closed_attention_layer] = 10.0
            gates.ffn_layers.log_alpha[closed_ffn_layer] = -10.0
            gates.attention_layers.log_alpha[closed_ffn_layer] = 10.0


def log_alphas(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every gate's ``log_alpha``, by gate name (to check what a step or a snap moved)."""
    return {name: gate.log_alpha.detach().clone() for name, gate in hf_l0.get_gates(model).gates.items()}


def max_diff(a: torch.Tensor, b: torch.Tensor, inputs: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over the positions the attention mask keeps (padding positions are not compared)."""
    diff = (a - b).abs()
    return (diff[inputs["attention_mask"].bool()] if diff.dim() == 3 else diff).max().item()


def weights_bytes(directory: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))


# The first lines of a script run in a fresh process where hf_l0 cannot be imported (even if the venv has it): what a
# user without hf-l0 sees when loading a compact model through transformers alone.
NO_HF_L0_PRELUDE = textwrap.dedent("""
    import importlib.abc, json, sys, tempfile

    class NoHfL0(importlib.abc.MetaPathFinder):  # hf_l0 is "not installed" here, even if the venv has it
        def find_spec(self, name, path=None, target=None):
            if name == "hf_l0" or name.startswith("hf_l0."):
                raise ImportError("No module named " + repr(name))

    sys.meta_path.insert(0, NoHfL0())
    try:
        import hf_l0  # noqa: F401
        raise SystemExit("hf_l0 is importable")
    except ImportError:
        pass
""")


@contextlib.contextmanager
def directory_code_only() -> Iterator[None]:
    """transformers without hf-l0's registered classes: ``hf_l0_<type>`` resolves only through a directory's own
    ``modeling_hf_l0.py`` (with ``trust_remote_code=True``), as in a process where hf-l0 is not installed."""
    unregister_compact_classes()
    try:
        yield
    finally:
        register_compact_classes()


class RecordingHubApi:
    """Stands in for transformers' Hub client (``transformers.utils.hub.hf_api``): records repository and branch
    creation and the commit, with the uploaded files by name."""

    def __init__(self) -> None:
        self.calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls["create_repo"] = (repo_id, kwargs)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls["commit"] = (repo_id, kwargs)
        self.calls["files"] = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        return "commit-url"

    def create_branch(self, repo_id=None, branch=None, **kwargs):
        self.calls["branch"] = (repo_id, branch)


def use_hub_api(monkeypatch, api):
    """Route transformers' Hub client to ``api`` (through ``monkeypatch``, a fixture or a MonkeyPatch context)."""
    import transformers.utils.hub as transformers_hub

    monkeypatch.setattr(transformers_hub, "hf_api", lambda: api)
    return api
