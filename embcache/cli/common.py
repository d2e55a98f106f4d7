"""What every command shares: the connection options (accepted before or after the command name), output as a
table or JSON, progress bars, and :class:`CliError` for problems with the command's files or options."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace
from typing import Any, TypeVar

import click
import numpy as np

from ..core.errors import EmbcacheError

__all__ = [
    "CliError",
    "CommandFailed",
    "EXIT_ERROR",
    "EXIT_REJECTED",
    "EXIT_USAGE",
    "Settings",
    "connection_options",
    "format_table",
    "hub",
    "out",
    "plain",
    "progress",
    "target_version",
]

EXIT_ERROR = 1  # an error: the message on stderr says what to do
EXIT_USAGE = 2  # bad usage (an unknown option, a missing argument)
EXIT_REJECTED = 3  # import: some rows were rejected (the others were imported); see the summary

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """A problem with the command's files or options: ``embcache: <message>`` on stderr, exit code 1."""


class CommandFailed(Exception):
    """An embcache error in a command, with the space the command was about (for the hint)."""

    def __init__(self, error: EmbcacheError, space: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.space = space


@dataclass(frozen=True)
class Settings:
    """How to reach the hub and how to print: from the options given before the command name (or the
    environment), overridden by those given after it."""

    url: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    json: bool = False

    def merged(self, **given: Any) -> "Settings":
        """These settings with the command's own options where it was given them (``None``/``False``: not).
        A password given to the command replaces a password file given before it, and the other way round."""
        given = {k: v for k, v in given.items() if v is not None and v is not False}
        if "password" in given:
            given.setdefault("password_file", None)
        elif "password_file" in given:
            given["password"] = None
        return replace(self, **given)

    def credentials(self) -> tuple[str | None, str | None]:
        """``(username, password)``, the password read from :attr:`password_file` when one is named."""
        if self.password_file is None:
            return self.username, self.password
        if self.password is not None:
            raise CliError("give --password or --password-file, not both")
        from ..redis.connection import read_password_file  # first line, size-bounded; InvalidInput otherwise

        return self.username, read_password_file(self.password_file)


_CONNECTION_OPTIONS = (
    click.option("--url", default=None, metavar="URL",
                 help="Redis URL: redis://, rediss://, unix:// (default: EMBCACHE_URL, else the embedded server)"),
    click.option("--username", default=None, help="Redis ACL user (default: EMBCACHE_USERNAME)"),
    click.option("--password", default=None, help="its password (default: EMBCACHE_PASSWORD)"),
    click.option("--password-file", default=None, metavar="PATH",
                 help="read the password from the first line of PATH (default: EMBCACHE_PASSWORD_FILE)"),
    click.option("--json", "as_json", is_flag=True, default=False, help="machine-readable output"),
)


def connection_options(fn: F) -> F:
    """Give a command the connection options, so that they work after its name too; the command receives the
    merged :class:`Settings` as ``settings``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, url: str | None, username: str | None, password: str | None,
                password_file: str | None, as_json: bool, **kwargs: Any) -> Any:
        base: Settings = click.get_current_context().find_object(Settings) or Settings()
        settings = base.merged(url=url, username=username, password=password, password_file=password_file,
                               json=as_json)
        try:
            return fn(*args, settings=settings, **kwargs)
        except EmbcacheError as exc:
            raise CommandFailed(exc, kwargs.get("space")) from exc

    for option in reversed(_CONNECTION_OPTIONS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def hub(settings: Settings) -> Any:  # an embcache.Hub, imported late: `embcache --help` stays fast
    """Connect to the hub the settings name."""
    from ..client.hub import connect

    username, password = settings.credentials()
    return connect(settings.url, username=username, password=password)


def out(settings: Settings, data: Any, table: Callable[[Any], str] | None = None) -> None:
    """Print ``data`` as JSON (``--json``, or when there is no table form), else as ``table(data)``."""
    if settings.json or table is None:
        print(json.dumps(plain(data), indent=2, default=str))
    else:
        print(table(data))


def plain(x: Any) -> Any:
    """``x`` with dataclasses, tuples and numpy values turned into JSON's types."""
    if is_dataclass(x) and not isinstance(x, type):
        return plain(asdict(x))
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
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

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def target_version(space: Any, name: str | None) -> Any:
    """The version ``name`` (a version or an alias) of ``space``; without a name, live, else the newest."""
    return space.version(name) if name else space.default_version()


class _Progress:
    """A callable ``(done, total)`` that draws a progress bar on stderr (when it is a terminal)."""

    def __init__(self, desc: str, unit: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())

    def __call__(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def progress(desc: str, unit: str = "it") -> _Progress:
    """A progress callback for ``Version.build(on_progress=...)``; call ``.close()`` when done."""
    return _Progress(desc, unit)
