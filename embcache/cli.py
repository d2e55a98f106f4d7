"""The ``embcache`` command line.

Every command takes ``--url`` (or ``EMBCACHE_URL``; without either, the embedded server), ``--username`` and
``--password`` (or ``EMBCACHE_USERNAME``/``EMBCACHE_PASSWORD``), and ``--json`` for output that scripts read.
Exit codes: 0 success, 1 error (the message on stderr says what to do), 2 bad usage, 3 ``import`` rejected
some rows (the others were imported; the summary lists the reasons).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import numpy as np

from .core import codec
from .core.errors import DimensionMismatch, EmbcacheError, InvalidInput, NotFound
from .core.keys import check_name

__all__ = ["main"]

Command = Callable[[argparse.Namespace], Any]
_COMMANDS: dict[str, Command] = {}


def _hub(args: argparse.Namespace):  # noqa: ANN202
    from .client.hub import connect

    return connect(args.url, username=args.username, password=args.password)


def _out(args: argparse.Namespace, data: Any, table: Callable[[Any], str] | None = None) -> None:
    if args.json or table is None:
        print(json.dumps(_plain(data), indent=2, default=str))
    else:
        print(table(data))


def _plain(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return _plain(asdict(x))
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0].keys())
    cells = [[("" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


# server and workers ---------------------------------------------------------------------------------------
@command("redis")
def cmd_redis(args: argparse.Namespace) -> None:
    """Run the embedded redis-server in the foreground."""
    from .redis.server import RedisServer, embedded_home

    server = RedisServer(args.home or embedded_home(), port=args.port)
    print(f"embcache: redis-server for {server.directory} at {server.url} (Ctrl-C stops it)", file=sys.stderr)
    (server.directory / "url").write_text(server.url + "\n")
    os.execv(server.argv()[0], server.argv())


@command("worker")
def cmd_worker(args: argparse.Namespace) -> None:
    """Run an RQ worker on the embcache queue, with the dispatcher."""
    from .redis.dispatcher import run_worker  # the CLI is the one place that starts workers

    url = args.url or os.environ.get("EMBCACHE_URL")
    if url is None:
        from .redis.server import ensure_embedded

        url = ensure_embedded()
    if args.username:
        os.environ["EMBCACHE_USERNAME"] = args.username
    if args.password:
        os.environ["EMBCACHE_PASSWORD"] = args.password
    if args.metrics_port is not None:
        from .redis import metrics

        metrics.enable(port=args.metrics_port)
    run_worker(url, args.queue_url, burst=args.burst, simple=not args.fork, dispatch=not args.no_dispatch)


# spaces ---------------------------------------------------------------------------------------------------
@command("spaces")
def cmd_spaces(args: argparse.Namespace) -> None:
    """List spaces."""
    with _hub(args) as hub:
        rows = [hub.space(n).record.model_dump() for n in hub.spaces()]
    _out(args, rows, lambda r: format_table(r, ["name", "dim", "metric", "dtype", "M", "ef_construction", "ef"]))


@command("create-space")
def cmd_create_space(args: argparse.Namespace) -> None:
    """Create a space."""
    with _hub(args) as hub:
        sp = hub.create_space(args.name, args.dim, args.metric, dtype=args.dtype, M=args.M,
                              ef_construction=args.ef_construction, ef=args.ef)
        _out(args, sp.record.model_dump(), lambda r: f"created space {r['name']} (dim={r['dim']}, {r['metric']})")


@command("describe")
def cmd_describe(args: argparse.Namespace) -> None:
    """Show a space: parameters, versions, aliases."""
    with _hub(args) as hub:
        sp = hub.space(args.space)
        data = {**sp.record.model_dump(), "aliases": sp.aliases(),
                "versions": [{"name": v.name, "state": v.state, "count": v.count(), "partitions": len(v.partitions())}
                             for v in sp.versions()]}

    def table(d: dict[str, Any]) -> str:
        head = f"space {d['name']}: dim={d['dim']} metric={d['metric']} dtype={d['dtype']} M={d['M']} " \
               f"ef_construction={d['ef_construction']} ef={d['ef']}"
        aliases = ", ".join(f"{a} -> {v}" for a, v in d["aliases"].items()) or "(none)"
        return f"{head}\naliases: {aliases}\n{format_table(d['versions'])}"

    _out(args, data, table)


@command("drop-space")
def cmd_drop_space(args: argparse.Namespace) -> None:
    """Delete a space and everything in it."""
    if not args.yes:
        raise SystemExit("drop-space deletes all data of the space: add --yes to confirm")
    with _hub(args) as hub:
        hub.drop_space(args.space)
    _out(args, {"dropped": args.space}, lambda d: f"dropped space {d['dropped']}")


# versions and aliases -------------------------------------------------------------------------------------
@command("versions")
def cmd_versions(args: argparse.Namespace) -> None:
    """List the versions of a space."""
    with _hub(args) as hub:
        sp = hub.space(args.space)
        aliases = sp.aliases()
        rows = [{"name": v.name, "state": v.state, "aliases": ",".join(a for a, t in aliases.items() if t == v.name),
                 "count": v.count(), "description": v.description} for v in sp.versions()]
    _out(args, rows, format_table)


@command("create-version")
def cmd_create_version(args: argparse.Namespace) -> None:
    """Create a version."""
    with _hub(args) as hub:
        v = hub.space(args.space).create_version(args.name, description=args.description)
    _out(args, {"space": args.space, "version": v.name}, lambda d: f"created version {d['space']}/{d['version']}")


@command("alias")
def cmd_alias(args: argparse.Namespace) -> None:
    """Point an alias at a version (promote)."""
    with _hub(args) as hub:
        sp = hub.space(args.space)
        sp.set_alias(args.alias, args.version)
        data = sp.aliases()
    _out(args, data, lambda d: f"{args.alias} -> {d[args.alias]}")


@command("promote")
def cmd_promote(args: argparse.Namespace) -> None:
    """Make a version the one an alias (default: live) points at; `rollback` undoes it."""
    args.alias = args.to
    cmd_alias(args)


@command("rollback")
def cmd_rollback(args: argparse.Namespace) -> None:
    """Point an alias back at its previous target."""
    with _hub(args) as hub:
        v = hub.space(args.space).rollback(args.alias)
    _out(args, {"alias": args.alias, "version": v.name}, lambda d: f"{d['alias']} -> {d['version']} (rolled back)")


@command("seal")
def cmd_seal(args: argparse.Namespace) -> None:
    """Make a version read-only."""
    with _hub(args) as hub:
        hub.space(args.space).version(args.version).seal()
    _out(args, {"sealed": f"{args.space}/{args.version}"}, lambda d: f"sealed {d['sealed']}")


# build, stats, query --------------------------------------------------------------------------------------
@command("build")
def cmd_build(args: argparse.Namespace) -> None:
    """Ask the workers for snapshots and wait for them, with progress."""
    with _hub(args) as hub:
        sp = hub.space(args.space)
        v = sp.version(args.version) if args.version else sp.default_version()
        t0 = time.perf_counter()
        bar = _progress("build", unit="partition")
        v.build(timeout=args.timeout, on_progress=bar)
        bar.close()
        data = {"version": f"{args.space}/{v.name}", "seconds": round(time.perf_counter() - t0, 3),
                "partitions": len(v.partitions())}
    _out(args, data, lambda d: f"built {d['version']}: {d['partitions']} partition(s) in {d['seconds']}s")


@command("stats")
def cmd_stats(args: argparse.Namespace) -> None:
    """Per-partition counts, snapshot generation/age, tombstones, index lag, last build time."""
    with _hub(args) as hub:
        sp = hub.space(args.space)
        v = sp.version(args.version) if args.version else sp.default_version()
        rows = [asdict(s) for s in v.stats()]
    _out(args, rows, lambda r: f"{args.space}/{v.name}:\n{format_table(r)}")


@command("query")
def cmd_query(args: argparse.Namespace) -> None:
    """Nearest neighbours of stored ids (--id) or of vectors in a .npy file (--vectors)."""
    if bool(args.id) == bool(args.vectors):
        print("embcache query: give either --id ID [--id ID ...] or --vectors FILE.npy", file=sys.stderr)
        raise SystemExit(2)  # bad usage, like argparse's own errors
    try:
        where = json.loads(args.where) if args.where else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--where is not valid JSON ({exc}); e.g. --where '{{\"genre\": \"drama\"}}'") from None
    with _hub(args) as hub:
        sp = hub.space(args.space)
        v = sp.version(args.version) if args.version else sp.default_version()
        kw: dict[str, Any] = dict(n_results=args.n, where=where, consistency=args.consistency,
                                  partitions=args.partition or None, include=("distances", "metadatas"))
        t0 = time.perf_counter()
        if args.id:
            res = v.query_by_id(args.id, **kw)
            labels = args.id
        else:
            q = np.load(args.vectors)
            res = v.query(q, **kw)
            labels = [f"row {i}" for i in range(len(res.ids))]
        ms = (time.perf_counter() - t0) * 1000
    out = [{"query": lab, "results": [{"id": i, "distance": float(d), "metadata": m}
                                      for i, d, m in zip(ids, dist, metas)]}
           for lab, ids, dist, metas in zip(labels, res.ids, res.distances, res.metadatas or [])]

    def table(rows: list[dict[str, Any]]) -> str:
        parts = []
        for r in rows:
            parts.append(f"{r['query']}:")
            parts.append(format_table([{"id": x["id"], "distance": x["distance"],
                                        "metadata": json.dumps(x["metadata"])[:80] if x["metadata"] else ""}
                                       for x in r["results"]]))
        parts.append(f"({ms:.2f} ms, {args.consistency}, version {v.name})")
        return "\n".join(parts)

    _out(args, out, table)


# access control (operator) --------------------------------------------------------------------------------
def _warn_not_persisted(creds: Any) -> None:
    if not creds.persisted:
        print(f"embcache: warning: the server has no ACL file: principal {creds.username!r} exists only until the "
              "server restarts (start redis-server with --aclfile, as the embedded server is)", file=sys.stderr)


def _creds_text(action: str, d: dict[str, Any]) -> str:
    lines = [action, f"username: {d['username']}"]
    if d["password"] is None:
        lines.append("password: (unchanged: the principal already had one; use 'embcache rotate' for a new one)")
    else:
        lines += [f"password: {d['password']}", "(shown only this once: Redis keeps only its SHA-256 hash)"]
    return "\n".join(lines)


@command("grant")
def cmd_grant(args: argparse.Namespace) -> None:
    """Give a principal a role on a space (creates the principal; prints its password once)."""
    with _hub(args) as hub:
        creds = hub.grant(args.principal, space=args.space, role=args.role, partitions=args.partition)
    data = {"username": creds.username, "password": creds.password, "persisted": creds.persisted,
            "space": args.space, "role": args.role, "partitions": args.partition}
    scope = f" (partitions {', '.join(args.partition)})" if args.partition else ""
    _out(args, data, lambda d: _creds_text(f"granted {d['role']} on space {d['space']}{scope} to {d['username']}", d))
    _warn_not_persisted(creds)


@command("revoke")
def cmd_revoke(args: argparse.Namespace) -> None:
    """Remove a principal's grant on a space, or the principal itself (without --space)."""
    with _hub(args) as hub:
        hub.revoke(args.principal, space=args.space)
        deleted = args.space is None or args.principal not in hub.list_principals()  # its last grant went
    data = {"principal": args.principal, "space": args.space, "deleted": deleted}

    def text(d: dict[str, Any]) -> str:
        if d["space"] is None:
            return f"deleted principal {d['principal']}"
        tail = " (its last grant: principal deleted)" if d["deleted"] else ""
        return f"revoked {d['principal']}'s grant on space {d['space']}{tail}"

    _out(args, data, text)


