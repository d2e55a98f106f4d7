"""Reading ``embcache import``'s source files into rows (not yet validated): ``.npy`` (+ ``--items``), ``.npz``,
``.jsonl``, ``.csv``, ``.parquet``; ``.jsonl`` and ``.csv`` may be gzipped (``.jsonl.gz``, ``.csv.gz``)."""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from .common import CliError

__all__ = ["ImportOptions", "MISSING", "Row", "Source", "load_query_vectors", "open_source"]

MISSING = object()  # a field the row does not have
_FORMATS = (".npy", ".npz", ".jsonl", ".csv", ".parquet")
_RECORD_FORMATS = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class ImportOptions:
    """``embcache import``'s options (see ``embcache import --help``)."""

    source: str | None = None
    vectors: str | None = None
    items: str | None = None
    id_field: str = "id"
    vector_field: str = "embedding"
    metadata_fields: list[str] | None = None
    partition: str | None = None
    partition_field: str | None = None
    version: str | None = None
    new_version: bool = False
    batch: int = 1000
    dry_run: bool = False
    rejects: str | None = None
    resume_from: int = 0


@dataclass
class Row:
    """One row of an import source, as read (not yet validated)."""

    row: int  # 0-based index in the source (data rows: a CSV's header and a JSONL's blank lines do not count)
    id: Any = MISSING
    vector: Any = MISSING
    metadata: Any = None
    partition: Any = None  # None: the import's partition
    error: tuple[str, str] | None = None  # (reason, detail) found while reading


@dataclass
class Source:
    description: str
    total: int
    rows: Iterator[Row]
    dim: int | None = None  # the width of a homogeneous array source (.npy, .npz)


def _suffix(path: str) -> str:
    """The format of ``path``: ``.jsonl``, ``.csv``... (``.ndjson`` is ``.jsonl``; a ``.gz`` after it is read
    through gzip)."""
    name = path.lower()
    name = name[:-3] if name.endswith(".gz") else name
    for ext in (".jsonl", ".ndjson", *_FORMATS):
        if name.endswith(ext):
            return {".ndjson": ".jsonl"}.get(ext, ext)
    return os.path.splitext(name)[1]


def _text(path: str, newline: str | None = None) -> IO[str]:
    # surrogateescape: bytes that are not UTF-8 reach the checks (and are rejected there), row by row
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline=newline)
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline=newline)  # the caller closes it


