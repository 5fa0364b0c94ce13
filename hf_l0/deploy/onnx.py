"""Export a compact (or dense) transformers model to ONNX for ONNX Runtime, and check the file against PyTorch.

Compact models keep their stock transformers classes; removed sublayers are small torch modules
(:mod:`hf_l0.pruning.stand_ins`) whose outputs are constants, so tracing exports every shape hf-l0 makes, layer by
layer.

optimum's ONNX exporter is not used: ``optimum-onnx`` 0.1.0 (the newest) requires ``transformers<4.58`` and fails to
import on transformers v5 (``ImportError: cannot import name 'get_parameter_dtype'``).
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..gates.patch import is_patched, transformers_model

INSTALL_HINT = 'pip install "hf-l0[deploy]"'


@dataclass
class OnnxExport:
    """Where the model went, its inputs and outputs, and the check against PyTorch (None when not checked)."""

    path: Path
    input_names: list[str]
    output_name: str
    max_abs_diff: float | None


class _Forward(nn.Module):
    """Positional inputs in, the model's main output tensor out (ONNX graphs have flat tensor signatures)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], output_name: str, use_cache: bool | None):
        super().__init__()
        self.model, self.input_names = model, list(input_names)
        self.output_name, self.use_cache = output_name, use_cache

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.input_names, tensors))
        if self.use_cache is not None:
            kwargs["use_cache"] = self.use_cache  # no KV cache: the graph maps a whole sequence to its outputs
        return getattr(self.model(**kwargs, return_dict=True), self.output_name)


def default_input_names(model: nn.Module) -> list[str]:
    """``input_ids`` and ``attention_mask``, plus ``token_type_ids`` for encoders that have segment embeddings."""
    names = ["input_ids", "attention_mask"]
    accepts = inspect.signature(model.forward).parameters
    if "token_type_ids" in accepts and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