@command("principals")
def cmd_principals(args: argparse.Namespace) -> None:
    """List principals and their grants (never secrets)."""
    with _hub(args) as hub:
        data = hub.list_principals()
    rows: list[dict[str, Any]] = []
    for name, rec in data.items():
        kind = "worker" if rec["worker"] else "client"
        if not rec["grants"]:  # the worker: hub-wide, no per-space grants
            rows.append({"principal": name, "kind": kind, "space": "*" if rec["worker"] else "",
                         "role": "worker" if rec["worker"] else "", "partitions": ""})
        for space, g in sorted(rec["grants"].items()):
            rows.append({"principal": name, "kind": kind, "space": space, "role": g["role"],
                         "partitions": ",".join(g["partitions"]) if g["partitions"] else "*"})
    _out(args, data, lambda _: format_table(rows, ["principal", "kind", "space", "role", "partitions"]))


@command("rotate")
def cmd_rotate(args: argparse.Namespace) -> None:
    """Give a principal a new password (the old one stops working at once, open connections included); prints it once."""
    with _hub(args) as hub:
        creds = hub.rotate(args.principal)
    data = {"username": creds.username, "password": creds.password, "persisted": creds.persisted}
    _out(args, data, lambda d: _creds_text(f"new password for {d['username']}", d))
    _warn_not_persisted(creds)


