"""Validation and encoding of ids, vectors and metadata: pure functions, no I/O.

Every public write or query passes its arguments through here before anything is sent to Redis, so a rejected
call has changed nothing. Vectors are stored as raw little-endian bytes of the space's dtype.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import DimensionMismatch, InvalidInput

__all__ = [
    "METRICS",
    "MAX_NEIGHBOURS",
    "MAX_N_RESULTS",
    "DTYPES",
    "MAX_ID_BYTES",
    "MAX_METADATA_BYTES",
    "check_ids",
    "check_matrix",
    "check_metadatas",
    "check_n_results",
    "check_space_params",
    "encode_vectors",
    "decode_vectors",
    "normalise",
    "partition_digest",
]

METRICS = ("cosine", "l2", "ip")
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
MAX_ID_BYTES = 512
MAX_METADATA_BYTES = 64 * 1024
MAX_DIM = 65536
MAX_NEIGHBOURS = 100  # precomputed neighbours per item (a space option; 0 = none)
log = logging.getLogger("embcache.data")
MAX_METADATA_DEPTH = 32  # nesting of dicts and lists in one item's metadata
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 control characters: never in an id


def check_ids(ids: object, *, allow_duplicates: bool = False) -> list[str]:
    """Return ``ids`` as a list of str; a single str is one id.

    Ids are non-empty strings of at most 512 UTF-8 bytes; a batch is non-empty and, unless
    ``allow_duplicates``, has no id twice.
    """
    if isinstance(ids, str):
        ids = [ids]
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise InvalidInput(f"ids must be a list of strings, got {type(ids).__name__}")
    if not ids:
        raise InvalidInput("ids is empty")
    out: list[str] = []
    for i, item in enumerate(ids):
        if not isinstance(item, str):
            raise InvalidInput(f"ids[{i}] must be a str, got {type(item).__name__}")
        if not item:
            raise InvalidInput(f"ids[{i}] is an empty string")
        try:
            size = len(item.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"ids[{i}] is not valid Unicode: {exc}") from None
        if not item.isprintable() and _CONTROL.search(item):
            bad = _CONTROL.search(item).group()  # type: ignore[union-attr]
            raise InvalidInput(f"ids[{i}] contains the control character {bad!r}: ids are printable text "
                               "(no NUL, newline, tab or other C0/C1 control characters)")
        if size > MAX_ID_BYTES:
            raise InvalidInput(f"ids[{i}] is {size} bytes long; the limit is {MAX_ID_BYTES}")
        out.append(item)
    if not allow_duplicates and len(set(out)) != len(out):
        seen: set[str] = set()
        dup = next(x for x in out if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise InvalidInput(f"id {dup!r} appears more than once in the batch")
    return out


def check_matrix(data: object, dim: int, *, what: str = "embeddings", allow_1d: bool = False) -> np.ndarray:
    """Return ``data`` as a C-contiguous float32 matrix of shape ``(n, dim)``, n >= 1.

    Rejects non-numeric data, wrong shapes or dimensions, empty batches, and NaN/inf values.
    ``allow_1d`` accepts a single vector of shape ``(dim,)`` as one row.
    """
    if (
        type(data) is np.ndarray and data.dtype == np.float32 and data.flags.c_contiguous
        and (data.ndim == 2 or (data.ndim == 1 and allow_1d)) and data.shape[-1] == dim and data.size
    ):  # the common case, kept cheap: it is on every query's path
        if not np.isfinite(data).all():
            bad = int(np.argwhere(~np.isfinite(data.reshape(-1, dim)))[0][0])
            raise InvalidInput(f"{what}[{bad}] contains NaN or infinity (or a value too large for float32)")
        return data.reshape(-1, dim)
    if isinstance(data, np.ndarray):
        arr = data
    else:
        if isinstance(data, (str, bytes)) or data is None:
            raise InvalidInput(f"{what} must be an array-like of numbers, got {type(data).__name__}")
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{what} is not a rectangular array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiu":  # numpy counts timedelta64 as an integer type: it is not a number here
        raise InvalidInput(f"{what} must be numeric (float or int), got dtype {arr.dtype}")
    if arr.ndim == 1 and allow_1d:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInput(f"{what} must be a 2-D array (n, {dim}), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidInput(f"{what} is empty")
    if arr.shape[1] != dim:
        raise DimensionMismatch(f"{what} have dimension {arr.shape[1]}, the space has dim={dim}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.argwhere(~np.isfinite(out))[0][0])
        raise InvalidInput(f"{what}[{bad}] contains NaN or infinity (or a value too large for float32)")
    return out


def normalise(mat: np.ndarray, *, what: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm (for the cosine metric); a zero row is an error."""
    # float64 sums and division (float32 squares overflow above ~1.8e19 and underflow below ~1e-23), computed in
    # buffered pieces straight into a float32 result: no float64 copy of the whole matrix
    norms = np.sqrt(np.einsum("ij,ij->i", mat, mat, dtype=np.float64))[:, None]
    if (norms == 0).any():
        bad = int(np.argwhere(norms[:, 0] == 0)[0][0])
        raise InvalidInput(f"{what}[{bad}] is a zero vector, which has no cosine direction")
    out = np.empty(mat.shape, dtype=np.float32)
    np.divide(mat, norms, out=out, casting="same_kind")
    return out


