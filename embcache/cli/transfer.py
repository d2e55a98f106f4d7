"""``embcache import`` and ``embcache export``: bulk data in and out, every imported row checked.

An import writes in batches of ``--batch`` rows per partition, each batch atomic. When it stops on an error
(Redis away or timing out), every row before the row it names is written, and the same command with
``--version V --resume-from ROW`` goes on from there: the rows before ``ROW`` are read again (so that a
duplicate id after them is still found) but not written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
import numpy as np

from ..core import codec
from ..core.errors import DimensionMismatch, EmbcacheError, InvalidInput
from ..core.keys import check_name
from .common import EXIT_REJECTED, CliError, Settings, connection_options, hub, out
from .sources import MISSING, ImportOptions, Row, open_source

__all__ = ["export", "import_"]

_EXAMPLES = 5  # rejected rows shown in the summary
Valid = tuple[int, str, np.ndarray, "dict | None"]  # (row, id, vector, metadata)


class _Validator:
    """Checks rows with :mod:`embcache.core.codec` (and the space's parameters); keeps the reasons of rejected ones."""

    def __init__(self, space: Any, default_partition: str, opts: ImportOptions) -> None:
        self.dim, self.metric, self.dtype = space.dim, space.metric, space.dtype
        self.default_partition = default_partition
        self.opts = opts
        self.seen: dict[str, int] = {}  # id -> row of its first occurrence
        self.rejected = 0
        self.by_reason: dict[str, int] = {}
        self.examples: list[dict[str, Any]] = []
        # a resumed import adds to the rejects of the run it continues
        mode = "a" if opts.resume_from else "w"
        self.rejects_file = open(opts.rejects, mode, encoding="utf-8") if opts.rejects else None

    def skip(self, rows: list[Row]) -> None:
        """Rows an earlier run wrote (``--resume-from``): only their ids are noted, for the duplicate check."""
        for r in rows:
            raw = _normal_id(r.id)
            if isinstance(raw, str):
                self.seen.setdefault(raw, r.row)

    def reject(self, row: int, id_: Any, reasons: list[tuple[str, str]]) -> None:
        self.rejected += 1
        for reason in dict.fromkeys(r for r, _ in reasons):
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        rec = {"row": row, "id": None if id_ is MISSING else _plain_id(id_),
               "reasons": [{"reason": r, "detail": d} for r, d in reasons]}
        if len(self.examples) < _EXAMPLES:
            self.examples.append(rec)
        if self.rejects_file is not None:
            self.rejects_file.write(json.dumps(rec, default=str) + "\n")  # ASCII: ids may hold lone surrogates

    def close(self) -> None:
        if self.rejects_file is not None:
            self.rejects_file.close()

    def check(self, rows: list[Row]) -> list[tuple[int, str, np.ndarray, dict[str, Any] | None, str]]:
        """The valid rows as ``(row, id, vector, metadata, partition)``; the others are rejected."""
        vectors = self._vectors(rows)
        good: list[Any] = []  # (row, id, vector, metadata, partition) of the rows without problems
        for r, (vec, vec_problem) in zip(rows, vectors):
            if r.error and r.error[0] == "unreadable row":
                self.reject(r.row, MISSING, [r.error])
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

    def _id(self, r: Row, problems: list[tuple[str, str]]) -> str | None:
        raw = _normal_id(r.id)
        if raw is MISSING or raw is None:
            problems.append(("missing id", f"no {self.opts.id_field!r} field (choose the id field with --id-field)"))
            return None
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

    def _partition(self, r: Row, problems: list[tuple[str, str]]) -> str:
        p = r.partition
        if p is None:
            return self.default_partition
        if p is MISSING or p == "":
            problems.append(("missing partition", f"no {self.opts.partition_field!r} field"))
            return ""
        if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
            p = str(p)
        try:
            return check_name(p, "partition name")
        except InvalidInput as exc:
            problems.append(("bad partition name", str(exc)))
            return ""

    def _vectors(self, rows: list[Row]) -> list[tuple[np.ndarray | None, tuple[str, str] | None]]:
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
        if v is MISSING or v is None or (isinstance(v, str) and not v.strip()):
            return None, ("missing vector", f"no {self.opts.vector_field!r} field (choose it with --vector-field)")
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


def _normal_id(raw: Any) -> Any:
    """An id as it is stored: integers as text, a .npz's bytes decoded; anything else as it came."""
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, bytes):  # a bytes array in a .npz
        return raw.decode("utf-8", "surrogateescape")
    return raw