@command("worker-principal")
def cmd_worker_principal(args: argparse.Namespace) -> None:
    """Create (or re-key) the principal workers connect with; prints its credentials once."""
    with _hub(args) as hub:
        creds = hub.create_worker_principal(args.name)
    data = {"username": creds.username, "password": creds.password, "persisted": creds.persisted}
    _out(args, data, lambda d: _creds_text(
        f"worker principal {d['username']} (run workers with EMBCACHE_USERNAME/EMBCACHE_PASSWORD and "
        "EMBCACHE_QUEUE_USERNAME/EMBCACHE_QUEUE_PASSWORD set to these)", d))
    _warn_not_persisted(creds)


# import and export ----------------------------------------------------------------------------------------
class CliError(Exception):
    """A problem with the command's files or options: ``embcache: <message>`` on stderr, exit code 1."""


EXIT_REJECTED = 3  # import: some rows were rejected (the others were imported); see the summary
_EXAMPLES = 5  # rejected rows shown in the summary
_MISSING = object()


@dataclass
class _Row:
    """One row of an import source, as read (not yet validated)."""

    row: int  # 0-based index in the source (data rows: a CSV's header and a JSONL's blank lines do not count)
    id: Any = _MISSING
    vector: Any = _MISSING
    metadata: Any = None
    partition: Any = None  # None: the import's partition
    error: tuple[str, str] | None = None  # (reason, detail) found while reading


@dataclass
class _Source:
    description: str
    total: int
    rows: Iterator[_Row]
    dim: int | None = None  # the width of a homogeneous array source (.npy, .npz)


def _suffix(path: str) -> str:
    name = path.lower()
    for ext in (".jsonl", ".ndjson", ".csv", ".parquet", ".npy", ".npz"):
        if name.endswith(ext):
            return {".ndjson": ".jsonl"}.get(ext, ext)
    return os.path.splitext(name)[1]


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CliError(f"{path}: not a file")