def encode_vectors(mat: np.ndarray, dtype: str) -> list[bytes]:
    """One little-endian bytes string per row, in the space's dtype.

    float16 spaces reject values beyond float16's range rather than storing infinity.
    """
    with np.errstate(over="ignore"):  # values beyond float16 become inf and are reported just below
        arr = np.ascontiguousarray(mat, dtype=DTYPES[dtype])
    if dtype == "float16" and not np.isfinite(arr).all():
        raise InvalidInput("embeddings contain values beyond float16's range (|x| > 65504)")
    width = arr.shape[1] * arr.dtype.itemsize
    raw = arr.tobytes()
    return [raw[i : i + width] for i in range(0, len(raw), width)]


def decode_vectors(blobs: Sequence[bytes], dim: int, dtype: str) -> np.ndarray:
    """Inverse of :func:`encode_vectors`: a float32 matrix ``(len(blobs), dim)``."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    arr = np.frombuffer(b"".join(blobs), dtype=DTYPES[dtype])
    return arr.reshape(len(blobs), dim).astype(np.float32)


def decode_stored(blobs: Sequence[bytes | None], dim: int, dtype: str, where: str = "") -> tuple[np.ndarray, list[int]]:
    """Vectors read back from Redis, which anyone allowed to write the partition may have written: a row that is
    not ``dim`` values of the space's dtype is left out and logged, never raised. Returns the matrix of the good
    rows and the indices of the bad ones (None entries count as bad)."""
    width = dim * DTYPES[dtype].itemsize
    bad = [i for i, b in enumerate(blobs) if not isinstance(b, bytes) or len(b) != width]
    if not bad:
        return decode_vectors(blobs, dim, dtype), []  # type: ignore[arg-type]
    _report(where, f"{len(bad)} stored vector(s) of the wrong size (want {width} bytes)")
    skip = set(bad)
    return decode_vectors([b for i, b in enumerate(blobs) if i not in skip], dim, dtype), bad  # type: ignore[misc]


def parse_stored_metadata(text: bytes | str | None, where: str = "") -> dict[str, Any] | None:
    """Metadata read back from Redis: JSON that does not parse into an object is logged and read as None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = ...
    if value is ... or not isinstance(value, dict):
        _report(where, "stored metadata that is not a JSON object")
        return None
    return value


_reported: dict[str, float] = {}


def _report(where: str, what: str) -> None:
    """Log corrupt stored data, once a minute per place and kind (a query loop must not flood the log)."""
    global corrupt_items
    corrupt_items += 1
    key = f"{where}:{what[:40]}"
    now = time.monotonic()
    if now - _reported.get(key, -1e9) > 60:
        _reported[key] = now
        log.warning("skipped corrupt data in %s: %s", where or "a partition", what)


corrupt_items = 0  # how many corrupt stored items readers skipped in this process (reported in the log too)


