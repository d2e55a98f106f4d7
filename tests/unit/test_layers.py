"""The floors of docs/design.md, enforced: every module imports only from its own floor or the floors below.

    core (embcache.core)                 pure: no Redis, no RQ
    redis (embcache.redis)               the only code that talks to Redis; imports core
    client (embcache.client, .aio, .compat)   facades; import redis and core
    app (embcache.cli, .demo, .movielens)     the command line and the demo; import anything in embcache

``embcache/__init__.py`` is the public surface (client and below). The package ``embcache`` never imports
``workers``; ``workers/`` holds the RQ job functions and uses core and redis only. Imports are read from the
source with ``ast``, including those inside functions, so a lazy import cannot hide a layering break.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RANK = {"core": 0, "redis": 1, "client": 2, "app": 3}
#: third-party packages a package must not import: the core is pure, and the sync client sends no command itself
#: (the Redis layer does; embcache.aio still opens its redis.asyncio connections)
FORBIDDEN = {"embcache.core": {"redis", "rq"}, "embcache.client": {"redis", "rq"}}
#: known breaks, each with the step that removes it; the test fails when one is fixed and still listed here
PENDING: set[tuple[str, str]] = set()
#: ``python -m workers`` is ``embcache worker``: the command line's entry point, so it may import the CLI
ENTRY_POINTS = {("workers.__main__", "embcache.cli")}


def floor(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "workers":
        return "workers"
    if parts[0] != "embcache":
        return None
    if len(parts) == 1:
        return "public"
    return {"core": "core", "redis": "redis", "client": "client", "aio": "client", "compat": "client",
            "cli": "app", "demo": "app", "movielens": "app", "__main__": "app"}.get(parts[1])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, with ``from x import y`` counted as ``x.y`` when y is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}"))
    return out


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources() -> list[Path]:
    return sorted([*(ROOT / "embcache").rglob("*.py"), *(ROOT / "workers").rglob("*.py")])


def test_every_module_has_a_floor() -> None:
    for path in sources():
        assert floor(module_name(path)) is not None, path


def breaks() -> set[tuple[str, str]]:
    found = set()
    for path in sources():
        me = module_name(path)
        mine = floor(me)
        for target in imports(path):
            top = target.split(".")[0]
            theirs = floor(target)
            if any((me == pkg or me.startswith(pkg + ".")) and top in banned for pkg, banned in FORBIDDEN.items()):
                found.add((me, top))
            if theirs is None or theirs == "public" and mine != "public":
                if theirs == "public" and mine not in ("client", "app"):
                    found.add((me, target))  # only facades and apps may go through the public surface
                continue
            if mine == "workers":
                if theirs not in ("workers", "core", "redis") and (me, target.rsplit(".", 1)[0]) not in ENTRY_POINTS \
                        and (me, target) not in ENTRY_POINTS:
                    found.add((me, target))
            elif theirs == "workers":
                found.add((me, target))
            elif mine == "public":
                if theirs == "app":
                    found.add((me, target))
            elif RANK[theirs] > RANK[mine]:
                found.add((me, target))
    return found


def test_floors_import_only_downwards() -> None:
    assert breaks() == PENDING


def test_the_checker_sees_a_break(tmp_path: Path) -> None:
    """The checker itself: an upward import, also one hidden in a function, is found."""
    bad = ROOT / "embcache" / "core" / "_layer_probe.py"
    assert not bad.exists()
    try:
        bad.write_text("def f():\n    from ..client import hub\n    import workers.jobs\n")
        found = breaks() - PENDING
    finally:
        bad.unlink()
    assert found == {("embcache.core._layer_probe", "embcache.client"),
                     ("embcache.core._layer_probe", "embcache.client.hub"),
                     ("embcache.core._layer_probe", "workers.jobs")}