def _load_array(path: str, what: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CliError(f"{path}: not a readable .npy file ({exc})") from None
    if arr.ndim != 2:
        raise CliError(f"{path}: {what} must be a 2-D array (rows, dim), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CliError(f"{path}: {what} must be numeric, got dtype {arr.dtype}")
    return arr


def _count_records(path: str, fmt: str) -> int:
    if fmt == ".jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if fmt == ".csv":
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            return max(0, sum(1 for cells in csv.reader(f) if cells) - 1)  # DictReader skips empty lines too
    return _parquet(path).metadata.num_rows


def _parquet(path: str):  # noqa: ANN202
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
        # surrogateescape: bytes that are not UTF-8 reach the checks (and are rejected there), row by row
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
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
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            for rec in reader:
                if None in rec:
                    yield ("unreadable row", f"line {reader.line_num} has more cells than the header")
                else:
                    yield {k: v for k, v in rec.items() if v is not None}
    else:
        for batch in _parquet(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()


def _split(rec: dict[str, Any], args: argparse.Namespace, vector_field: str | None) -> _Row:
    row = _Row(row=-1, id=rec.get(args.id_field, _MISSING))
    if vector_field is not None:
        row.vector = rec.get(vector_field, _MISSING)
    if args.partition_field:
        row.partition = rec.get(args.partition_field, _MISSING)
    row.metadata = _metadata_of(rec, args, exclude=(args.id_field, vector_field, args.partition_field))
    return row


def _metadata_of(rec: dict[str, Any], args: argparse.Namespace, exclude: Sequence[str | None]) -> dict | None:
    if args.metadata_fields is not None:
        meta = {k: rec[k] for k in args.metadata_fields if k in rec}
    else:
        meta = {k: v for k, v in rec.items() if k not in exclude}
    return meta or None


def _open_source(args: argparse.Namespace) -> _Source:
    """The rows of the import's source files; CliError for a missing, unreadable or inconsistent file."""
    if args.source and args.vectors:
        raise CliError("give the source file either as FILE or as --vectors FILE.npy, not both")
    if args.vectors and _suffix(args.vectors) != ".npy":
        raise CliError(f"--vectors {args.vectors}: give a .npy file (a 2-D array); other formats go as FILE")
    path = args.source or args.vectors
    if not path:
        raise CliError("nothing to import: give FILE (.npz, .jsonl, .csv, .parquet) or --vectors FILE.npy "
                       "[--items FILE.jsonl|.csv|.parquet]")
    fmt = _suffix(path)
    if fmt not in (".npy", ".npz", ".jsonl", ".csv", ".parquet"):
        raise CliError(f"{path}: unknown format {fmt or '(no extension)'!r}: use .npy (with --items), .npz, "
                       ".jsonl, .csv or .parquet")
    _check_readable(path)
    if args.items and fmt != ".npy":
        raise CliError("--items goes with --vectors FILE.npy (the other formats carry their ids themselves)")

    if fmt == ".npy":
        arr = _load_array(path, "the vectors")
        if not args.items:
            if args.partition_field or args.metadata_fields is not None:
                raise CliError("--partition-field and --metadata-fields read fields of --items FILE: give one")
            return _Source(path, arr.shape[0], (_Row(i, str(i), arr[i]) for i in range(arr.shape[0])), arr.shape[1])
        items = args.items
        ifmt = _suffix(items)
        if ifmt not in (".jsonl", ".csv", ".parquet"):
            raise CliError(f"{items}: --items must be a .jsonl, .csv or .parquet file")
        _check_readable(items)
        n = _count_records(items, ifmt)
        if n != arr.shape[0]:
            raise CliError(f"{path} has {arr.shape[0]} vectors but {items} has {n} rows: they must match one to "
                           "one, in the same order")

        def rows_npy() -> Iterator[_Row]:
            for i, rec in enumerate(_records(items, ifmt)):
                row = _Row(i, error=rec) if isinstance(rec, tuple) else _split(rec, args, None)
                row.row, row.vector = i, arr[i]
                yield row

        return _Source(f"{path} + {items}", n, rows_npy(), arr.shape[1])

    if fmt == ".npz":
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

        def rows_npz() -> Iterator[_Row]:
            for i in range(emb.shape[0]):
                row = _Row(i, ids[i].item() if isinstance(ids[i], np.generic) else ids[i], emb[i])
                meta: Any = None
                if metas is not None:
                    try:
                        meta = json.loads(str(metas[i]))
                    except ValueError as exc:
                        row.error = ("bad metadata", f"metadatas[{i}] is not JSON: {exc}")
                if isinstance(meta, dict):
                    if args.partition_field:
                        row.partition = meta.get(args.partition_field, _MISSING)
                    meta = _metadata_of(meta, args, exclude=(args.partition_field,))
                elif args.partition_field:
                    row.partition = _MISSING
                row.metadata = meta
                if parts is not None and row.partition is None:
                    row.partition = str(parts[i])
                yield row

        return _Source(path, emb.shape[0], rows_npz(), emb.shape[1])

    total = _count_records(path, fmt)

    def rows_records() -> Iterator[_Row]:
        for i, rec in enumerate(_records(path, fmt)):
            row = _Row(i, error=rec) if isinstance(rec, tuple) else _split(rec, args, args.vector_field)
            row.row = i
            yield row

    return _Source(path, total, rows_records())


class _Validator:
    """Checks rows with :mod:`embcache.codec` (and the space's parameters); keeps the reasons of rejected ones."""

    def __init__(self, space: Any, default_partition: str, args: argparse.Namespace) -> None:
        self.dim, self.metric, self.dtype = space.dim, space.metric, space.dtype
        self.default_partition = default_partition
        self.args = args
        self.seen: dict[str, int] = {}  # id -> row of its first occurrence
        self.rejected = 0
        self.by_reason: dict[str, int] = {}
        self.examples: list[dict[str, Any]] = []
        self.rejects_file = open(args.rejects, "w", encoding="utf-8") if args.rejects else None  # noqa: SIM115

    def reject(self, row: int, id_: Any, reasons: list[tuple[str, str]]) -> None:
        self.rejected += 1
        for reason in dict.fromkeys(r for r, _ in reasons):
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        rec = {"row": row, "id": None if id_ is _MISSING else _plain_id(id_),
               "reasons": [{"reason": r, "detail": d} for r, d in reasons]}
        if len(self.examples) < _EXAMPLES:
            self.examples.append(rec)
        if self.rejects_file is not None:
            self.rejects_file.write(json.dumps(rec, default=str) + "\n")  # ASCII: ids may hold lone surrogates

    def close(self) -> None:
        if self.rejects_file is not None:
            self.rejects_file.close()

    def check(self, rows: list[_Row]) -> list[tuple[int, str, np.ndarray, dict | None, str]]:
        """The valid rows as ``(row, id, vector, metadata, partition)``; the others are rejected."""
        vectors = self._vectors(rows)
        good = []
        for r, (vec, vec_problem) in zip(rows, vectors):
            if r.error and r.error[0] == "unreadable row":
                self.reject(r.row, _MISSING, [r.error])
                continue
            problems: list[tuple[str, str]] = [r.error] if r.error else []
            id_ = self._id(r, problems)
            if vec_problem:
                problems.append(vec_problem)
            if r.metadata is not None:
                try:
                    codec.check_metadatas([r.metadata], 1)
                except InvalidInput as exc:
                    problems.append(("bad metadata", str(exc).replace("metadatas[0]", "metadata")))
            part = self._partition(r, problems)
            if problems:
                self.reject(r.row, r.id, problems)
            else:
                good.append((r.row, id_, vec, r.metadata, part))
        return good

    def _id(self, r: _Row, problems: list[tuple[str, str]]) -> str | None:
        raw = r.id
        if raw is _MISSING or raw is None:
            problems.append(("missing id", f"no {self.args.id_field!r} field (choose the id field with --id-field)"))
            return None
        if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
            raw = str(raw)
        if isinstance(raw, bytes):  # a bytes array in a .npz
            raw = raw.decode("utf-8", "surrogateescape")
        if not isinstance(raw, str):
            problems.append(("bad id", f"the id must be a string or an integer, got {type(raw).__name__} {raw!r:.60}"))
            return None
        try:
            codec.check_ids([raw])
        except InvalidInput as exc:
            msg = str(exc).replace("ids[0]", "the id")
            problems.append(("empty id" if "empty" in msg else "id too long" if "bytes long" in msg else "bad id", msg))
            return None
        first = self.seen.setdefault(raw, r.row)
        if first != r.row:
            problems.append(("duplicate id", f"id {raw!r} already appeared at row {first}"))
            return None
        return raw

    def _partition(self, r: _Row, problems: list[tuple[str, str]]) -> str:
        p = r.partition
        if p is None:
            return self.default_partition
        if p is _MISSING or p == "":
            problems.append(("missing partition", f"no {self.args.partition_field!r} field"))
            return ""
        if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
            p = str(p)
        try:
            return check_name(p, "partition name")
        except InvalidInput as exc:
            problems.append(("bad partition name", str(exc)))
            return ""

    def _vectors(self, rows: list[_Row]) -> list[tuple[np.ndarray | None, tuple[str, str] | None]]:
        """Each row's vector as float32, or the reason it is refused. Tries the whole chunk at once first."""
        vecs = [r.vector for r in rows]
        if vecs and all(isinstance(v, np.ndarray) and v.shape == (self.dim,) for v in vecs):
            try:
                mat = self._check(np.stack(vecs))
                return [(mat[i], None) for i in range(len(rows))]
            except InvalidInput:
                pass  # find the culprits one by one
        return [self._one(v) for v in vecs]

    def _check(self, data: Any) -> np.ndarray:
        mat = codec.check_matrix(data, self.dim, what="vector", allow_1d=True)
        if self.metric == "cosine":
            codec.normalise(mat, what="vector")
        if self.dtype == "float16":
            codec.encode_vectors(mat, "float16")
        return mat

    def _one(self, v: Any) -> tuple[np.ndarray | None, tuple[str, str] | None]:
        if v is _MISSING or v is None or (isinstance(v, str) and not v.strip()):
            return None, ("missing vector", f"no {self.args.vector_field!r} field (choose it with --vector-field)")
        if isinstance(v, str):  # a CSV cell
            try:
                v = json.loads(v)
            except ValueError:
                return None, ("unreadable vector", f"not a JSON list of numbers: {v[:60]!r}")
        if isinstance(v, (int, float)) or (isinstance(v, np.ndarray) and v.ndim != 1) or (
                isinstance(v, list) and any(isinstance(x, (list, tuple)) for x in v)):
            return None, ("bad vector", "the vector must be one flat list of numbers")
        try:
            return self._check(v)[0], None
        except DimensionMismatch:
            n = len(v) if hasattr(v, "__len__") else "?"
            return None, ("wrong dimension", f"the vector has {n} values, the space has dim={self.dim}")
        except InvalidInput as exc:
            msg = str(exc).replace("vector[0]", "the vector")
            if "NaN" in msg:
                return None, ("NaN or infinity", msg)
            if "zero vector" in msg:
                return None, ("zero vector", msg)
            if "float16" in msg:
                return None, ("beyond float16 range", msg)
            return None, ("bad vector", msg)


def _plain_id(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x if isinstance(x, (str, int, float, bool)) else repr(x)


def _target_version(space: Any, args: argparse.Namespace) -> tuple[Any, str | None]:
    """The version to import into, and a note when one was created."""
    if args.new_version:
        if args.dry_run:
            return None, "dry run: a new version would be created"
        v = space.create_version(args.version, description=f"imported from {args.source or args.vectors}")
        return v, f"created version {space.name}/{v.name}"
    if args.version:
        return space.version(args.version), None
    if space.aliases().get("live") or space.versions():
        return space.default_version(), None
    if args.dry_run:
        return None, f"dry run: space {space.name} has no version yet; one would be created"
    v = space.create_version(description=f"imported from {args.source or args.vectors}")
    return v, f"space {space.name} had no version: created {v.name}"


@command("import")
def cmd_import(args: argparse.Namespace) -> int:
    """Import vectors with ids and metadata, checking every row: bad rows are rejected with their reasons and the
    others written in batches. Exit code 0: all rows imported; 3: some rows were rejected (see the summary);
    1: an error (a bad file or option: nothing written; a Redis error: the batches before it stay written)."""
    from tqdm import tqdm

    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    if args.partition and args.partition_field:
        raise CliError("give --partition P (one partition for all rows) or --partition-field F, not both")
    source = _open_source(args)
    default_partition = check_name(args.partition or "default", "partition name")
    t0 = time.perf_counter()
    with _hub(args) as hub:
        space = hub.space(args.space)
        if source.dim is not None and source.dim != space.dim:
            raise CliError(f"{source.description}: the vectors have dimension {source.dim} but space {space.name} "
                           f"has dim={space.dim}")
        version, note = _target_version(space, args)
        if version is not None and version.state != "open" and not args.dry_run:
            raise CliError(f"version {space.name}/{version.name} is sealed (read-only): import into a new one "
                           "with --new-version")
        if note:
            print(f"embcache: {note}", file=sys.stderr)
        val = _Validator(space, default_partition, args)
        imported: dict[str, int] = {}
        pending: dict[str, list[tuple[int, str, np.ndarray, dict | None]]] = {}
        bar = tqdm(total=source.total, desc=f"import {space.name}", unit="row", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty(), dynamic_ncols=True)
        read = 0

        def flush(part: str) -> None:
            rows = pending.pop(part, [])
            if rows and version is not None:
                rows = _not_elsewhere(version, part, rows, val)
            if rows:
                imported[part] = imported.get(part, 0) + (
                    len(rows) if args.dry_run else _write(version, part, rows, val))

        try:
            chunk: list[_Row] = []
            for row in source.rows:
                chunk.append(row)
                if len(chunk) >= args.batch:
                    read += _take(chunk, val, pending, flush, args.batch)
                    bar.update(len(chunk))
                    chunk = []
            read += _take(chunk, val, pending, flush, args.batch)
            bar.update(len(chunk))
            for part in list(pending):
                flush(part)
        except EmbcacheError:
            print(f"embcache: stopped after {sum(imported.values())} rows were imported "
                  f"({read} read, {val.rejected} rejected)", file=sys.stderr)
            raise
        finally:
            bar.close()
            val.close()
    n_imported = sum(imported.values())
    data = {"space": space.name, "version": None if version is None else version.name, "source": source.description,
            "dry_run": args.dry_run, "rows_read": read, "imported": n_imported, "rejected": val.rejected,
            "rejected_by_reason": dict(sorted(val.by_reason.items(), key=lambda kv: -kv[1])),
            "rejected_examples": val.examples, "partitions": imported, "seconds": round(time.perf_counter() - t0, 3)}
    if note:
        data["note"] = note

    def text(d: dict[str, Any]) -> str:
        where = f"{d['space']}/{d['version'] or '(new version)'}"
        parts = ", ".join(f"{p}: {n}" for p, n in d["partitions"].items()) or "none"
        verb = "would import" if d["dry_run"] else "imported"
        lines = [f"{verb} {d['imported']} of {d['rows_read']} rows into {where} (partitions {parts}) "
                 f"in {d['seconds']:.2f}s{' (dry run: nothing written)' if d['dry_run'] else ''}"]
        if d["rejected"]:
            lines.append(f"rejected {d['rejected']} rows:")
            lines += [f"  {n:>8}  {reason}" for reason, n in d["rejected_by_reason"].items()]
            lines.append("first rejected rows:")
            for ex in d["rejected_examples"]:
                why = "; ".join(r["detail"] for r in ex["reasons"])
                ident = f" (id {ex['id']!r})" if ex["id"] is not None else ""
                lines.append(f"  row {ex['row']}{ident}: {why}")
            if not args.rejects:
                lines.append("(--rejects FILE.jsonl lists every rejected row)")
        return "\n".join(lines)

    _out(args, data, text)
    return EXIT_REJECTED if val.rejected else 0


def _take(chunk: list[_Row], val: _Validator, pending: dict[str, list], flush: Callable[[str], None],
          batch: int) -> int:
    for row, id_, vec, meta, part in val.check(chunk):
        pending.setdefault(part, []).append((row, id_, vec, meta))
        if len(pending[part]) >= batch:
            flush(part)
    return len(chunk)


def _not_elsewhere(version: Any, part: str, rows: list[tuple[int, str, np.ndarray, dict | None]],
                   val: _Validator) -> list[tuple[int, str, np.ndarray, dict | None]]:
    """Rejects the rows whose id already lives in another partition of the version (an id lives in one)."""
    others = [p for p in version.partitions() if p != part]
    if not others:
        return rows
    found = version.get([r[1] for r in rows], include=())
    where = {i: p for i, p in zip(found.ids, found.partitions or []) if p != part}
    keep = []
    for r in rows:
        if r[1] in where:
            val.reject(r[0], r[1], [("id in another partition",
                                     f"id {r[1]!r} already lives in partition {where[r[1]]!r} of "
                                     f"{version.space.name}/{version.name}: delete it there first")])
        else:
            keep.append(r)
    return keep


def _write(version: Any, part: str, rows: list[tuple[int, str, np.ndarray, dict | None]], val: _Validator) -> int:
    """One atomic upsert of the batch; if the store refuses it, the rows one by one, rejecting those it refuses.
    Returns how many rows were written."""
    metas = [r[3] for r in rows]
    try:
        version.upsert([r[1] for r in rows], np.stack([r[2] for r in rows]),
                       metas if any(m is not None for m in metas) else None, partition=part)
        return len(rows)
    except InvalidInput as exc:
        if len(rows) == 1:
            val.reject(rows[0][0], rows[0][1], [("refused by the store", str(exc))])
            return 0
    return sum(_write(version, part, [r], val) for r in rows)


@command("export")
def cmd_export(args: argparse.Namespace) -> None:
    """Write a version's items to PREFIX.npy (float32 vectors) + PREFIX.jsonl (id, metadata fields, partition),
    or to PREFIX.npz (arrays ids, embeddings, metadatas as JSON texts, partitions)."""
    from tqdm import tqdm

    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    prefix = args.out
    for ext in (".npy", ".npz", ".jsonl"):
        prefix = prefix[: -len(ext)] if prefix.lower().endswith(ext) else prefix
    parent = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(parent):
        raise CliError(f"--out {args.out}: directory {parent} does not exist")
    t0 = time.perf_counter()
    with _hub(args) as hub:
        sp = hub.space(args.space)
        v = sp.version(args.version) if args.version else sp.default_version()
        parts = [args.partition] if args.partition else v.partitions()
        total = v.count(args.partition)
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        metas: list[dict[str, Any] | None] = []
        pnames: list[str] = []
        bar = tqdm(total=total, desc=f"export {sp.name}/{v.name}", unit="item", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty(), dynamic_ncols=True)
        try:
            for p in parts:
                keys = sorted(set(v.ids(p, batch=args.batch)))  # HSCAN may return an id twice
                for i in range(0, len(keys), args.batch):
                    res = v.get(keys[i : i + args.batch], partitions=[p])  # ids deleted meanwhile are left out
                    ids += res.ids
                    vecs.append(res.embeddings)
                    metas += res.metadatas or [None] * len(res.ids)
                    pnames += [p] * len(res.ids)
                    bar.update(len(keys[i : i + args.batch]))
        finally:
            bar.close()
        mat = np.concatenate(vecs) if vecs else np.zeros((0, sp.dim), dtype=np.float32)
        where = f"{sp.name}/{v.name}"
    mat = mat.astype(np.float32, copy=False)
    if args.format == "npz":
        files = [prefix + ".npz"]
        meta_texts = np.array([json.dumps(m, ensure_ascii=False) for m in metas], dtype=str)
        with open(files[0], "wb") as f:
            np.savez(f, ids=np.array(ids, dtype=str), embeddings=mat, metadatas=meta_texts,
                     partitions=np.array(pnames, dtype=str))
        again = f"embcache import SPACE {files[0]}"
    else:
        for i, m in zip(ids, metas):
            clash = [k for k in (args.id_field, args.partition_field) if m and k in m]
            if clash:
                raise CliError(f"item {i!r} has a metadata field {clash[0]!r}, the name of the exported id or "
                               "partition column: choose other names with --id-field / --partition-field")
        files = [prefix + ".npy", prefix + ".jsonl"]
        np.save(files[0], mat)
        with open(files[1], "w", encoding="utf-8") as f:
            for i, m, p in zip(ids, metas, pnames):
                f.write(json.dumps({args.id_field: i, **(m or {}), args.partition_field: p}, ensure_ascii=False) + "\n")
        again = (f"embcache import SPACE --vectors {files[0]} --items {files[1]}"
                 + ("" if args.id_field == "id" else f" --id-field {args.id_field}")
                 + f" --partition-field {args.partition_field}")
    counts: dict[str, int] = {}
    for p in pnames:
        counts[p] = counts.get(p, 0) + 1
    data = {"version": where, "items": len(ids), "dim": int(mat.shape[1]), "partitions": counts, "files": files,
            "seconds": round(time.perf_counter() - t0, 3), "reimport": again}
    _out(args, data, lambda d: f"exported {d['items']} items of {d['version']} to {' + '.join(d['files'])} "
                               f"in {d['seconds']:.2f}s\nre-import with: {d['reimport']}")


def _progress(desc: str, unit: str = "it"):  # noqa: ANN202
    """A callable ``(done, total)`` that draws a progress bar on stderr (tqdm), and ``.close()``."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())

    class Progress:
        def __call__(self, done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        def close(self) -> None:
            bar.close()

    return Progress()


@command("bench")
def cmd_bench(args: argparse.Namespace) -> None:
    """Run the side-by-side benchmark against the peers (scripts/bench.py; its options follow, see --help)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench.py")
    if not os.path.exists(script):
        raise CliError(f"{script} not found: `embcache bench` runs from a source checkout (pip install -e .)")
    os.execv(sys.executable, [sys.executable, script, *args.bench_args])


# parser ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embcache", description="embcache: an embedding hub on plain Redis.")
    p.add_argument("--url", default=os.environ.get("EMBCACHE_URL"), help="Redis URL (default: EMBCACHE_URL, else the embedded server)")
    p.add_argument("--username", default=os.environ.get("EMBCACHE_USERNAME"))
    p.add_argument("--password", default=os.environ.get("EMBCACHE_PASSWORD"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=_COMMANDS[name].__doc__, description=_COMMANDS[name].__doc__, **kw)

    s = add("redis")
    s.add_argument("--home", help="data directory (default: EMBCACHE_HOME or ~/.local/share/embcache)")
    s.add_argument("--port", type=int, help="listen on this loopback TCP port instead of a Unix socket")
    s = add("worker")
    s.add_argument("--queue-url", default=os.environ.get("EMBCACHE_QUEUE_URL"), help="Redis of the RQ queue (default: the data Redis)")
    s.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    s.add_argument("--fork", action="store_true",
                   help="run each job in a forked process (RQ's default); without it jobs run in the worker "
                        "process, which keeps the indices it built for fast incremental updates")
    s.add_argument("--no-dispatch", action="store_true", help="do not run the dispatcher in this worker")
    s.add_argument("--metrics-port", type=int, default=os.environ.get("EMBCACHE_METRICS_PORT") or None,
                   help="serve Prometheus metrics on this port (default: EMBCACHE_METRICS_PORT; off)")
    add("spaces")
    s = add("create-space")
    s.add_argument("name")
    s.add_argument("--dim", type=int, required=True)
    s.add_argument("--metric", default="cosine", choices=["cosine", "l2", "ip"])
    s.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    s.add_argument("--M", type=int, default=16)
    s.add_argument("--ef-construction", type=int, default=200)
    s.add_argument("--ef", type=int, default=64)
    add("describe").add_argument("space")
    s = add("drop-space")
    s.add_argument("space")
    s.add_argument("--yes", action="store_true")
    add("versions").add_argument("space")
    s = add("create-version")
    s.add_argument("space")
    s.add_argument("--name")
    s.add_argument("--description", default="")
    s = add("alias")
    s.add_argument("space")
    s.add_argument("alias")
    s.add_argument("version")
    s = add("promote")
    s.add_argument("space")
    s.add_argument("version")
    s.add_argument("--to", default="live", metavar="ALIAS", help="the alias to move (default: live)")
    s = add("rollback")
    s.add_argument("space")
    s.add_argument("alias", nargs="?", default="live")
    s = add("seal")
    s.add_argument("space")
    s.add_argument("version")
    s = add("build")
    s.add_argument("space")
    s.add_argument("version", nargs="?", default=None, help="version or alias (default: live, else the newest)")
    s.add_argument("--timeout", type=float, default=600.0)
    s = add("stats")
    s.add_argument("space")
    s.add_argument("version", nargs="?", default=None, help="version or alias (default: live, else the newest)")
    s = add("query")
    s.add_argument("space")
    s.add_argument("--version", help="version or alias (default: live, else the newest)")
    s.add_argument("--id", action="append", help="a stored id (repeatable)")
    s.add_argument("--vectors", help=".npy file of query vectors")
    s.add_argument("-n", type=int, default=10, help="results per query")
    s.add_argument("--where", help='metadata filter as JSON, e.g. \'{"genres": "Comedy"}\'')
    s.add_argument("--partition", action="append")
    s.add_argument("--consistency", default="session", choices=["eventual", "session", "strong"])
    s = add("grant")
    s.add_argument("principal")
    s.add_argument("--space", required=True)
    s.add_argument("--role", default="reader", choices=["reader", "writer", "admin"])
    s.add_argument("--partition", action="append", help="limit the grant to this partition (repeatable)")
    s = add("revoke")
    s.add_argument("principal")
    s.add_argument("--space", help="remove only the grant on this space (default: delete the principal)")
    add("principals")
    add("rotate").add_argument("principal")
    add("worker-principal").add_argument("--name", default="worker")
    s = add("import")
    s.add_argument("space")
    s.add_argument("source", nargs="?", metavar="FILE",
                   help=".npz (ids, embeddings[, metadatas, partitions]), .jsonl/.csv/.parquet (an id and a vector "
                        "per row), or .npy (as --vectors)")
    s.add_argument("--vectors", metavar="FILE.npy", help="a 2-D array of vectors (ids: --items, else row numbers)")
    s.add_argument("--items", metavar="FILE", help=".jsonl/.csv/.parquet, one row per vector in the same order: "
                                                   "the id and the metadata")
    s.add_argument("--id-field", default="id", help="field holding the id (default: id)")
    s.add_argument("--vector-field", default="embedding",
                   help="field holding the vector (default: embedding; a JSON list in CSV cells)")
    s.add_argument("--metadata-fields", type=lambda x: [f for f in x.split(",") if f], metavar="A,B",
                   help="fields kept as metadata (default: all but the id, vector and partition fields)")
    s.add_argument("--version", help="version or alias to import into (default: live, else the newest; a new "
                                     "v1 for a space without versions); with --new-version, the new one's name")
    s.add_argument("--new-version", action="store_true", help="create a new version and import into it")
    s.add_argument("--partition", help="partition of every row (default: default)")
    s.add_argument("--partition-field", metavar="F", help="take each row's partition from field F")
    s.add_argument("--batch", type=int, default=1000, help="rows per atomic write (default 1000)")
    s.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    s.add_argument("--rejects", metavar="FILE.jsonl", help="write every rejected row with its reasons here")
    s = add("export")
    s.add_argument("space")
    s.add_argument("--version", help="version or alias (default: live, else the newest)")
    s.add_argument("--partition", help="only this partition (default: all)")
    s.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.npy + PREFIX.jsonl (or PREFIX.npz)")
    s.add_argument("--format", default="npy", choices=["npy", "npz"])
    s.add_argument("--id-field", default="id", help="name of the id column in the .jsonl (default: id)")
    s.add_argument("--partition-field", default="partition",
                   help="name of the partition column in the .jsonl (default: partition)")
    s.add_argument("--batch", type=int, default=1000, help="ids per read (default 1000)")
    s = add("bench", add_help=False, prefix_chars="+")  # every argument goes to scripts/bench.py
    s.add_argument("bench_args", nargs=argparse.REMAINDER)
    return p


def _hint(exc: EmbcacheError, args: argparse.Namespace) -> str:
    """What the user can do about an error, when the message alone does not say."""
    msg = str(exc)
    space = getattr(args, "space", None) or "SPACE"
    if isinstance(exc, NotFound):
        if "no space named" in msg:
            return "list the spaces with `embcache spaces`; create one with `embcache create-space NAME --dim N`"
        if "no version" in msg or "alias" in msg:
            return f"list the versions and aliases with `embcache versions {space}`"
        if "partition" in msg:
            return f"see the partitions with `embcache stats {space} VERSION`"
    name = type(exc).__name__
    if name == "BuildTimeout":
        return "are workers running? start one with `embcache worker` (same --url)"
    if name == "Unavailable":
        return "is Redis running there? give its address with --url or EMBCACHE_URL"
    if name == "PermissionDenied":
        return "connect as a principal with that role (--username/--password); an operator grants it with " \
               "`embcache grant`"
    if name == "VersionSealed":
        return f"sealed versions are read-only: write to a new version (`embcache create-version {space}`)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embcache`` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "import" and args.source is None and len(extra) == 1 and not extra[0].startswith("-"):
        # argparse gives an optional positional its (empty) value before it sees the options that come first:
        # `embcache import SPACE --new-version FILE` leaves FILE over
        args.source, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc = _COMMANDS[args.command](args)
    except EmbcacheError as exc:
        hint = _hint(exc, args)
        print(f"embcache: {type(exc).__name__}: {exc}" + (f"\n  ({hint})" if hint else ""), file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"embcache: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file that cannot be read or written (Redis errors are EmbcacheErrors)
        print(f"embcache: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
