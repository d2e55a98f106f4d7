"""Generate docs/api.md from the docstrings and signatures of embcache's public API.

    python scripts/gen_api_docs.py            # (re)write docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 if docs/api.md is not what the code generates

What is documented is listed in ``SECTIONS`` below: ``embcache.__all__``, the asyncio client, the types the API
returns, the error tree, the ``where`` grammar, ``embcache.metrics.enable``/``disable`` and the Embeddinghub
facade. Members are taken in source order; the output depends only on the code (no dates, no addresses), so
``--check`` can run in the tests. ``documented()`` yields every documented callable and property, for the test
that requires a docstring on each.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import embcache.errors  # noqa: E402
import embcache.filters  # noqa: E402
import embcache.metrics  # noqa: E402
import embcache.server  # noqa: E402

import embcache  # noqa: E402
import embcache.aio  # noqa: E402
from embcache import acl, builds  # noqa: E402
from embcache.compat import embeddinghub  # noqa: E402
from embcache.redis import connection  # noqa: E402

OUT = ROOT / "docs" / "api.md"
MISSING = "*(no docstring)*"

# Plain attributes set in ``__init__`` that users read. Docstrings cannot carry them, so they are listed here;
# ``attributes()`` checks that each one is still assigned in the class's ``__init__`` (the generator fails if not).
ATTRIBUTES: dict[type, dict[str, str]] = {
    embcache.Hub: {
        "url": "the URL the hub connected to (for the embedded server, the one it started or found)",
        "username": "the principal it connected as (None: the default user)",
    },
    embcache.Space: {
        "name": "the space's name",
        "dim": "vector length",
        "metric": "`cosine`, `l2` or `ip`",
        "dtype": "`float32` or `float16` (how vectors are stored in Redis)",
        "M": "HNSW graph degree",
        "ef_construction": "HNSW build width",
        "ef": "default query width",
        "hub": "the `Hub` it came from",
    },
    embcache.Version: {
        "name": "the version's name",
        "state": "`open` or `sealed` as read when this object was made (updated by `seal()` and `delete()`)",
        "description": "free text given to `create_version`",
        "space": "the `Space` it belongs to",
    },
    embcache.aio.AsyncHub: {
        "sync": "the `embcache.Hub` behind it (snapshot cache, refresher, session overlay)",
        "redis": "the `redis.asyncio` client",
        "url": "as `Hub.url`",
        "username": "as `Hub.username`",
    },
    embcache.aio.AsyncSpace: {
        "name": "as `Space.name`; also `dim`, `metric`, `dtype`, `M`, `ef_construction`, `ef`",
        "sync": "the `embcache.Space` behind it",
    },
    embcache.aio.AsyncVersion: {
        "name": "as `Version.name`",
        "sync": "the `embcache.Version` behind it",
    },
    embeddinghub.EmbeddingHub: {
        "hub": "the `embcache.Hub` behind the facade (full API)",
        "metric": "metric of spaces created through the facade",
        "consistency": "consistency level of the facade's reads",
    },
    embeddinghub.Space: {
        "name": "the space's name",
        "dims": "vector length",
        "space": "the `embcache.Space` behind it",
    },
    embeddinghub.SpaceSnapshot: {
        "name": "the name of the space it was downloaded from (None for one made directly)",
        "dims": "vector length",
        "metric": "the metric of its exact search",
        "source": "the facade `Space` it was downloaded from (None for one made directly)",
    },
}


@dataclasses.dataclass
class Section:
    title: str
    intro: str  # markdown, or "" ; a module docstring is rendered with ``module``
    module: Any = None
    functions: tuple[Any, ...] = ()
    classes: tuple[type, ...] = ()
    constants: tuple[str, ...] = ()  # module-level names documented by the string literal that follows them
    path: str = ""  # the public module path the names are shown under (e.g. "embcache" for embcache.client.connect)


def _sections() -> list[Section]:
    top = [getattr(embcache, n) for n in embcache.__all__ if n != "__version__"]
    errors = tuple(c for c in top if inspect.isclass(c) and issubclass(c, BaseException))
    return [
        Section("`embcache`", "", module=embcache, functions=(embcache.connect,),
                classes=(embcache.Hub, embcache.Space, embcache.Version, embcache.QueryResult,
                         embcache.GetResult), path="embcache"),
        Section("Returned objects",
                "Types the calls above return (`Hub.grant`, `Version.build`, `Version.stats`); import them from "
                "the modules named if you need them.",
                classes=(acl.Credentials, builds.BuildHandle, builds.PartitionStats)),
        Section("`embcache.aio`", "", module=embcache.aio, functions=(embcache.aio.connect,),
                classes=(embcache.aio.AsyncHub, embcache.aio.AsyncSpace, embcache.aio.AsyncVersion,
                         embcache.aio.AsyncBuildHandle),
                path="embcache.aio"),
        Section("Errors (`embcache.errors`)",
                "Every class is importable from `embcache` and from `embcache.errors`.",
                module=embcache.errors, classes=errors, path="embcache"),
        Section("`where` filters (`embcache.filters`)", "", module=embcache.filters,
                functions=(embcache.filters.compile_where,), path="embcache.filters"),
        Section("The embedded server (`embcache.server`)",
                "What `connect()` without a URL uses; lifetime and security: [operations.md](operations.md).",
                functions=(embcache.server.attach, embcache.server.ensure_embedded, embcache.server.stop_embedded,
                           embcache.server.serve, embcache.server.embedded_password),
                classes=(embcache.server.Embedded,), path="embcache.server"),
        Section("Connection settings (`embcache.redis.connection`)", "",
                functions=(connection.normalize_url, connection.redact_url, connection.read_password_file,
                           connection.env_credentials), path="embcache.redis.connection"),
        Section("Metrics (`embcache.metrics`)",
                "Names, labels and costs: [metrics.md](metrics.md).",
                functions=(embcache.metrics.enable, embcache.metrics.disable), path="embcache.metrics"),
        Section("`embcache.compat.embeddinghub`", "", module=embeddinghub,
                functions=(embeddinghub.connect,),
                classes=(embeddinghub.Config, embeddinghub.LocalConfig, embeddinghub.EmbeddingHub, embeddinghub.Space,
                         embeddinghub.SpaceSnapshot, embeddinghub.EmbeddingHubClient),
                constants=("VERSION", "ALIAS", "PARTITION", "DEFAULT_METRIC"), path="embcache.compat.embeddinghub"),
    ]


# --- docstrings: reST-ish to Markdown -------------------------------------------------------------------------

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc):`(~?)([^`]+)`")


def _inline(text: str) -> str:
    text = _ROLE.sub(lambda m: "`" + (m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)) + "`", text)
    return text.replace("``", "`")


def render_doc(doc: str | None) -> str:
    """A docstring as Markdown: roles and double backquotes become code, ``::`` blocks and doctests fences."""
    if not doc or not doc.strip():
        return MISSING
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["```python", *block, "```"]
            continue
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(_inline(head) + ":")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```text", *textwrap.dedent("\n".join(block)).splitlines(), "```", ""]
            continue
        out.append(_inline(line))
        i += 1
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- signatures -------------------------------------------------------------------------------------------------

def _annotation(a: Any) -> str:
    if a is inspect.Parameter.empty:
        return ""
    return a if isinstance(a, str) else inspect.formatannotation(a)


def signature(fn: Any, name: str, *, drop_self: bool) -> str:
    sig = inspect.signature(fn)
    parts: list[str] = []
    star_done = False
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        ann = _annotation(p.annotation)
        if ann:
            text += f": {ann}"
        if p.default is not p.empty:
            text += (" = " if ann else "=") + repr(p.default)
        parts.append(text)
    ret = _annotation(sig.return_annotation).strip("'\"")
    return f"{name}({', '.join(parts)})" + (f" -> {ret}" if ret else "")


def _kind(fn: Any) -> str:
    return "async " if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) else ""


# --- members -----------------------------------------------------------------------------------------------------

def members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties defined in ``cls`` itself, in source order."""
    for name, member in vars(cls).items():
        if name.startswith("_") or inspect.isclass(member):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property) or inspect.isfunction(member):
            yield name, member


