"""``embcache versions | create-version | drop-version | alias | promote | rollback | seal``."""

from __future__ import annotations

import click

from .common import CliError, Settings, connection_options, format_table, hub, out

__all__ = ["alias", "create_version", "drop_version", "promote", "rollback", "seal", "versions"]


@click.command("versions")
@click.argument("space")
@connection_options
def versions(settings: Settings, space: str) -> None:
    """List the versions of a space."""
    with hub(settings) as h:
        sp = h.space(space)
        aliases = sp.aliases()
        rows = [{"name": v.name, "state": v.state, "aliases": ",".join(a for a, t in aliases.items() if t == v.name),
                 "count": v.count(), "description": v.description} for v in sp.versions()]
    out(settings, rows, format_table)


@click.command("create-version")
@click.argument("space")
@connection_options
@click.option("--name", default=None, help="the version's name (default: v1, v2, ...)")
@click.option("--description", default="")
def create_version(settings: Settings, space: str, name: str | None, description: str) -> None:
    """Create a version."""
    with hub(settings) as h:
        v = h.space(space).create_version(name, description=description)
    out(settings, {"space": space, "version": v.name}, lambda d: f"created version {d['space']}/{d['version']}")


@click.command("drop-version")
@click.argument("space")
@click.argument("version")
@connection_options
@click.option("--yes", is_flag=True, help="confirm: the version's items and snapshots are deleted")
def drop_version(settings: Settings, space: str, version: str, yes: bool) -> None:
    """Delete one version with its items and snapshots (not one an alias points at)."""
    if not yes:
        raise CliError("drop-version deletes the version's data: add --yes to confirm")
    with hub(settings) as h:
        h.space(space).drop_version(version)
    out(settings, {"dropped": f"{space}/{version}"}, lambda d: f"dropped version {d['dropped']}")


def _point(settings: Settings, space: str, alias_name: str, version: str) -> None:
    with hub(settings) as h:
        sp = h.space(space)
        sp.set_alias(alias_name, version)
        data = sp.aliases()
    out(settings, data, lambda d: f"{alias_name} -> {d[alias_name]}")


@click.command("alias")
@click.argument("space")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version")
@connection_options
def alias(settings: Settings, space: str, alias_name: str, version: str) -> None:
    """Point an alias at a version (promote)."""
    _point(settings, space, alias_name, version)


@click.command("promote")
@click.argument("space")
@click.argument("version")
@connection_options
@click.option("--to", "alias_name", default="live", show_default=True, metavar="ALIAS", help="the alias to move")
def promote(settings: Settings, space: str, version: str, alias_name: str) -> None:
    """Make a version the one an alias (default: live) points at; `rollback` undoes it."""
    _point(settings, space, alias_name, version)


@click.command("rollback")
@click.argument("space")
@click.argument("alias_name", metavar="[ALIAS]", default="live")
@connection_options
def rollback(settings: Settings, space: str, alias_name: str) -> None:
    """Point an alias (default: live) back at its previous target."""
    with hub(settings) as h:
        v = h.space(space).rollback(alias_name)
    out(settings, {"alias": alias_name, "version": v.name}, lambda d: f"{d['alias']} -> {d['version']} (rolled back)")


@click.command("seal")
@click.argument("space")
@click.argument("version")
@connection_options
def seal(settings: Settings, space: str, version: str) -> None:
    """Make a version read-only."""
    with hub(settings) as h:
        h.space(space).version(version).seal()
    out(settings, {"sealed": f"{space}/{version}"}, lambda d: f"sealed {d['sealed']}")
