"""The ``embcache`` command line.

Every command takes ``--url`` (or ``EMBCACHE_URL``; without either, the embedded server), ``--username`` and
``--password`` (or ``EMBCACHE_USERNAME``/``EMBCACHE_PASSWORD``), and ``--json`` for output that scripts read.
Exit codes: 0 success, 1 embcache error (message on stderr says what to do), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np

from .errors import EmbcacheError

__all__ = ["main"]

Command = Callable[[argparse.Namespace], Any]
_COMMANDS: dict[str, Command] = {}


def _hub(args: argparse.Namespace):  # noqa: ANN202
    from .client import connect

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
    from .server import RedisServer, embedded_home

    server = RedisServer(args.home or embedded_home(), port=args.port)
    print(f"embcache: redis-server for {server.directory} at {server.url} (Ctrl-C stops it)", file=sys.stderr)
    (server.directory / "url").write_text(server.url + "\n")
    os.execv(server.argv()[0], server.argv())


@command("worker")
def cmd_worker(args: argparse.Namespace) -> None:
    """Run an RQ worker on the embcache queue, with the dispatcher."""
    from workers.dispatcher import (
        run_worker,  # the CLI is the one place that starts workers
    )

    url = args.url or os.environ.get("EMBCACHE_URL")
    if url is None:
        from .server import ensure_embedded

        url = ensure_embedded()
    if args.username:
        os.environ["EMBCACHE_USERNAME"] = args.username
    if args.password:
        os.environ["EMBCACHE_PASSWORD"] = args.password
    run_worker(url, args.queue_url, burst=args.burst, simple=args.simple, dispatch=not args.no_dispatch)


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
        v = hub.space(args.space).version(args.version)
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
        v = hub.space(args.space).version(args.version)
        rows = [asdict(s) for s in v.stats()]
    _out(args, rows, format_table)


@command("query")
def cmd_query(args: argparse.Namespace) -> None:
    """Nearest neighbours of stored ids (--id) or of vectors in a .npy file (--vectors)."""
    if bool(args.id) == bool(args.vectors):
        raise SystemExit("give either --id ID [--id ID ...] or --vectors FILE.npy")
    where = json.loads(args.where) if args.where else None
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
    """Give a principal a new password (the old one stops working for new connections); prints it once."""
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
    s.add_argument("--simple", action="store_true", help="run jobs in the worker process (no fork)")
    s.add_argument("--no-dispatch", action="store_true", help="do not run the dispatcher in this worker")
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
    s = add("rollback")
    s.add_argument("space")
    s.add_argument("alias", nargs="?", default="live")
    s = add("seal")
    s.add_argument("space")
    s.add_argument("version")
    s = add("build")
    s.add_argument("space")
    s.add_argument("version", nargs="?", default="live")
    s.add_argument("--timeout", type=float, default=600.0)
    s = add("stats")
    s.add_argument("space")
    s.add_argument("version", nargs="?", default="live")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embcache`` command."""
    args = build_parser().parse_args(argv)
    try:
        _COMMANDS[args.command](args)
    except EmbcacheError as exc:
        print(f"embcache: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
