"""Access control, for operators: ``embcache grant | revoke | principals | rotate | worker-principal``."""

from __future__ import annotations

import sys
from typing import Any

import click

from .common import Settings, connection_options, format_table, hub, out

__all__ = ["grant", "principals", "revoke", "rotate", "worker_principal"]


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


@click.command("grant")
@click.argument("principal")
@connection_options
@click.option("--space", required=True, help="the space the role is on")
@click.option("--role", default="reader", show_default=True, type=click.Choice(["reader", "writer", "admin"]))
@click.option("--partition", "partitions", multiple=True, help="limit the grant to this partition (repeatable)")
def grant(settings: Settings, principal: str, space: str, role: str, partitions: tuple[str, ...]) -> None:
    """Give a principal a role on a space (creates the principal; prints its password once)."""
    parts = list(partitions) or None
    with hub(settings) as h:
        creds = h.grant(principal, space=space, role=role, partitions=parts)
    data = {"username": creds.username, "password": creds.password, "persisted": creds.persisted,
            "space": space, "role": role, "partitions": parts}
    scope = f" (partitions {', '.join(parts)})" if parts else ""
    action = f"granted {role} on space {space}{scope} to {creds.username}"
    out(settings, data, lambda d: _creds_text(action, d))
    _warn_not_persisted(creds)


@click.command("revoke")
@click.argument("principal")
@connection_options
@click.option("--space", default=None, help="remove only the grant on this space (default: delete the principal)")
def revoke(settings: Settings, principal: str, space: str | None) -> None:
    """Remove a principal's grant on a space, or the principal itself (without --space)."""
    with hub(settings) as h:
        h.revoke(principal, space=space)
        deleted = space is None or principal not in h.list_principals()  # its last grant went
    data = {"principal": principal, "space": space, "deleted": deleted}

    def text(d: dict[str, Any]) -> str:
        if d["space"] is None:
            return f"deleted principal {d['principal']}"
        tail = " (its last grant: principal deleted)" if d["deleted"] else ""
        return f"revoked {d['principal']}'s grant on space {d['space']}{tail}"

    out(settings, data, text)


@click.command("principals")
@connection_options
def principals(settings: Settings) -> None:
    """List principals and their grants (never secrets)."""
    with hub(settings) as h:
        data = h.list_principals()
    rows: list[dict[str, Any]] = []
    for name, rec in data.items():
        kind = "worker" if rec["worker"] else "client"
        if not rec["grants"]:  # the worker: hub-wide, no per-space grants
            rows.append({"principal": name, "kind": kind, "space": "*" if rec["worker"] else "",
                         "role": "worker" if rec["worker"] else "", "partitions": ""})
        for space, g in sorted(rec["grants"].items()):
            rows.append({"principal": name, "kind": kind, "space": space, "role": g["role"],
                         "partitions": ",".join(g["partitions"]) if g["partitions"] else "*"})
    out(settings, data, lambda _: format_table(rows, ["principal", "kind", "space", "role", "partitions"]))


@click.command("rotate")
@click.argument("principal")
@connection_options
def rotate(settings: Settings, principal: str) -> None:
    """Give a principal a new password (the old one stops working at once, open connections included); prints it
    once."""
    with hub(settings) as h:
        creds = h.rotate(principal)
    data = {"username": creds.username, "password": creds.password, "persisted": creds.persisted}
    out(settings, data, lambda d: _creds_text(f"new password for {d['username']}", d))
    _warn_not_persisted(creds)


@click.command("worker-principal")
@connection_options
@click.option("--name", default="worker", show_default=True, help="the principal's name")
def worker_principal(settings: Settings, name: str) -> None:
    """Create (or re-key) the principal workers connect with; prints its credentials once."""
    with hub(settings) as h:
        creds = h.create_worker_principal(name)
    data = {"username": creds.username, "password": creds.password, "persisted": creds.persisted}
    out(settings, data, lambda d: _creds_text(
        f"worker principal {d['username']} (run workers with EMBCACHE_USERNAME/EMBCACHE_PASSWORD and "
        "EMBCACHE_QUEUE_USERNAME/EMBCACHE_QUEUE_PASSWORD set to these)", d))
    _warn_not_persisted(creds)
