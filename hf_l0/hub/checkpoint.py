"""Checks of a saved directory's safetensors weights (complete files, an index that agrees with its shards, shard
paths inside the directory) and the one routine that compares them with a model: names, shapes and dtypes.

Part of the portable set (:data:`hf_l0.hub.remote_code.PORTABLE_MODULES`): remote-code directories hold a copy,
whose classes (:mod:`hf_l0.hub.remote`) run the same checks and report mismatches the same way as
:func:`hf_l0.from_pretrained`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import torch

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
UNSAFE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
# safetensors dtype names -> bytes per element.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
TORCH_TO_SAFETENSORS = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}


def read_safetensors_header(path: str) -> dict:
    """The header of a safetensors file, after checking that every entry is well formed (a known dtype, a shape of
    non-negative ints, offsets that hold exactly shape x dtype bytes) and lies inside the file.

    Raises a ValueError naming the file (and the first tensor that does not fit) for a truncated or corrupt file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header).")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise ValueError(
                f"{path}: truncated safetensors file: header of {header_len} bytes but the file has {size} bytes."
            )
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            raise ValueError(f"{path}: corrupt safetensors header ({err}).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (a {type(header).__name__}, not an object).")
    data = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if (
            dtype not in DTYPE_SIZES
            or not isinstance(shape, list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
        ):
            raise ValueError(
                f"{path}: corrupt safetensors header: tensor {name!r} has entry {info!r} (expected "
                "a known dtype, a shape of non-negative ints and two data offsets)."
            )
        begin, end = offsets
        if not 0 <= begin <= end or end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(
                f"{path}: corrupt safetensors header: tensor {name!r} ({dtype}, shape {shape}) has "
                f"data offsets {offsets}, which do not hold its bytes."
            )
        if end > data:
            raise ValueError(
                f"{path}: truncated safetensors file: tensor {name!r} (shape {shape}) needs "
                f"bytes {begin}..{end} of the data section but only {data} are present."
            )
    return header


def _allowed_roots(directory: str) -> list[str]:
    root = os.path.realpath(directory)
    roots = [root]
    # A Hub cache snapshot links its files to the repository's blobs (snapshots/<rev>/file -> ../../blobs/<hash>).
    parent = os.path.dirname(root)
    if os.path.basename(parent) == "snapshots":
        roots.append(os.path.join(os.path.dirname(parent), "blobs"))
    return roots


def confined_path(directory: str, name: Any, source: str) -> str:
    """``directory/name`` after checking that ``name`` (a file name from ``source``, e.g. an index) stays inside
    the directory: no absolute path, no ``..``, no symbolic link that leads out."""
    if (
        not isinstance(name, str)
        or not name
        or os.path.isabs(name)
        or name.startswith(("/", "\\"))
        or ".." in name.replace("\\", "/").split("/")
    ):
        raise ValueError(
            f"{source} names weights file {name!r}, which is outside {directory}: shard names must be "
            "plain relative paths inside the model directory."
        )
    path = os.path.join(directory, name)
    real = os.path.realpath(path)
    if not any(real == root or real.startswith(root + os.sep) for root in _allowed_roots(directory)):
        raise ValueError(f"{path} (from {source}) is a symbolic link to {real}, outside {directory}: refused.")
    return path


def checkpoint_files(directory: str) -> dict[str, list[str]]:
    """``{file path: [tensor names]}`` of a directory's safetensors weights (single file or sharded with an index),
    verified: every file is inside the directory, exists and is complete, and a sharded index agrees with the
    shards' contents. ``model.safetensors`` wins over an index next to it, as in transformers' loader (both read
    the same weights)."""
    single = os.path.join(directory, SAFE_WEIGHTS_NAME)
    index = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        confined_path(directory, SAFE_WEIGHTS_NAME, directory)
        return {single: sorted(set(read_safetensors_header(single)) - {"__metadata__"})}
    if os.path.isfile(index):
        confined_path(directory, SAFE_WEIGHTS_INDEX_NAME, directory)
        try:
            with open(index) as f:
                data = json.load(f)
        except ValueError as err:
            raise ValueError(f"{index}: not valid JSON ({err}).") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map.")
        files: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            files.setdefault(confined_path(directory, shard, f"{index} (tensor {tensor!r})"), []).append(tensor)
        for path, names in files.items():
            if not os.path.isfile(path):
                raise ValueError(f"{index} lists tensor {names[0]!r} in {path}, which is missing.")
            stored = set(read_safetensors_header(path)) - {"__metadata__"}
            absent = sorted(set(names) - stored)
            if absent:
                raise ValueError(f"{index} lists tensor {absent[0]!r} in {path}, which does not contain it.")
            extra = sorted(stored - set(names))
            if extra:
                raise ValueError(f"{path} holds tensor {extra[0]!r}, which {index} does not list.")
        return files
    unsafe = [name for name in UNSAFE_WEIGHTS if os.path.isfile(os.path.join(directory, name))]
    detail = f" (found {', '.join(unsafe)}: pickled weights are never loaded)" if unsafe else ""
    raise FileNotFoundError(f"{directory} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}{detail}.")


def saved_dtype(directory: str) -> str | None:
    """The safetensors dtype name (``F32``, ``BF16``, ...) of the floating-point weights that ``config.json``
    declares (``dtype`` or ``torch_dtype``), or None when it declares none."""
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    value = data.get("dtype", data.get("torch_dtype")) if isinstance(data, dict) else None
    if value is None or value == "auto":
        return None
    dtype = getattr(torch, value, None) if isinstance(value, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype not in TORCH_TO_SAFETENSORS:
        raise ValueError(f"{path}: dtype {value!r} is not a floating-point torch dtype (e.g. 'float32').")
    return TORCH_TO_SAFETENSORS[dtype]


def _tied_groups(model: Any) -> list[set[str]]:
    by_id: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), set()).add(name)
    return [names for names in by_id.values() if len(names) > 1]


