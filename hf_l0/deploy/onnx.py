"""Export a compact (or dense) transformers model to ONNX for ONNX Runtime, and check the export against PyTorch.

A thin layer over transformers' own exporter (``transformers.exporters.OnnxExporter``: ``torch.export``, then
``torch.onnx`` with onnxscript): compact models keep their stock transformers classes, and removed sublayers are small
torch modules (:mod:`hf_l0.pruning.stand_ins`) whose outputs are constants, so the exporter handles every shape hf-l0
makes, layer by layer. What this module adds is what a pruned model's user needs around it:

* a whole-sequence graph in one ``.onnx`` file with dynamic batch and sequence axes (encoders, classifiers,
  scoring), checked against PyTorch on shapes other than the traced one;
* for causal LMs, the exporter's ``prefill`` and ``decode`` graphs with a KV cache (``generation=True``), checked by
  greedy generation in ONNX Runtime (:class:`OnnxGenerator`) against ``model.generate()``;
* ONNX Runtime's dynamic int8 quantization as one option (``quantize="int8"``: the exporter's
  ``OnnxRuntimeQuantizer`` with ``OnnxRuntimeDynamicConfig``), minus one thing: a matrix product with an empty weight
  stays fp32. An encoder attention or FFN that lost every unit keeps its output projection with 0 inputs (its output
  is its bias), and ONNX Runtime's ``MatMulInteger`` with an inner dimension of 0 (checked on 1.32) does not write its
  output: it returns whatever the reused buffer held, so int8 outputs changed from run to run (see the tests). An
  fp32 ``MatMul`` computes the zeros.

optimum's ONNX exporter is not used: ``optimum-onnx`` 0.1.0 requires ``transformers<4.58`` and fails to import on
transformers v5 (``ImportError: cannot import name 'get_parameter_dtype'``).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..gates.patch import is_patched, transformers_model
from ..hub.export import stock_config

INSTALL_HINT = 'pip install "hf-l0[deploy]"'
QUANTIZE = ("int8",)
# Default tolerance of the generation check, relative to the largest logit: the prefill / decode graphs sum in another
# order than PyTorch, over every layer and step (a compact SmolLM2-135M: 4.6e-3 on logits up to ~30, tokens equal).
GENERATION_RTOL = 1e-3
# Past this much weight a single-graph file keeps its weights in a ``<name>.onnx.data`` file beside it: protobuf caps a
# file at 2 GB (the exporter's own threshold, leaving room for the graph).
_INLINE_WEIGHTS_LIMIT = int(1.5 * 2**30)


@dataclass
class OnnxExport:
    """Where the model went, its inputs and main output, and the check against PyTorch (None when not checked).

    ``components`` are the graphs written: ``["model"]`` (``path`` is the ``.onnx`` file) or ``["prefill",
    "decode"]`` (``path`` is a directory that :class:`OnnxGenerator` and ``ExportedModel.from_pretrained`` load).
    ``max_abs_diff`` is the largest |ONNX Runtime - PyTorch| of the main output (every generated step's logits for
    generation); ``top1_agreement`` the share of positions (or generated tokens) whose argmax agrees."""

    path: Path
    input_names: list[str]
    output_name: str
    max_abs_diff: float | None
    components: list[str] = field(default_factory=lambda: ["model"])
    quantize: str | None = None
    top1_agreement: float | None = None


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


def _use_cache(model: nn.Module) -> dict[str, bool]:
    """``use_cache=False`` for models that have a cache: the whole-sequence graph returns no KV cache."""
    return {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}


def _main_output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> str:
    """The name of the model's main output: logits for task heads and causal LMs, else the last hidden state."""
    with torch.no_grad():
        out = model(**inputs, **_use_cache(model), return_dict=True)
    for name in ("logits", "start_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return name
    raise ValueError(f"{type(model).__name__} returns none of logits / last_hidden_state; cannot pick an output.")


def _session(path: str | os.PathLike, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"running an ONNX export needs onnxruntime: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _pytorch_output(model: nn.Module, inputs: dict[str, torch.Tensor], output_name: str) -> torch.Tensor:
    with torch.no_grad():
        return getattr(model(**inputs, **_use_cache(model), return_dict=True), output_name).float()


def onnx_outputs(
    path: str | os.PathLike,
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    output_name: str = "logits",
    threads: int = 1,
) -> tuple[Any, Any]:
    """The main output of a single-graph file in ONNX Runtime (CPU execution provider) and of ``model`` in PyTorch, on
    ``inputs``, as numpy arrays."""
    session = _session(path, threads)
    expected = _pytorch_output(model, inputs, output_name).numpy()
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = session.run([output_name], feed)[0]
    if got.shape != expected.shape:
        raise AssertionError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}.")
    return got, expected


def check_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    output_name: str = "logits",
    threads: int = 1,
) -> float:
    """Max |ONNX Runtime - PyTorch| of the main output on ``inputs`` (a single-graph file, CPU execution provider)."""
    got, expected = onnx_outputs(path, model, inputs, output_name, threads)
    return float(abs(got - expected).max()) if got.size else 0.0


