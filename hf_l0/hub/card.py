"""The model card (README.md with Hub YAML metadata) and structure heatmap written next to a saved compact model."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import nn

from ..arch import get_adapter
from ..pruning.structure_format import STRUCTURE_KEY
from .export import EXPORT_KEY, PIPELINE_TAGS, auto_class_name, dense_parameter_count, export_plan

CARD_FILE = "README.md"
HEATMAP_FILE = "l0_structure.png"
TAGS = ("pruning", "l0-regularization", "hf-l0")


def project_url() -> str | None:
    """The project's home page as ``pyproject.toml`` declares it (``[project.urls]``, read from the installed
    distribution's metadata), or None: the card then names hf-l0 without a link rather than link a placeholder."""
    try:
        meta = metadata.metadata("hf-l0")
    except metadata.PackageNotFoundError:
        return None
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL") or () if ", " in entry)
    url = next((urls[key] for key in ("Homepage", "Repository", "Source") if key in urls), meta.get("Home-page"))
    return url if url and url.startswith("https://") and url.rstrip("/") != "https://github.com" else None


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON scalars are valid YAML


def _dense_layer_sizes(model: nn.Module) -> tuple[int, int, int, int]:
    """(query heads, KV heads, FFN neurons, hidden size) of one dense layer (the config keeps the dense sizes)."""
    adapter = get_adapter(model)
    heads = model.config.num_attention_heads
    return heads, heads // adapter.query_heads_per_unit(), adapter.dense_intermediate_size(), adapter.hidden_size