def attributes(cls: type) -> dict[str, str]:
    """The listed plain attributes of ``cls``, each checked against the assignments in its ``__init__``."""
    listed = ATTRIBUTES.get(cls, {})
    if not listed:
        return {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
    assigned: set[str] = set()
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                    assigned.add(el.attr)
    gone = sorted(set(listed) - assigned)
    if gone:
        raise SystemExit(f"gen_api_docs: {cls.__qualname__}.__init__ no longer sets {gone}; update ATTRIBUTES")
    return listed


def constant_docs(module: Any, names: tuple[str, ...]) -> dict[str, str]:
    """Module constants documented by the string literal right after their assignment."""
    tree = ast.parse(inspect.getsource(module))
    found: dict[str, str] = {}
    body = tree.body
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.Assign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) \
                and isinstance(b.value.value, str):
            for t in a.targets:
                if isinstance(t, ast.Name) and t.id in names:
                    found[t.id] = b.value.value
    return {n: found.get(n, "") for n in names}


def documented() -> Iterator[tuple[str, Any, str | None]]:
    """Every documented callable/property as ``(qualified name, object, its own docstring)``."""
    for sec in _sections():
        for fn in sec.functions:
            yield f"{fn.__module__}.{fn.__qualname__}", fn, fn.__doc__
        for cls in sec.classes:
            yield f"{cls.__module__}.{cls.__qualname__}", cls, cls.__doc__
            for name, m in members(cls):
                doc = m.fget.__doc__ if isinstance(m, property) else m.__doc__
                yield f"{cls.__module__}.{cls.__qualname__}.{name}", m, doc
        if sec.constants:
            for name, doc in constant_docs(sec.module, sec.constants).items():
                yield f"{sec.module.__name__}.{name}", getattr(sec.module, name), doc