def _top1(got: Any, expected: Any) -> float | None:
    """Share of rows whose argmax agrees (for logits over classes or a vocabulary; None for hidden states)."""
    got, expected = torch.as_tensor(got), torch.as_tensor(expected)
    if got.dim() < 2:
        return None
    return (got.argmax(-1) == expected.argmax(-1)).float().mean().item()


def _onnx_config(
    model: nn.Module, input_names: Sequence[str] | None, opset: int | None, ort_fusions: str | None
) -> Any:
    """The exporter's ``OnnxConfig``: dynamic batch and sequence axes (sequence capped at the model's position table,
    which ``torch.export`` asks for in models with absolute positions)."""
    from torch.export import Dim
    from transformers.exporters import OnnxConfig

    dynamic_shapes = None
    if input_names is not None:
        config = model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        batch, sequence = Dim("batch"), Dim("sequence", max=positions) if positions else Dim("sequence")
        dynamic_shapes = {name: {0: batch, 1: sequence} for name in input_names}
    return OnnxConfig(
        dynamic=dynamic_shapes is None, dynamic_shapes=dynamic_shapes, opset_version=opset, ort_fusions=ort_fusions
    )


def empty_weight_matmuls(program: Any) -> list[str]:
    """Names of the matrix products of an ``onnx_ir`` model whose constant weight has no elements (a projection with
    0 inputs or 0 outputs): nothing to quantize, and ONNX Runtime's ``MatMulInteger`` leaves an output with an inner
    dimension of 0 unwritten."""
    names = []
    for graph in program.graphs():
        for node in graph:
            if node.op_type not in ("MatMul", "Gemm"):
                continue
            weights = [v for v in node.inputs[:2] if v is not None and v.const_value is not None]
            if any(0 in tuple(v.const_value.shape) for v in weights):
                names.append(node.name)
    return names


def quantize_int8(program: Any) -> Any:
    """ONNX Runtime's dynamic int8 quantization of an ``onnx_ir`` model through the exporter's quantizer, leaving the
    empty matrix products (:func:`empty_weight_matmuls`) in fp32."""
    from transformers.exporters import ExportFormat, OnnxRuntimeDynamicConfig, OnnxRuntimeQuantizer

    empty = empty_weight_matmuls(program)
    if any(not name for name in empty):
        raise AssertionError("the exporter left a matrix product without a name: it cannot be kept out of int8.")
    quantizer = OnnxRuntimeQuantizer(OnnxRuntimeDynamicConfig(nodes_to_exclude=empty or None))
    return quantizer.quantize(program, {}, ExportFormat.ONNX)