def structure_heatmap(path: str | os.PathLike, structure: dict, model: nn.Module) -> Path | None:
    """PNG heatmap: one row per layer, columns query heads / KV heads / FFN neurons, colour = fraction kept,
    annotated with the kept counts. Returns None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    heads, kv, ffn, hidden = _dense_layer_sizes(model)
    layers = structure["layers"]
    columns = [
        ("query heads", "attention_heads", heads),
        ("KV heads", "key_value_heads", kv),
        ("FFN neurons", "intermediate_size", ffn),
    ]
    fractions = [[layer[key] / total if total else 0.0 for _, key, total in columns] for layer in layers]
    fig, ax = plt.subplots(figsize=(4.8, 0.9 + 0.32 * len(layers)))
    image = ax.imshow(fractions, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, layer in enumerate(layers):
        for j, (_, key, total) in enumerate(columns):
            ax.text(
                j,
                i,
                f"{layer[key]}/{total}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if fractions[i][j] < 0.6 else "black",
            )
    ax.set_xticks(range(len(columns)), [name for name, _, _ in columns])
    dropped = structure.get("dropped_layers", [])
    original = [i for i in range(len(layers) + len(dropped)) if i not in dropped]  # dropped layers have no row
    ax.set_yticks(range(len(layers)), [str(i) for i in original])
    ax.set_ylabel("layer")
    ax.set_title(f"kept structure (hidden {structure['hidden_size']}/{hidden})", fontsize=9)
    fig.colorbar(image, ax=ax, label="fraction kept")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _loading_snippet(auto_class: str, repo: str, native: bool) -> str:
    lines = ["```python", f"from transformers import {auto_class}", ""]
    if native:
        lines += [f'model = {auto_class}.from_pretrained("{repo}")  # a stock config: no remote code']
    else:
        lines += [f'model = {auto_class}.from_pretrained("{repo}", trust_remote_code=True)']
    lines += ["```", ""]
    if not native:
        lines += [
            "`trust_remote_code=True` runs `modeling_hf_l0.py` from this repository: the stock transformers "
            "classes, shrunk to the per-layer shapes recorded in `config.json` (`l0_structure`); pass it to "
            "`AutoTokenizer` too. With hf-l0 installed nothing from the repository runs: after `import hf_l0` the "
            "Auto classes (tokenizer included) load it with hf-l0's own classes and need no flag, or "
            "(safetensors only, strict):",
            "",
            "```python",
            "import hf_l0",
            "",
            f'model = hf_l0.from_pretrained("{repo}")',
            "```",
            "",
        ]
    return "\n".join(lines)


def model_card(
    model: nn.Module,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    metrics: dict[str, float] | None = None,
    speedup: float | str | None = None,
    weights_bytes: int | None = None,
    heatmap: str | None = None,
    export: dict | None = None,
    tags: list[str] | None = None,
) -> str:
    """The README.md of a saved compact model (needs ``config.l0_export``, which save_pretrained sets, for the
    before/after numbers; a dense model gets a short card)."""
    config = model.config
    structure = getattr(config, STRUCTURE_KEY, None)
    auto = auto_class_name(model)
    export = export or getattr(config, EXPORT_KEY, None) or {}
    if "native" in export:
        native, reason = export["native"], export.get("reason", "")
    else:
        plan = export_plan(model)
        native, reason = plan.native, plan.reason
    if base_model is None:
        name = getattr(config, "_name_or_path", "") or ""
        base_model = name if name.count("/") == 1 and not os.path.exists(name) else None
    meta = []
    if base_model:
        meta.append(f"base_model: {_yaml_value(base_model)}")
    meta += ["library_name: transformers", "tags:"] + [f"- {tag}" for tag in TAGS]
    meta += [f"- {_yaml_value(tag)}" for tag in dict.fromkeys(tags or ()) if tag not in TAGS]
    meta.append(f"pipeline_tag: {PIPELINE_TAGS[auto]}")
    if metrics:
        meta.append("model-index:")
        meta.append(f"- name: {_yaml_value(repo_id or type(model).__name__)}")
        meta.append("  results:")
        meta.append("  - task:")
        meta.append(f"      type: {PIPELINE_TAGS[auto]}")
        meta.append("    metrics:")
        for key, value in metrics.items():
            meta += [f"    - type: {_yaml_value(key)}", f"      value: {_yaml_value(value)}"]
    title = repo_id.split("/")[-1] if repo_id else f"Compact {type(model).__name__}"
    parts = ["---", *meta, "---", "", f"# {title}", ""]
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a pretrained model"
    url = project_url()
    made_with = f"[hf-l0]({url})" if url else "hf-l0"
    parts += [
        f"A structurally pruned version of {source}, made with {made_with} — structured pruning "
        "with L0 regularization (hard concrete gates on attention heads, FFN neurons, hidden dimensions and "
        "whole sublayers, as in CoFi and Sheared-LLaMA). Pruned structures are physically removed: this is a "
        f"smaller `{type(model).__name__}`, not a masked one.",
        "",
    ]
    after = sum(p.numel() for p in model.parameters())
    before = export.get("dense_parameters")
    if before is None and structure:
        before = dense_parameter_count(model)
    parts += ["## Size", "", "| | parameters |", "|---|---:|"]
    if before:
        parts += [
            f"| before pruning | {before:,} |",
            f"| after pruning | {after:,} |",
            f"| sparsity (all parameters) | {1 - after / before:.1%} |",
        ]
    else:
        parts += [f"| parameters | {after:,} |"]
    if weights_bytes is not None:
        parts += [f"| weights on disk (safetensors) | {weights_bytes / 2**20:.1f} MiB |"]
    parts.append("")
    if structure:
        heads, kv, ffn, hidden = _dense_layer_sizes(model)
        kept_units = sum(layer["attention_heads"] for layer in structure["layers"])
        kept_ffn = sum(layer["intermediate_size"] for layer in structure["layers"])
        dropped = structure.get("dropped_layers", [])
        n = len(structure["layers"]) + len(dropped)  # the dense model's layers
        parts += [
            f"Attention heads kept: {kept_units}/{heads * n} ({kept_units / (heads * n):.1%}); FFN neurons "
            f"kept: {kept_ffn}/{ffn * n} ({kept_ffn / (ffn * n):.1%}); hidden size "
            f"{structure['hidden_size']}/{hidden}.",
            "",
            "## Kept structure",
            "",
        ]
        if heatmap:
            parts += [f"![kept structure per layer]({heatmap})", ""]
        parts += ["| layer | query heads | KV heads | FFN neurons | attention | FFN |", "|---:|---:|---:|---:|---|---|"]
        kept_layers = iter(structure["layers"])
        for i in range(n):
            if i in dropped:
                parts.append(f"| {i} | 0/{heads} | 0/{kv} | 0/{ffn} | layer dropped | layer dropped |")
                continue
            layer = next(kept_layers)
            attention = (
                "kept"
                if layer["key_value_heads"]
                else ("removed (output bias kept)" if layer["attention_output_bias"] else "removed")
            )
            ffn_state = (
                "kept"
                if layer["intermediate_size"]
                else ("removed (output bias kept)" if layer["ffn_output_bias"] else "removed")
            )
            parts.append(
                f"| {i} | {layer['attention_heads']}/{heads} | {layer['key_value_heads']}/{kv} | "
                f"{layer['intermediate_size']}/{ffn} | {attention} | {ffn_state} |"
            )
        parts += [
            "",
            f"Export: {'native (stock config)' if native else 'remote code (modeling_hf_l0.py)'} — {reason}",
            "",
        ]
    if metrics:
        parts += ["## Evaluation", "", "| metric | value |", "|---|---:|"]
        parts += [
            f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in metrics.items()
        ]
        parts.append("")
    if speedup is not None:
        text = f"{speedup:.2f}x" if isinstance(speedup, (int, float)) else str(speedup)
        parts += ["## Speed", "", f"Measured speedup over the unpruned model: {text}.", ""]
    parts += ["## Loading", "", _loading_snippet(auto, repo_id or "path/to/this/model", native)]
    return "\n".join(parts)


def write_model_card(directory: str | os.PathLike, model: nn.Module, **kwargs) -> Path:
    """Write README.md (and the heatmap PNG for compact models) into ``directory``; returns the README path."""
    directory = Path(directory)
    weights = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    structure = getattr(model.config, STRUCTURE_KEY, None)
    heatmap = None
    if structure and structure_heatmap(directory / HEATMAP_FILE, structure, model) is not None:
        heatmap = HEATMAP_FILE
    config_path = directory / "config.json"
    if config_path.is_file():
        kwargs.setdefault("export", json.loads(config_path.read_text()).get(EXPORT_KEY))
    kwargs.setdefault("weights_bytes", weights)
    path = directory / CARD_FILE
    path.write_text(model_card(model, heatmap=heatmap, **kwargs))
    return path