def _plain_id(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x if isinstance(x, (str, int, float, bool)) else repr(x)


def _version_to_fill(space: Any, opts: ImportOptions) -> tuple[Any, str | None]:
    """The version to import into, and a note when one was created."""
    described = f"imported from {opts.source or opts.vectors}"
    if opts.new_version:
        if opts.dry_run:
            return None, "dry run: a new version would be created"
        v = space.create_version(opts.version, description=described)
        return v, f"created version {space.name}/{v.name}"
    if opts.version:
        return space.version(opts.version), None
    if space.aliases().get("live") or space.versions():
        return space.default_version(), None
    if opts.dry_run:
        return None, f"dry run: space {space.name} has no version yet; one would be created"
    v = space.create_version(description=described)
    return v, f"space {space.name} had no version: created {v.name}"


class _Writer:
    """Collects valid rows per partition and writes them in batches; knows which rows are written for sure."""

    def __init__(self, version: Any, val: _Validator, opts: ImportOptions) -> None:
        self.version, self.val, self.opts = version, val, opts
        self.pending: dict[str, list[Valid]] = {}
        self.in_flight: list[Valid] = []
        self.imported: dict[str, int] = {}
        self.read = 0  # rows taken so far (validated, or skipped by --resume-from)

    def take(self, chunk: list[Row]) -> None:
        """Validate a chunk of rows and queue the valid ones; write every partition whose batch is full."""
        done = [r for r in chunk if r.row < self.opts.resume_from]
        self.val.skip(done)
        for row, id_, vec, meta, part in self.val.check(chunk[len(done):]):
            self.pending.setdefault(part, []).append((row, id_, vec, meta))
            if len(self.pending[part]) >= self.opts.batch:
                self.flush(part)
        self.read += len(chunk)

    def flush(self, part: str) -> None:
        """Write the partition's queued rows (one atomic batch)."""
        self.in_flight = self.pending.pop(part, [])
        rows = self.in_flight
        if rows and self.version is not None:
            rows = _not_elsewhere(self.version, part, rows, self.val)
        if rows:
            n = len(rows) if self.opts.dry_run else _write(self.version, part, rows, self.val)
            self.imported[part] = self.imported.get(part, 0) + n
        self.in_flight = []

    def flush_all(self) -> None:
        for part in list(self.pending):
            self.flush(part)

    def written_before(self) -> int:
        """Every valid row before this row number is written (rows after it may be too)."""
        waiting = [r[0] for rows in (self.in_flight, *self.pending.values()) for r in rows]
        return min(waiting, default=max(self.read, self.opts.resume_from))


def _not_elsewhere(version: Any, part: str, rows: list[Valid], val: _Validator) -> list[Valid]:
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


def _write(version: Any, part: str, rows: list[Valid], val: _Validator) -> int:
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


def _metadata_fields(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    return None if value is None else [f for f in value.split(",") if f]


@click.command("import")
@click.argument("space")
@click.argument("source", required=False, default=None, metavar="[FILE]")
@connection_options
@click.option("--vectors", default=None, metavar="FILE.npy",
              help="a 2-D array of vectors (ids: --items, else row numbers)")
@click.option("--items", default=None, metavar="FILE",
              help=".jsonl/.csv (also gzipped: .jsonl.gz, .csv.gz) or .parquet, one row per vector in the same "
                   "order: the id and the metadata")
@click.option("--id-field", default="id", show_default=True, help="field holding the id")
@click.option("--vector-field", default="embedding", show_default=True,
              help="field holding the vector (a JSON list in CSV cells)")
@click.option("--metadata-fields", default=None, metavar="A,B", callback=_metadata_fields,
              help="fields kept as metadata (default: all but the id, vector and partition fields)")
@click.option("--version", default=None,
              help="version or alias to import into (default: live, else the newest; a new v1 for a space without "
                   "versions); with --new-version, the new one's name")
@click.option("--new-version", is_flag=True, help="create a new version and import into it")
@click.option("--partition", default=None, help="partition of every row (default: default)")
@click.option("--partition-field", default=None, metavar="F", help="take each row's partition from field F")
@click.option("--batch", type=int, default=1000, show_default=True, help="rows per atomic write")
@click.option("--dry-run", is_flag=True, help="check every row, write nothing")
@click.option("--rejects", default=None, metavar="FILE.jsonl", help="write every rejected row with its reasons here")
@click.option("--resume-from", type=int, default=0, metavar="ROW",
              help="go on with an import that stopped: rows before ROW are already written (the stopped import's "
                   "message gives ROW)")
def import_(settings: Settings, space: str, **options: Any) -> int:
    """Import vectors with ids and metadata, checking every row: bad rows are rejected with their reasons and the
    others written in batches.

    FILE is a .npz (ids, embeddings[, metadatas, partitions]), a .jsonl/.csv (also gzipped) or .parquet with an id
    and a vector per row, or a .npy (as --vectors). Exit code 0: all rows imported; 3: some rows were rejected (see
    the summary); 1: an error (a bad file or option: nothing written; a Redis error: the batches before it stay
    written, and the message says how to go on).
    """
    return _import(settings, space, ImportOptions(**options))


def _import(settings: Settings, space_name: str, opts: ImportOptions) -> int:
    from tqdm import tqdm

    if opts.batch < 1:
        raise CliError("--batch must be at least 1")
    if opts.resume_from < 0:
        raise CliError("--resume-from must be a row number (0 or more)")
    if opts.resume_from and opts.new_version:
        raise CliError("--resume-from goes on with an import into an existing version: give --version NAME (the "
                       "version the stopped import wrote to) instead of --new-version")
    if opts.partition and opts.partition_field:
        raise CliError("give --partition P (one partition for all rows) or --partition-field F, not both")
    source = open_source(opts)
    default_partition = check_name(opts.partition or "default", "partition name")
    t0 = time.perf_counter()
    with hub(settings) as h:
        space = h.space(space_name)
        if source.dim is not None and source.dim != space.dim:
            raise CliError(f"{source.description}: the vectors have dimension {source.dim} but space {space.name} "
                           f"has dim={space.dim}")
        version, note = _version_to_fill(space, opts)
        if version is not None and version.state != "open" and not opts.dry_run:
            raise CliError(f"version {space.name}/{version.name} is sealed (read-only): import into a new one "
                           "with --new-version")
        if note:
            print(f"embcache: {note}", file=sys.stderr)
        val = _Validator(space, default_partition, opts)
        writer = _Writer(version, val, opts)
        bar = tqdm(total=source.total, desc=f"import {space.name}", unit="row", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty(), dynamic_ncols=True)
        try:
            chunk: list[Row] = []
            for row in source.rows:
                chunk.append(row)
                if len(chunk) >= opts.batch:
                    writer.take(chunk)
                    bar.update(len(chunk))
                    chunk = []
            writer.take(chunk)
            bar.update(len(chunk))
            writer.flush_all()
        except EmbcacheError:
            _say_how_to_resume(writer, val, f"{space.name}/{version.name}", version.name, opts)
            raise
        finally:
            bar.close()
            val.close()
    data = {"space": space.name, "version": None if version is None else version.name, "source": source.description,
            "dry_run": opts.dry_run, "rows_read": writer.read, "imported": sum(writer.imported.values()),
            "rejected": val.rejected, "rejected_by_reason": dict(sorted(val.by_reason.items(), key=lambda kv: -kv[1])),
            "rejected_examples": val.examples, "partitions": writer.imported,
            "seconds": round(time.perf_counter() - t0, 3)}
    if opts.resume_from:
        data["resumed_from"] = opts.resume_from
    if note:
        data["note"] = note
    out(settings, data, lambda d: _summary(d, opts))
    return EXIT_REJECTED if val.rejected else 0


def _say_how_to_resume(writer: _Writer, val: _Validator, where: str, version: str, opts: ImportOptions) -> None:
    row = writer.written_before()
    print(f"embcache: stopped after {sum(writer.imported.values())} rows were imported ({writer.read} read, "
          f"{val.rejected} rejected); every row before row {row} is in {where}. To go on from there, run the same "
          f"command with --version {version} --resume-from {row}"
          + (" (and without --new-version)" if opts.new_version else ""), file=sys.stderr)


def _summary(d: dict[str, Any], opts: ImportOptions) -> str:
    where = f"{d['space']}/{d['version'] or '(new version)'}"
    parts = ", ".join(f"{p}: {n}" for p, n in d["partitions"].items()) or "none"
    verb = "would import" if d["dry_run"] else "imported"
    resumed = f" (resumed at row {d['resumed_from']})" if d.get("resumed_from") else ""
    lines = [f"{verb} {d['imported']} of {d['rows_read']} rows into {where} (partitions {parts}) "
             f"in {d['seconds']:.2f}s{resumed}{' (dry run: nothing written)' if d['dry_run'] else ''}"]
    if d["rejected"]:
        lines.append(f"rejected {d['rejected']} rows:")
        lines += [f"  {n:>8}  {reason}" for reason, n in d["rejected_by_reason"].items()]
        lines.append("first rejected rows:")
        for ex in d["rejected_examples"]:
            why = "; ".join(r["detail"] for r in ex["reasons"])
            ident = f" (id {ex['id']!r})" if ex["id"] is not None else ""
            lines.append(f"  row {ex['row']}{ident}: {why}")
        if not opts.rejects:
            lines.append("(--rejects FILE.jsonl lists every rejected row)")
    return "\n".join(lines)


@click.command("export")
@click.argument("space")
@connection_options
@click.option("--version", default=None, help="version or alias (default: live, else the newest)")
@click.option("--partition", default=None, help="only this partition (default: all)")
@click.option("--out", "out_prefix", required=True, metavar="PREFIX",
              help="writes PREFIX.npy + PREFIX.jsonl (or PREFIX.npz)")
@click.option("--format", "fmt", default="npy", show_default=True, type=click.Choice(["npy", "npz"]))
@click.option("--id-field", default="id", show_default=True, help="name of the id column in the .jsonl")
@click.option("--partition-field", default="partition", show_default=True,
              help="name of the partition column in the .jsonl")
@click.option("--batch", type=int, default=1000, show_default=True, help="ids per read")
def export(settings: Settings, space: str, version: str | None, partition: str | None, out_prefix: str, fmt: str,
           id_field: str, partition_field: str, batch: int) -> None:
    """Write a version's items to PREFIX.npy (float32 vectors) + PREFIX.jsonl (id, metadata fields, partition),
    or to PREFIX.npz (arrays ids, embeddings, metadatas as JSON texts, partitions)."""
    from tqdm import tqdm

    if batch < 1:
        raise CliError("--batch must be at least 1")
    prefix = out_prefix
    for ext in (".npy", ".npz", ".jsonl"):
        prefix = prefix[: -len(ext)] if prefix.lower().endswith(ext) else prefix
    parent = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(parent):
        raise CliError(f"--out {out_prefix}: directory {parent} does not exist")
    t0 = time.perf_counter()
    with hub(settings) as h:
        sp = h.space(space)
        v = sp.version(version) if version else sp.default_version()
        parts = [partition] if partition else v.partitions()
        total = v.count(partition)
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        metas: list[dict[str, Any] | None] = []
        pnames: list[str] = []
        bar = tqdm(total=total, desc=f"export {sp.name}/{v.name}", unit="item", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty(), dynamic_ncols=True)
        try:
            for p in parts:
                keys = sorted(set(v.ids(p, batch=batch)))  # HSCAN may return an id twice
                for i in range(0, len(keys), batch):
                    res = v.get(keys[i : i + batch], partitions=[p])  # ids deleted meanwhile are left out
                    ids += res.ids
                    vecs.append(res.embeddings)
                    metas += res.metadatas or [None] * len(res.ids)
                    pnames += [p] * len(res.ids)
                    bar.update(len(keys[i : i + batch]))
        finally:
            bar.close()
        mat = np.concatenate(vecs) if vecs else np.zeros((0, sp.dim), dtype=np.float32)
        where = f"{sp.name}/{v.name}"
    mat = mat.astype(np.float32, copy=False)
    if fmt == "npz":
        files = [prefix + ".npz"]
        meta_texts = np.array([json.dumps(m, ensure_ascii=False) for m in metas], dtype=str)
        with open(files[0], "wb") as f:
            np.savez(f, ids=np.array(ids, dtype=str), embeddings=mat, metadatas=meta_texts,
                     partitions=np.array(pnames, dtype=str))
        again = f"embcache import SPACE {files[0]}"
    else:
        for item, m in zip(ids, metas):
            clash = [k for k in (id_field, partition_field) if m and k in m]
            if clash:
                raise CliError(f"item {item!r} has a metadata field {clash[0]!r}, the name of the exported id or "
                               "partition column: choose other names with --id-field / --partition-field")
        files = [prefix + ".npy", prefix + ".jsonl"]
        np.save(files[0], mat)
        with open(files[1], "w", encoding="utf-8") as f:
            for item, m, p in zip(ids, metas, pnames):
                f.write(json.dumps({id_field: item, **(m or {}), partition_field: p}, ensure_ascii=False) + "\n")
        again = (f"embcache import SPACE --vectors {files[0]} --items {files[1]}"
                 + ("" if id_field == "id" else f" --id-field {id_field}")
                 + f" --partition-field {partition_field}")
    counts: dict[str, int] = {}
    for p in pnames:
        counts[p] = counts.get(p, 0) + 1
    data = {"version": where, "items": len(ids), "dim": int(mat.shape[1]), "partitions": counts, "files": files,
            "seconds": round(time.perf_counter() - t0, 3), "reimport": again}
    out(settings, data, lambda d: f"exported {d['items']} items of {d['version']} to {' + '.join(d['files'])} "
                               f"in {d['seconds']:.2f}s\nre-import with: {d['reimport']}")