def _exporter() -> Any:
    import importlib.util

    if importlib.util.find_spec("transformers.exporters") is None:
        import transformers

        raise ImportError(
            f"ONNX export goes through transformers.exporters, which transformers {transformers.__version__} lacks: "
            'pip install "transformers>=5.24".'
        )
    try:
        import onnxscript  # noqa: F401
        from transformers.exporters import OnnxExporter
    except ImportError as error:
        raise ImportError(
            f"exporting to ONNX needs onnx, onnxscript and onnxruntime ({error}): {INSTALL_HINT}"
        ) from None
    return OnnxExporter()


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    generation: bool = False,
    quantize: str | None = None,
    opset: int | None = None,
    ort_fusions: str | None = None,
    check: bool = True,
    atol: float | None = None,
    check_tokens: int = 8,
) -> OnnxExport:
    """Write ``model`` (a compact model from :func:`hf_l0.prune_model`, or any dense model of a supported family)
    to ONNX with transformers' exporter, and check the result in ONNX Runtime.

    Default: one graph in the file ``path`` (``.onnx``) mapping ``input_ids`` and ``attention_mask`` (and
    ``token_type_ids`` for encoders with segment embeddings) to the model's outputs (``logits`` for task heads and
    causal LMs, ``last_hidden_state`` for bare encoders), with dynamic batch and sequence axes and no KV cache: a whole
    sequence at once (encoders, rerankers, classifiers, scoring).

    ``generation=True`` (causal LMs): ``path`` is a directory that receives the exporter's ``prefill`` and ``decode``
    graphs with a KV cache (``prefill.onnx``, ``decode.onnx``, their ``.data`` weights, ``export.json``,
    ``config.json``); :class:`OnnxGenerator` generates with them in ONNX Runtime.

    ``quantize="int8"``: ONNX Runtime's dynamic quantization (int8 weights, activations quantized at run time).
    ``ort_fusions="cpu"`` fuses the graph into ONNX Runtime's own ops (the file then runs only in ONNX Runtime).

    With ``check`` (default), ONNX Runtime runs the export on a batch and a length other than the traced ones (a
    padded batch of prompts and ``check_tokens`` greedy tokens for generation), and the export fails, writing
    nothing, unless the main output agrees with PyTorch within ``atol`` (default 1e-4; for generation 1e-3 of the
    largest logit, as the graphs run many steps; for int8 the quantization error is expected, so the default only
    requires finite outputs and reports the difference) and, for generation in fp32, the greedy tokens equal
    ``model.generate()``'s. The write is atomic: ``path`` appears complete or not at all.
    """
    model = transformers_model(model)
    if is_patched(model):
        raise ValueError(
            "the model still carries L0 gates: call hf_l0.prune_model(model) first and export the "
            "compact model it returns."
        )
    if quantize not in (None, *QUANTIZE):
        raise ValueError(f"quantize={quantize!r}: choose None (fp32) or one of {QUANTIZE}.")
    path = Path(path)
    if generation:
        if path.suffix == ".onnx":
            raise ValueError(f"{path}: generation=True writes a directory (prefill and decode graphs); drop .onnx.")
        can_generate = getattr(model, "can_generate", None)
        if not (callable(can_generate) and can_generate()) or model.config.is_encoder_decoder:
            raise ValueError(f"generation=True needs a causal LM; {type(model).__name__} does not generate.")
    elif path.suffix != ".onnx":
        raise ValueError(f"{path}: an ONNX file name must end in .onnx (or pass generation=True for a directory).")
    names = list(input_names) if input_names is not None else default_input_names(model)
    if "input_ids" not in names:
        raise ValueError(f"input_names={names} lacks input_ids.")
    tolerance = atol if atol is not None else (None if quantize else 1e-4)  # generation: see _check_generation
    was_training = model.training
    model.eval()  # dropout off while tracing (the exporter traces the model as it finds it)
    exporter = _exporter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp_dir:
            staging = Path(tmp_dir) / path.name
            if generation:
                result = _export_generation(model, staging, exporter, quantize, opset, ort_fusions)
            else:
                result = _export_single(model, staging, exporter, names, quantize, opset, ort_fusions)
            if check:
                model.eval()
                if generation:
                    largest_logit = _check_generation(model, staging, result, check_tokens)
                    if atol is None and not quantize:
                        tolerance = GENERATION_RTOL * max(largest_logit, 1.0)
                else:
                    other = example_inputs(model, names, batch=3, length=13, seed=1)  # other shapes than the trace
                    got, expected = onnx_outputs(staging, model, other, result.output_name)
                    result.max_abs_diff = float(abs(got - expected).max())
                    if result.output_name != "last_hidden_state":
                        result.top1_agreement = _top1(got, expected)
                diff = result.max_abs_diff
                shape = "greedy generation" if generation else "batch 3 x length 13"
                if not math.isfinite(diff):
                    raise AssertionError(f"ONNX Runtime output is not finite on {shape}; {path} was not written.")
                if tolerance is not None and not diff <= tolerance:
                    raise AssertionError(
                        f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> atol={tolerance}) "
                        f"on {shape}; {path} was not written."
                    )
            _move_export(Path(tmp_dir), path)
    finally:
        model.train(was_training)
    result.path = path
    return result