def check_metadatas(metadatas: object, n: int) -> list[str | None]:
    """Validate ``metadatas`` (None, or one JSON object or None per item) and return their JSON texts."""
    if metadatas is None:
        return [None] * n
    if isinstance(metadatas, dict):
        raise InvalidInput("metadatas must be a list with one dict (or None) per id, got a single dict")
    if not isinstance(metadatas, (list, tuple)):
        raise InvalidInput(f"metadatas must be a list of dicts, got {type(metadatas).__name__}")
    if len(metadatas) != n:
        raise InvalidInput(f"got {len(metadatas)} metadatas for {n} ids")
    out: list[str | None] = []
    for i, meta in enumerate(metadatas):
        if meta is None:
            out.append(None)
            continue
        if not isinstance(meta, dict):
            raise InvalidInput(f"metadatas[{i}] must be a dict or None, got {type(meta).__name__}")
        for key in meta:
            if not isinstance(key, str) or not key or key.startswith("$"):
                raise InvalidInput(f"metadatas[{i}] has an invalid key {key!r} (non-empty str not starting with $)")
        _check_json_value(meta, f"metadatas[{i}]")
        try:
            text = json.dumps(meta, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
            size = len(text.encode("utf-8"))  # a lone surrogate fails here
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidInput(f"metadatas[{i}] is not JSON-serialisable: {exc}") from None
        if size > MAX_METADATA_BYTES:
            raise InvalidInput(f"metadatas[{i}] is larger than {MAX_METADATA_BYTES} bytes as JSON")
        out.append(text)
    return out


def _check_json_value(value: object, where: str) -> None:
    """Metadata is JSON: dicts with str keys, lists (a tuple is stored as a list, and comes back as one), str,
    int, float, bool and None, nested at most ``MAX_METADATA_DEPTH`` deep. A key that is not a str is refused:
    JSON would turn it into one (``{1: x}`` would come back as ``{"1": x}``), and two keys could collide."""
    todo: list[tuple[object, int]] = [(value, 0)]
    while todo:  # iterative: a deep structure must not hit Python's recursion limit
        x, depth = todo.pop()
        if isinstance(x, dict):
            if depth >= MAX_METADATA_DEPTH:
                raise InvalidInput(f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep")
            for k, v in x.items():
                if not isinstance(k, str):
                    raise InvalidInput(f"{where} has a key {k!r} of type {type(k).__name__}: JSON keys are strings "
                                       "(it would come back as a str)")
                todo.append((v, depth + 1))
        elif isinstance(x, (list, tuple)):
            if depth >= MAX_METADATA_DEPTH:
                raise InvalidInput(f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep")
            todo.extend((v, depth + 1) for v in x)
        elif not (x is None or isinstance(x, (str, bool, int, float))):
            raise InvalidInput(f"{where} holds a {type(x).__name__}, which is not a JSON value")


MAX_N_RESULTS = 10_000  # results one query may ask for


def check_n_results(n_results: object) -> int:
    """``n_results`` as a positive int."""
    if isinstance(n_results, bool) or not isinstance(n_results, (int, np.integer)) or n_results < 1:
        raise InvalidInput(f"n_results must be a positive integer, got {n_results!r}")
    if n_results > MAX_N_RESULTS:
        raise InvalidInput(f"n_results={n_results} is above the limit of {MAX_N_RESULTS}")
    return int(n_results)


def check_space_params(
    dim: object, metric: object, dtype: object, M: object, ef_construction: object, ef: object,
    neighbours: object = 0,
) -> dict[str, Any]:
    """Validated parameters of a new space. ``neighbours`` (0 = off, at most :data:`MAX_NEIGHBOURS`) is how many
    precomputed neighbours the workers store per item (see :mod:`embcache.core.snapshot`)."""

    def positive_int(name: str, value: object, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise InvalidInput(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        return int(value)

    if not isinstance(metric, str) or metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return {
        "dim": positive_int("dim", dim, 1, MAX_DIM),
        "metric": metric,
        "dtype": dtype,
        "M": positive_int("M", M, 2, 128),
        "ef_construction": positive_int("ef_construction", ef_construction, 1, 10_000),
        "ef": positive_int("ef", ef, 1, 10_000),
        "neighbours": positive_int("neighbours", neighbours, 0, MAX_NEIGHBOURS),
    }


def parse_json_objects(texts: Iterable[bytes | str | None]) -> list[dict[str, Any] | None]:
    """Metadata JSON texts (None for absent) back into dicts."""
    return [None if t is None else json.loads(t) for t in texts]


def partition_digest(ids: Sequence[str], vectors: Sequence[bytes], metadatas: Sequence[bytes | str | None]) -> str:
    """SHA-256 of a partition's items as stored (ids in sorted order, each with its vector bytes and metadata
    text, every part length-prefixed): equal for equal contents, whatever order they were read in."""
    h = hashlib.sha256()
    for i in sorted(range(len(ids)), key=lambda j: ids[j].encode("utf-8", "surrogatepass")):
        id_ = ids[i].encode("utf-8", "surrogatepass")
        meta = metadatas[i]
        meta_b = b"" if meta is None else meta.encode() if isinstance(meta, str) else meta
        h.update(len(id_).to_bytes(4, "little") + id_ + len(vectors[i]).to_bytes(4, "little") + vectors[i])
        h.update(b"\xff" * 4 if meta is None else len(meta_b).to_bytes(4, "little") + meta_b)
    return h.hexdigest()