# --- rendering -----------------------------------------------------------------------------------------------------

def _anchor(title: str) -> str:
    a = re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")
    return a


def render_function(fn: Any, name: str, level: str) -> list[str]:
    return [f"{level} `{name}`", "", "```python", _kind(fn) + signature(fn, name, drop_self=False), "```", "",
            render_doc(fn.__doc__), ""]


def render_class(cls: type, path: str) -> list[str]:
    name = cls.__name__
    out = [f"### `{path or cls.__module__}.{name}`", ""]
    # method headings are short (Hub.create_space) except where a class name repeats across sections
    short = f"{path.rsplit('.', 1)[-1]}.{name}" if path.count(".") >= 2 else name
    is_exc = issubclass(cls, BaseException)
    if is_exc:
        bases = ", ".join(b.__name__ for b in cls.__bases__)
        out += [f"`class {name}({bases})`", ""]
    out += [render_doc(cls.__doc__), ""]
    if is_exc:
        return out
    if dataclasses.is_dataclass(cls):
        out += ["| field | type | default |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = "" if f.default is dataclasses.MISSING else f"`{f.default!r}`"
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f"`{f.default_factory.__name__}()`"  # type: ignore[misc]
            cells = [f"`{f.name}`", f"`{_annotation(f.type)}`", default]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    attrs = attributes(cls)
    if attrs:
        out += ["Attributes:", ""] + [f"- `{a}`: {text}" for a, text in attrs.items()] + [""]
    if "__enter__" in vars(cls):
        out += [f"`{name}` is a context manager (`with`): leaving the block closes it.", ""]
    if "__aenter__" in vars(cls):
        out += [f"`{name}` is an async context manager (`async with`): leaving the block closes it.", ""]
    for mname, m in members(cls):
        qual = f"{short}.{mname}"
        if isinstance(m, property):
            out += [f"#### `{qual}` (property)", "", render_doc(m.fget.__doc__), ""]
            continue
        out += [f"#### `{qual}`", "", "```python", _kind(m) + signature(m, qual, drop_self=True), "```", "",
                render_doc(m.__doc__), ""]
    return out


def generate() -> str:
    sections = _sections()
    out = [
        "# API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the code's docstrings and signatures. Do not edit:",
        "     change the docstrings and run `python scripts/gen_api_docs.py` (tests/unit/test_docs.py fails when",
        "     this file is stale). -->",
        "",
        f"embcache {embcache.__version__}. Concepts: [concepts.md](concepts.md); consistency levels: "
        "[consistency.md](consistency.md); command line: `embcache --help`.",
        "",
    ]
    out += [f"- [{s.title.replace('`', '')}](#{_anchor(s.title)})" for s in sections] + [""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        if sec.module is not None:
            out += [render_doc(sec.module.__doc__), ""]
        if sec.intro:
            out += [sec.intro, ""]
        for fn in sec.functions:
            out += render_function(fn, f"{sec.path or fn.__module__}.{fn.__name__}", "###")
        for cls in sec.classes:
            out += render_class(cls, sec.path)
        if sec.constants:
            out += ["### Constants", ""]
            for name, doc in constant_docs(sec.module, sec.constants).items():
                out.append(f"- `{name} = {getattr(sec.module, name)!r}`: {_inline(doc) if doc else MISSING}")
            out.append("")
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale; write nothing")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    text = generate()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.out), "generated",
                                    lineterm="", n=1)
        print(f"{args.out} is stale; run: python scripts/gen_api_docs.py", file=sys.stderr)
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        return 1
    args.out.write_text(text)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
