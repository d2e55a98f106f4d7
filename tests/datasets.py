"""Loaders for the real-data subsets shipped under ``tests/data/`` (no Redis, no pytest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MINILM_DIR", "MiniLMSubset", "load_minilm_subset", "unique_ids"]

MINILM_DIR = Path(__file__).resolve().parent / "data" / "minilm"


def unique_ids(names: list[str], rows: list[int]) -> list[str]:
    """Make ``names`` unique, deterministically: the first occurrence (in file order) keeps its name, each later
    one becomes ``f"{name}#{row}"`` with its row in the full data set (unique by construction).

    Package names repeat in debian-minilm (a package listed in more than one archive component); in the shipped
    subset this renames ``default-jdk-headless`` and ``default-jre-headless``'s second rows.
    """
    seen: set[str] = set()
    out: list[str] = []
    for name, row in zip(names, rows, strict=True):
        out.append(name if name not in seen else f"{name}#{row}")
        seen.add(name)
    if len(set(out)) != len(out):
        raise ValueError("ids are still not unique after renaming")
    return out


@dataclass(frozen=True)
class MiniLMSubset:
    """5,000 all-MiniLM-L6-v2 vectors of Debian package descriptions, and 100 held-out query vectors."""

    base: np.ndarray  # float32 (5000, 384), L2-normalised up to float16 rounding
    ids: list[str]  # package names, made unique by unique_ids()
    metadatas: list[dict[str, str]]  # {"section": ..., "short": ...}; section may be ""
    rows: np.ndarray  # int64 (5000,): row of each vector in the full base.f16.npy
    queries: np.ndarray  # float32 (100, 384)
    query_items: list[dict[str, object]]  # the query lines: row, package, section, short

    def exact_neighbours(self, k: int = 10, queries: np.ndarray | None = None) -> np.ndarray:
        """Brute-force cosine top-``k`` base indices (int64, (n_queries, k)), nearest first: ground truth."""
        q = self.queries if queries is None else np.asarray(queries, dtype=np.float32)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        bn = self.base / np.linalg.norm(self.base, axis=1, keepdims=True)
        sims = qn @ bn.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1).astype(np.int64)


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_minilm_subset(directory: str | Path = MINILM_DIR) -> MiniLMSubset:
    """Load ``tests/data/minilm`` (written by ``scripts/make_test_data.py``)."""
    d = Path(directory)
    base = np.load(d / "base.f16.npy").astype(np.float32)
    items = _read_jsonl(d / "items.jsonl")
    queries = np.load(d / "queries.npy").astype(np.float32)
    query_items = _read_jsonl(d / "queries.jsonl")
    if len(items) != base.shape[0] or len(query_items) != queries.shape[0]:
        raise ValueError(f"{d}: vectors and jsonl lines do not match")
    rows = [int(it["row"]) for it in items]  # type: ignore[call-overload]
    return MiniLMSubset(
        base=base,
        ids=unique_ids([str(it["package"]) for it in items], rows),
        metadatas=[{"section": str(it["section"]), "short": str(it["short"])} for it in items],
        rows=np.asarray(rows, dtype=np.int64),
        queries=queries,
        query_items=query_items,
    )