def example_inputs(
    model: nn.Module, input_names: Sequence[str], batch: int, length: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids (a padded last row when ``batch > 1``) for tracing and for checking an exported file."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    inputs: dict[str, torch.Tensor] = {}
    for name in input_names:
        if name == "input_ids":
            inputs[name] = torch.randint(0, vocab, (batch, length), generator=generator)
        elif name == "attention_mask":
            mask = torch.ones(batch, length, dtype=torch.long)
            if batch > 1:
                mask[-1, length // 2 :] = 0
            inputs[name] = mask
        elif name == "token_type_ids":
            types = torch.zeros(batch, length, dtype=torch.long)
            types[:, length // 2 :] = 1
            inputs[name] = types
        else:
            raise ValueError(f"no example values for input {name!r}: pass example_inputs with every input tensor.")
    return inputs


def _main_output(
    model: nn.Module, inputs: dict[str, torch.Tensor], use_cache: bool | None
) -> tuple[str, dict[int, str]]:
    """The name of the model's main output and its dynamic axes (a sequence axis unless it is one row per input)."""
    kwargs = {**inputs, **({} if use_cache is None else {"use_cache": use_cache})}
    with torch.no_grad():
        out = model(**kwargs, return_dict=True)
    for name in ("logits", "start_logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            per_token = value.dim() >= 3 or name == "start_logits"
            return name, ({0: "batch", 1: "sequence"} if per_token else {0: "batch"})
    raise ValueError(f"{type(model).__name__} returns none of logits / last_hidden_state; cannot pick an output.")


def _move_export(tmp_dir: str, path: Path) -> None:
    # The exporter may write external data next to the graph (models over 2 GB); the graph names those files, so
    # they move together under the same names.
    for name in sorted(os.listdir(tmp_dir)):
        target = path.parent / name
        if name != path.name:
            os.replace(os.path.join(tmp_dir, name), target)
    os.replace(os.path.join(tmp_dir, path.name), path)  # the graph last: a complete path means a complete export


def check_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    output_name: str = "logits",
    threads: int = 1,
) -> float:
    """Max |ONNX Runtime - PyTorch| of the main output on ``inputs`` (fp32, CPU execution provider)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"checking an ONNX export needs onnxruntime: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    use_cache = False if getattr(model.config, "use_cache", None) is not None else None
    forward = _Forward(model, list(inputs), output_name, use_cache)
    with torch.no_grad():
        expected = forward(*inputs.values()).float().numpy()
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = session.run([output_name], feed)[0]
    if got.shape != expected.shape:
        raise AssertionError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}.")
    return float(abs(got - expected).max()) if got.size else 0.0


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    opset: int = 17,
    dynamo: bool = False,
    check: bool = True,
    atol: float = 1e-4,
) -> OnnxExport:
    """Write ``model`` (a compact model from :func:`hf_l0.prune_model`, or any dense model of a supported family)
    to the ONNX file ``path``, with dynamic batch and sequence axes.

    The graph maps ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for encoders with segment
    embeddings) to the model's main output: ``logits`` for task heads and causal LMs, ``last_hidden_state`` for bare
    encoders. Decoders are exported without a KV cache: the graph scores a whole sequence at once (encoders, rerankers,
    classifiers and scoring; for token-by-token generation use the GGUF export and llama.cpp).

    ``dynamo=False`` uses torch's TorchScript exporter (fast, exact on every family hf-l0 supports; deprecated by
    torch but present); ``dynamo=True`` uses ``torch.export`` (needs ``onnxscript``, slower to export). With ``check``
    (default), ONNX Runtime runs the file on a batch and a length other than the traced ones and the export fails
    unless every output agrees with PyTorch within ``atol``. The write is atomic: ``path`` appears complete or not at
    all.
    """
    model = transformers_model(model)
    if is_patched(model):
        raise ValueError(
            "the model still carries L0 gates: call hf_l0.prune_model(model) first and export the "
            "compact model it returns."
        )
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: an ONNX file name must end in .onnx.")
    names = list(input_names) if input_names is not None else default_input_names(model)
    if "input_ids" not in names:
        raise ValueError(f"input_names={names} lacks input_ids.")
    use_cache = False if getattr(model.config, "use_cache", None) is not None else None
    was_training = model.training
    model.eval()  # dropout off while tracing; the exporter may switch modes (torch.export leaves train mode on)
    try:
        traced = example_inputs(model, names, batch=2, length=8)
        output_name, output_axes = _main_output(model, traced, use_cache)
        forward = _Forward(model, names, output_name, use_cache).eval()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp_dir:
            tmp = Path(tmp_dir) / path.name
            if dynamo:
                from torch.export import Dim

                batch, sequence = Dim("batch"), Dim("sequence")
                torch.onnx.export(
                    forward,
                    tuple(traced.values()),
                    str(tmp),
                    dynamo=True,
                    opset_version=max(opset, 18),
                    input_names=names,
                    output_names=[output_name],
                    dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),),
                )  # *tensors
            else:
                dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in names}
                dynamic_axes[output_name] = output_axes
                torch.onnx.export(
                    forward,
                    tuple(traced.values()),
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=[output_name],
                    dynamic_axes=dynamic_axes,
                )
            _check_axes(tmp)
            max_diff = None
            if check:
                model.eval()
                other = example_inputs(model, names, batch=3, length=13, seed=1)  # other shapes than the trace
                max_diff = check_onnx(tmp, model, other, output_name)
                if not max_diff <= atol:
                    raise AssertionError(
                        f"ONNX Runtime output differs from PyTorch by {max_diff:.3g} (> atol={atol}) "
                        f"on batch 3 x length 13; {path} was not written."
                    )
            _move_export(tmp_dir, path)
    finally:
        model.train(was_training)
    return OnnxExport(path, names, output_name, max_diff)


def _check_axes(path: Path) -> None:
    """Fail when the exporter fixed the batch or sequence axis of an input (the file would reject other shapes)."""
    try:
        import onnx
    except ImportError:
        raise ImportError(f"exporting to ONNX needs the onnx package: {INSTALL_HINT}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        fixed = [i for i, d in enumerate(dims[:2]) if d.HasField("dim_value")]
        if fixed:
            raise AssertionError(
                f"the exported input {value.name!r} has fixed axes {fixed}; expected dynamic batch and sequence axes."
            )