def check_weights(model: Any, directory: str, files: dict[str, list[str]] | None = None) -> dict[str, tuple[str, str]]:
    """Compare a directory's weights with ``model`` (any device, meta included) without reading any tensor data:
    every tensor of the model present once (tied parameters count as one), no unexpected tensor, every shape equal,
    and every dtype the one ``config.json`` declares for floating-point weights (a model's integer buffers keep
    their own dtype). Nothing is ever cast silently.

    Returns ``{model key: (file path, tensor name in the file)}``. Raises one ValueError that names the file and
    tensor of every problem (the first 20). A base model (``AutoModel``) read from a task model's checkpoint drops
    the ``base_model_prefix`` and ignores the head's tensors.
    """
    files = checkpoint_files(directory) if files is None else files
    headers = {path: read_safetensors_header(path) for path in files}
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")
    all_names = [name for names in files.values() for name in names]
    strip = (
        bool(prefix)
        and not any(k.startswith(prefix + ".") for k in expected)
        and any(k.startswith(prefix + ".") for k in all_names)
    )
    float_dtype = saved_dtype(directory)
    config_file = os.path.join(directory, "config.json")
    found: dict[str, tuple[str, str]] = {}
    problems = []
    for path, names in files.items():
        for name in names:
            key = name
            if strip:
                if not name.startswith(prefix + "."):
                    continue
                key = name[len(prefix) + 1 :]
            info = headers[path][name]
            found[key] = (path, name)
            if key not in expected:
                problems.append(f"unexpected tensor {name!r} in {path}")
                continue
            want = expected[key]
            if tuple(info["shape"]) != tuple(want.shape):
                problems.append(
                    f"tensor {name!r} in {path} has shape {tuple(info['shape'])} but {config_file} "
                    f"(sizes and l0_structure) builds {tuple(want.shape)}"
                )
            if want.is_floating_point():
                if float_dtype is not None and info["dtype"] != float_dtype:
                    problems.append(
                        f"tensor {name!r} in {path} has dtype {info['dtype']} but {config_file} declares "
                        f"{float_dtype} (re-save the model in one dtype; hf-l0 never casts silently)"
                    )
                elif float_dtype is None and info["dtype"] not in ("F32", "F16", "BF16", "F64"):
                    problems.append(
                        f"tensor {name!r} in {path} has dtype {info['dtype']} but the model holds "
                        "floating-point weights there (hf-l0 never casts silently)"
                    )
            elif info["dtype"] != TORCH_TO_SAFETENSORS.get(want.dtype):
                problems.append(
                    f"tensor {name!r} in {path} has dtype {info['dtype']} but the model's buffer is {want.dtype}"
                )
    covered = set(found)
    for group in _tied_groups(model):
        if group & covered:
            covered |= group
    where = sorted(files)[0] if len(files) == 1 else directory
    problems += [f"missing tensor {key!r} (expected in {where})" for key in expected if key not in covered]
    raise_on_mismatch(directory, config_file, problems)
    return found


def loading_info_problems(info: dict[str, Any]) -> list[str]:
    """The problems in transformers' ``output_loading_info`` (missing and mis-shaped tensors), worded as
    :func:`check_weights` words them: for weights transformers read from its Hub cache, where the files are not at
    hand."""
    problems = [f"missing tensor {key!r}" for key in sorted(info.get("missing_keys", ()))]
    problems += [
        f"tensor {key!r} has shape {tuple(saved)} but the model builds {tuple(built)}"
        for key, saved, built in sorted(info.get("mismatched_keys", ()))
    ]
    return problems


def raise_on_mismatch(where: str, config_file: str, problems: list[str]) -> None:
    """The one report of weights that do not match a model: a ValueError naming ``where``, the ``config_file``
    that built the model and every problem (the first 20); nothing when ``problems`` is empty."""
    if problems:
        raise ValueError(
            f"{where}: the weights do not match {config_file}: "
            + "; ".join(problems[:20])
            + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        )