def _export_single(
    model: nn.Module,
    staging: Path,
    exporter: Any,
    names: list[str],
    quantize: str | None,
    opset: int | None,
    ort_fusions: str | None,
) -> OnnxExport:
    import onnx_ir

    traced = example_inputs(model, names, batch=2, length=8)
    output_name = _main_output(model, traced)
    config = _onnx_config(model, names, opset, ort_fusions)
    program = exporter.export(model, {**traced, **_use_cache(model)}, config).program
    if quantize == "int8":
        program = quantize_int8(program)
    weights = sum(v.const_value.nbytes for v in program.graph.initializers.values() if v.const_value is not None)
    external = f"{staging.name}.data" if weights > _INLINE_WEIGHTS_LIMIT else ""
    onnx_ir.save(program, str(staging), external_data=external or None)
    graph_inputs = _check_axes(staging)
    return OnnxExport(staging, graph_inputs, output_name, None, ["model"], quantize)


def _export_generation(
    model: nn.Module,
    staging: Path,
    exporter: Any,
    quantize: str | None,
    opset: int | None,
    ort_fusions: str | None,
) -> OnnxExport:
    """The exporter's prefill / decode decomposition, traced from ``generate()`` on a left-padded batch of two prompts
    (so the batch axis and the attention mask stay in the graphs)."""
    prompts = _example_prompts(model, batch=2, length=7, seed=0)
    config = _onnx_config(model, None, opset, ort_fusions)
    # The model's generation config travels with the export: OnnxGenerator reads its end-of-sequence and pad tokens.
    # It is traced with the KV cache whatever it says: a model that went through a Trainer can carry use_cache=False,
    # and generate() would then feed the decode step the whole sequence, which OnnxGenerator does not.
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.use_cache = True
    # The directory's config.json names the stock model type: the graphs hold the compact shapes, and transformers'
    # loader of the exported model (ExportedModel) knows only stock configs.
    with _stock_config_class(model):
        exported = exporter.export_for_generation(model, prompts, config, generation_config=generation_config)
        if quantize == "int8":
            for component in exported.components.values():
                component.program = quantize_int8(component.program)
        exported.save_pretrained(staging)
    return OnnxExport(staging, ["input_ids", "attention_mask"], "logits", None, list(exported.components), quantize)


@contextlib.contextmanager
def _stock_config_class(model: nn.Module) -> Iterator[None]:
    """While exporting, ``model.config`` is of its stock class: a compact model's config otherwise writes
    ``model_type: hf_l0_<type>`` (see :func:`hf_l0.hub.own_methods.compact_config_class`)."""
    config = model.config
    stock = type(stock_config(config))
    original = type(config)
    config.__class__ = stock
    try:
        yield
    finally:
        config.__class__ = original