def _check_readable(path: str, fmt: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CliError(f"{path}: not a file")
    if path.lower().endswith(".gz") and fmt not in (".jsonl", ".csv"):
        raise CliError(f"{path}: only .jsonl and .csv files may be gzipped")


def load_query_vectors(path: str) -> np.ndarray:
    """The query vectors of ``embcache query --vectors``: one vector ``(dim,)`` or ``(rows, dim)``."""
    _check_readable(path, ".npy")
    return _load_array(path, "the query vectors", allow_1d=True)


def _load_array(path: str, what: str, *, allow_1d: bool = False) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CliError(f"{path}: not a readable .npy file ({exc})") from None
    if arr.ndim != 2 and not (allow_1d and arr.ndim == 1):
        raise CliError(f"{path}: {what} must be a 2-D array (rows, dim), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CliError(f"{path}: {what} must be numeric, got dtype {arr.dtype}")
    return arr


def _count_records(path: str, fmt: str) -> int:
    try:
        if fmt == ".jsonl":
            with _text(path) as f:
                return sum(1 for line in f if line.strip())
        if fmt == ".csv":
            with _text(path, newline="") as f:
                return max(0, sum(1 for cells in csv.reader(f) if cells) - 1)  # DictReader skips empty lines too
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise CliError(f"{path}: cannot be read ({exc})") from None
    return _parquet(path).metadata.num_rows


def _parquet(path: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError("reading Parquet needs pyarrow, which is not installed: "
                       "pip install 'embcache[parquet]' (or pip install pyarrow)") from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own kinds
        raise CliError(f"{path}: not a readable Parquet file ({exc})") from None


def _records(path: str, fmt: str) -> Iterator[dict[str, Any] | tuple[str, str]]:
    """The file's records as dicts, or ``(reason, detail)`` for one that cannot be read."""
    if fmt == ".jsonl":
        with _text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    yield ("unreadable row", f"line {n} is not JSON: {exc}")
                    continue
                yield rec if isinstance(rec, dict) else ("unreadable row", f"line {n} is not a JSON object")
    elif fmt == ".csv":
        with _text(path, newline="") as f:
            reader = csv.DictReader(f)
            for rec in reader:
                if None in rec:
                    yield ("unreadable row", f"line {reader.line_num} has more cells than the header")
                else:
                    yield {k: v for k, v in rec.items() if v is not None}
    else:
        for batch in _parquet(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()


def _split(rec: dict[str, Any], opts: ImportOptions, vector_field: str | None) -> Row:
    row = Row(row=-1, id=rec.get(opts.id_field, MISSING))
    if vector_field is not None:
        row.vector = rec.get(vector_field, MISSING)
    if opts.partition_field:
        row.partition = rec.get(opts.partition_field, MISSING)
    row.metadata = _metadata_of(rec, opts, exclude=(opts.id_field, vector_field, opts.partition_field))
    return row


def _metadata_of(rec: dict[str, Any], opts: ImportOptions, exclude: Sequence[str | None]) -> dict | None:
    if opts.metadata_fields is not None:
        meta = {k: rec[k] for k in opts.metadata_fields if k in rec}
    else:
        meta = {k: v for k, v in rec.items() if k not in exclude}
    return meta or None


def open_source(opts: ImportOptions) -> Source:
    """The rows of the import's source files; CliError for a missing, unreadable or inconsistent file."""
    if opts.source and opts.vectors:
        raise CliError("give the source file either as FILE or as --vectors FILE.npy, not both")
    if opts.vectors and _suffix(opts.vectors) != ".npy":
        raise CliError(f"--vectors {opts.vectors}: give a .npy file (a 2-D array); other formats go as FILE")
    path = opts.source or opts.vectors
    if not path:
        raise CliError("nothing to import: give FILE (.npz, .jsonl, .csv, .parquet) or --vectors FILE.npy "
                       "[--items FILE.jsonl|.csv|.parquet]")
    fmt = _suffix(path)
    if fmt not in _FORMATS:
        raise CliError(f"{path}: unknown format {fmt or '(no extension)'!r}: use .npy (with --items), .npz, "
                       ".jsonl, .csv or .parquet (.jsonl and .csv may be gzipped)")
    _check_readable(path, fmt)
    if opts.items and fmt != ".npy":
        raise CliError("--items goes with --vectors FILE.npy (the other formats carry their ids themselves)")
    if fmt == ".npy":
        return _npy_source(path, opts)
    if fmt == ".npz":
        return _npz_source(path, opts)
    total = _count_records(path, fmt)

    def rows() -> Iterator[Row]:
        for i, rec in enumerate(_records(path, fmt)):
            row = Row(i, error=rec) if isinstance(rec, tuple) else _split(rec, opts, opts.vector_field)
            row.row = i
            yield row

    return Source(path, total, rows())


def _npy_source(path: str, opts: ImportOptions) -> Source:
    """A ``.npy`` of vectors, with ids and metadata from ``--items`` (else the row numbers as ids)."""
    arr = _load_array(path, "the vectors")
    if not opts.items:
        if opts.partition_field or opts.metadata_fields is not None:
            raise CliError("--partition-field and --metadata-fields read fields of --items FILE: give one")
        return Source(path, arr.shape[0], (Row(i, str(i), arr[i]) for i in range(arr.shape[0])), arr.shape[1])
    items = opts.items
    ifmt = _suffix(items)
    if ifmt not in _RECORD_FORMATS:
        raise CliError(f"{items}: --items must be a .jsonl, .csv or .parquet file (.jsonl and .csv may be gzipped)")
    _check_readable(items, ifmt)
    n = _count_records(items, ifmt)
    if n != arr.shape[0]:
        raise CliError(f"{path} has {arr.shape[0]} vectors but {items} has {n} rows: they must match one to "
                       "one, in the same order")

    def rows() -> Iterator[Row]:
        for i, rec in enumerate(_records(items, ifmt)):
            row = Row(i, error=rec) if isinstance(rec, tuple) else _split(rec, opts, None)
            row.row, row.vector = i, arr[i]
            yield row

    return Source(f"{path} + {items}", n, rows(), arr.shape[1])


def _npz_source(path: str, opts: ImportOptions) -> Source:
    """A ``.npz`` with arrays ``ids`` and ``embeddings`` (and optionally ``metadatas``, JSON texts, and
    ``partitions``)."""
    try:
        z = np.load(path, allow_pickle=False)
        names = set(z.files)
    except (ValueError, OSError) as exc:
        raise CliError(f"{path}: not a readable .npz file ({exc})") from None
    missing = {"ids", "embeddings"} - names
    if missing:
        raise CliError(f"{path}: the .npz needs arrays 'ids' and 'embeddings' (and optionally 'metadatas', "
                       f"JSON texts, and 'partitions'); it lacks {', '.join(sorted(missing))} "
                       f"(it has {', '.join(sorted(names)) or 'nothing'})")
    try:
        ids, emb = z["ids"], z["embeddings"]
        metas = z["metadatas"] if "metadatas" in names else None
        parts = z["partitions"] if "partitions" in names else None
    except ValueError as exc:  # object arrays need pickle, which is never loaded
        raise CliError(f"{path}: {exc} (store strings as a unicode array, e.g. np.array(ids, dtype=str))") from None
    if emb.ndim != 2:
        raise CliError(f"{path}: 'embeddings' must be a 2-D array (rows, dim), got shape {emb.shape}")
    for name, a in (("ids", ids), ("metadatas", metas), ("partitions", parts)):
        if a is not None and a.shape != (emb.shape[0],):
            raise CliError(f"{path}: '{name}' has shape {a.shape}; it needs one entry per embedding "
                           f"({emb.shape[0]})")

    def rows() -> Iterator[Row]:
        for i in range(emb.shape[0]):
            row = Row(i, ids[i].item() if isinstance(ids[i], np.generic) else ids[i], emb[i])
            meta: Any = None
            if metas is not None:
                try:
                    meta = json.loads(str(metas[i]))
                except ValueError as exc:
                    row.error = ("bad metadata", f"metadatas[{i}] is not JSON: {exc}")
            if isinstance(meta, dict):
                if opts.partition_field:
                    row.partition = meta.get(opts.partition_field, MISSING)
                meta = _metadata_of(meta, opts, exclude=(opts.partition_field,))
            elif opts.partition_field:
                row.partition = MISSING
            row.metadata = meta
            if parts is not None and row.partition is None:
                row.partition = str(parts[i])
            yield row

    return Source(path, emb.shape[0], rows(), emb.shape[1])
