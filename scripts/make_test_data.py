#!/usr/bin/env python3
"""Write the shipped real-data subset ``tests/data/minilm/`` from the full debian-minilm data set.

    python scripts/make_test_data.py [SOURCE_DIR]     # default: ../shared/data/debian-minilm (from the repo root)

Deterministic: the same source always gives byte-identical output files.
- ``base.f16.npy``  5,000 rows of the source ``base.f16.npy`` (float16), chosen with
  ``numpy.random.default_rng(0).choice(59000, 5000, replace=False)`` and sorted;
- ``items.jsonl``   the matching lines of ``items.jsonl.gz``, same order, with their original ``row``;
- ``queries.npy``   the first 100 rows of ``queries.npy`` (float32);
- ``queries.jsonl`` the matching lines of ``queries.jsonl.gz``;
- ``README.md``     provenance and licence.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_BASE = 5_000
N_QUERIES = 100
SEED = 0

README = """\
# debian-minilm subset (shipped test data)

Real sentence embeddings, made by `scripts/make_test_data.py` from the `debian-minilm` data set
(`../shared/data/debian-minilm`): the English descriptions (short + long) of Debian bookworm (main) packages,
embedded with all-MiniLM-L6-v2 (384 dimensions, mean pooling, L2-normalised).

| file | content |
|---|---|
| `base.f16.npy` | ({n_base}, 384) float16: rows of the full `base.f16.npy` ({n_full} rows) chosen with `numpy.random.default_rng({seed}).choice({n_full}, {n_base}, replace=False)`, sorted |
| `items.jsonl` | one line per base row, same order: `row` (the row in the full set), `package`, `section`, `short` |
| `queries.npy` | ({n_queries}, 384) float32: the first {n_queries} held-out query vectors (not in the full base) |
| `queries.jsonl` | the matching query lines: `row`, `package`, `section`, `short` |

Package names are not guaranteed unique (the full set has a few packages listed more than once);
`tests/conftest.py::minilm_subset` makes ids unique deterministically (see there).

Licence: each description is taken from its Debian package and keeps that package's licence; all are in
Debian main, so DFSG-free. The embeddings are derived from those texts.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(ROOT / ".." / "shared" / "data" / "debian-minilm"))
    parser.add_argument("--out", default=str(ROOT / "tests" / "data" / "minilm"))
    args = parser.parse_args(argv)
    src, out = Path(args.source).resolve(), Path(args.out)
    if not (src / "base.f16.npy").exists():
        print(f"error: {src}/base.f16.npy not found", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    base = np.load(src / "base.f16.npy", mmap_mode="r")
    n_full = base.shape[0]
    rows = np.sort(np.random.default_rng(SEED).choice(n_full, N_BASE, replace=False))
    np.save(out / "base.f16.npy", np.ascontiguousarray(base[rows], dtype=np.float16))

    wanted = set(rows.tolist())
    picked: dict[int, str] = {}
    with gzip.open(src / "items.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i in wanted:
                item = json.loads(line)
                assert item["row"] == i, (item, i)
                picked[i] = json.dumps(item, ensure_ascii=False)
    assert len(picked) == N_BASE
    (out / "items.jsonl").write_text("".join(picked[r] + "\n" for r in rows.tolist()), encoding="utf-8")

    queries = np.load(src / "queries.npy")[:N_QUERIES].astype(np.float32)
    np.save(out / "queries.npy", queries)
    with gzip.open(src / "queries.jsonl.gz", "rt", encoding="utf-8") as f:
        qlines = [json.dumps(json.loads(line), ensure_ascii=False) for _, line in zip(range(N_QUERIES), f)]
    assert len(qlines) == N_QUERIES
    (out / "queries.jsonl").write_text("".join(q + "\n" for q in qlines), encoding="utf-8")

    (out / "README.md").write_text(
        README.format(n_base=N_BASE, n_full=n_full, seed=SEED, n_queries=N_QUERIES), encoding="utf-8"
    )
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