def _example_prompts(model: nn.Module, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Token ids with left padding on every row but the first (how a batch of prompts is fed to ``generate()``)."""
    generator = torch.Generator().manual_seed(seed)
    special = {getattr(model.config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    low = 1 + max((s for s in special if isinstance(s, int)), default=-1)  # no special token in the prompts
    input_ids = torch.randint(low, model.config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch):
        pad = min(row * 2, length - 1)
        attention_mask[row, :pad] = 0
        pad_id = model.generation_config.pad_token_id
        input_ids[row, :pad] = pad_id if isinstance(pad_id, int) else 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class OnnxGenerator:
    """Greedy generation in ONNX Runtime with the ``prefill`` and ``decode`` graphs of ``export_onnx(...,
    generation=True)``: the prompt runs once through ``prefill``, then one token per ``decode`` call, the KV cache
    passed from each call to the next (no recomputation of the sequence). Stops like ``generate()``: at
    ``max_new_tokens``, or once every row has produced an end-of-sequence token (finished rows are padded)."""

    def __init__(self, directory: str | os.PathLike, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
            from transformers.exporters import ExportedModel
        except ImportError as error:
            raise ImportError(
                f"ONNX generation needs onnxruntime and transformers.exporters ({error}): {INSTALL_HINT}"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.exported = ExportedModel.from_pretrained(str(directory), device="cpu", session_options=options)
        missing = {"prefill", "decode"} - set(self.exported.components)
        if missing:
            raise ValueError(f"{directory} lacks the {sorted(missing)} graph(s): export with generation=True.")
        self.config = self.exported.config
        generation_config = self.exported.generation_config
        eos = getattr(generation_config or self.config, "eos_token_id", None)
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        pad = getattr(generation_config or self.config, "pad_token_id", None)
        self.pad_token_id = pad if isinstance(pad, int) else (self.eos_token_ids[0] if self.eos_token_ids else 0)

    def _empty_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.config.get_text_config(decoder=True))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        return_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The prompt followed by up to ``max_new_tokens`` greedy tokens (``[batch, prompt + new]``, as
        ``generate()`` returns); with ``return_logits``, also the logits each token was chosen from
        (``[batch, new, vocab]``). Left-pad prompts of different lengths (``attention_mask`` 0 on the padding)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.long()
        runners = self.exported.runners
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = runners["prefill"](
            input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=self._empty_cache()
        )
        sequences, steps = input_ids, []
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool)
        eos = torch.tensor(self.eos_token_ids, dtype=input_ids.dtype)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            steps.append(logits)
            token = logits.argmax(-1)
            token = torch.where(unfinished, token, torch.full_like(token, self.pad_token_id))
            sequences = torch.cat([sequences, token[:, None]], -1)
            unfinished &= ~torch.isin(token, eos)
            if not unfinished.any() or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
            positions = mask.sum(-1, keepdim=True) - 1
            out = runners["decode"](
                input_ids=token[:, None], attention_mask=mask, position_ids=positions, cache=out.cache
            )
        logits = torch.stack(steps, 1) if steps else torch.empty(input_ids.shape[0], 0, self.config.vocab_size)
        return (sequences, logits) if return_logits else sequences


def _pytorch_steps(model: nn.Module, prompts: dict[str, torch.Tensor], sequences: torch.Tensor) -> torch.Tensor:
    """The logits PyTorch chooses each new token of ``sequences`` from, computed the way the ONNX graphs compute them:
    the prompt once, then one token per step with the KV cache (``[batch, new, vocab]``)."""
    mask = prompts["attention_mask"].long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(**prompts, position_ids=positions, use_cache=True)
    steps = [out.logits[:, -1]]
    for token in sequences[:, prompts["input_ids"].shape[1] : -1].T:
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
        positions = mask.sum(-1, keepdim=True) - 1
        out = model(
            input_ids=token[:, None], attention_mask=mask, position_ids=positions, cache=out.cache, use_cache=True
        )
        steps.append(out.logits[:, -1])
    return torch.stack(steps, 1).float()


def _check_generation(model: nn.Module, directory: Path, result: OnnxExport, new_tokens: int) -> float:
    """Greedy generation in ONNX Runtime on prompts other than the traced ones (three rows, two left-padded) against
    ``model.generate()``: the tokens (required equal in fp32), and the logits of every step against PyTorch's on the
    same tokens (recorded in ``result``). Returns the largest |logit|, which scales the default tolerance."""
    prompts = _example_prompts(model, batch=3, length=9, seed=1)
    sequences, logits = OnnxGenerator(directory).generate(**prompts, max_new_tokens=new_tokens, return_logits=True)
    reference = _pytorch_steps(model, prompts, sequences)
    result.max_abs_diff = float((logits - reference).abs().max())
    result.top1_agreement = _top1(logits, reference)
    expected = model.generate(**prompts, max_new_tokens=new_tokens, do_sample=False, use_cache=True)
    if result.quantize is None and not torch.equal(sequences, expected):
        prompt = prompts["input_ids"].shape[1]
        raise AssertionError(
            f"greedy tokens in ONNX Runtime {sequences[:, prompt:].tolist()} differ from generate()'s "
            f"{expected[:, prompt:].tolist()}; {directory.name} was not written."
        )
    return float(reference.abs().max())


def _move_export(tmp_dir: Path, path: Path) -> None:
    """Move the staged export into place: a directory replaces any old one; for a file, the files beside it first
    (external data, named in the graph) and the graph last, so a complete path means a complete export."""
    staged = tmp_dir / path.name
    if staged.is_dir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(staged, path)
        return
    for name in sorted(os.listdir(tmp_dir)):
        if name != path.name:
            os.replace(tmp_dir / name, path.parent / name)
    os.replace(staged, path)


def _check_axes(path: Path) -> list[str]:
    """The graph's input names; fails when the exporter fixed the batch or sequence axis of an input (the file would
    reject other shapes)."""
    try:
        import onnx
    except ImportError:
        raise ImportError(f"exporting to ONNX needs the onnx package: {INSTALL_HINT}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        fixed = [i for i, d in enumerate(dims[:2]) if not d.dim_param]
        if fixed:
            raise AssertionError(
                f"the exported input {value.name!r} has fixed axes {fixed}; expected dynamic batch and sequence axes."
            )
    return [value.name for value in graph.input]
