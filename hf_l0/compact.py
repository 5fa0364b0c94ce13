"""Checks of a saved directory's safetensors weights (complete files, an index that agrees with its shards).

Imports only the standard library: ``hf_l0.save_pretrained`` copies it into remote-code directories, whose classes
(:mod:`hf_l0.remote`) run the same checks before loading.
"""

from __future__ import annotations

import json
import os
import struct

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
UNSAFE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def read_safetensors_header(path: str) -> dict:
    """The header of a safetensors file, after checking that every tensor's bytes lie inside the file.

    Raises a ValueError naming the file (and the first tensor that does not fit) for a truncated or corrupt file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header).")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise ValueError(f"{path}: truncated safetensors file: header of {header_len} bytes but the file has "
                             f"{size} bytes.")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            raise ValueError(f"{path}: corrupt safetensors header ({err}).") from None
    data = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > data:
            raise ValueError(f"{path}: truncated safetensors file: tensor {name!r} (shape {info['shape']}) needs "
                             f"bytes {begin}..{end} of the data section but only {data} are present.")
    return header


def checkpoint_files(directory: str) -> dict[str, list[str]]:
    """``{file path: [tensor names]}`` of a directory's safetensors weights (single file or sharded with an index),
    verified: every file exists and is complete, and a sharded index agrees with the shards' contents."""
    single = os.path.join(directory, SAFE_WEIGHTS_NAME)
    index = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map.")
        files: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            files.setdefault(os.path.join(directory, shard), []).append(tensor)
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
    if os.path.isfile(single):
        return {single: sorted(set(read_safetensors_header(single)) - {"__metadata__"})}
    unsafe = [name for name in UNSAFE_WEIGHTS if os.path.isfile(os.path.join(directory, name))]
    detail = f" (found {', '.join(unsafe)}: pickled weights are never loaded)" if unsafe else ""
    raise FileNotFoundError(f"{directory} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}{detail}.")
