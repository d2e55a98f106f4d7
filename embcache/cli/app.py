"""The ``embcache`` command group, its options, and :func:`main`, which turns errors into messages and exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from .. import __version__
from ..core.errors import EmbcacheError
from . import access, bench, query, server, spaces, transfer, versions
from .common import EXIT_ERROR, EXIT_USAGE, CliError, CommandFailed, Settings
from .hints import hint

__all__ = ["cli", "main"]

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _from_env(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.ENVIRONMENT


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, "--version", "-V", prog_name="embcache", message="%(prog)s %(version)s")
@click.option("--url", envvar="EMBCACHE_URL", default=None, metavar="URL",
              help="Redis URL: redis://, rediss://, unix:// (default: EMBCACHE_URL, else the embedded server)")
@click.option("--username", envvar="EMBCACHE_USERNAME", default=None,
              help="Redis ACL user (default: EMBCACHE_USERNAME)")
@click.option("--password", envvar="EMBCACHE_PASSWORD", default=None, help="its password (default: EMBCACHE_PASSWORD)")
@click.option("--password-file", envvar="EMBCACHE_PASSWORD_FILE", default=None, metavar="PATH",
              help="read the password from the first line of PATH (default: EMBCACHE_PASSWORD_FILE)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def cli(ctx: click.Context, url: str | None, username: str | None, password: str | None, password_file: str | None,
        as_json: bool) -> None:
    """embcache: an embedding hub on plain Redis.

    The connection options (--url, --username, --password, --password-file, --json) go before or after the
    command name. Exit codes: 0 success, 1 error (the message says what to do), 2 bad usage, 3 `import` rejected
    some rows (the others were imported).
    """
    if password is not None and password_file is not None:  # one from the command line beats the environment's
        if _from_env(ctx, "password_file") and not _from_env(ctx, "password"):
            password_file = None
        elif _from_env(ctx, "password") and not _from_env(ctx, "password_file"):
            password = None
    ctx.obj = Settings(url=url or None, username=username, password=password, password_file=password_file,
                       json=as_json)


for _command in (
    server.redis_command, server.worker_command,
    spaces.spaces, spaces.create_space, spaces.describe, spaces.drop_space,
    versions.versions, versions.create_version, versions.drop_version, versions.alias, versions.promote,
    versions.rollback, versions.seal,
    query.build, query.stats, query.query,
    access.grant, access.revoke, access.principals, access.rotate, access.worker_principal,
    transfer.import_, transfer.export,
    bench.bench,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embcache`` command: the exit code (bad usage raises ``SystemExit(2)``)."""
    # the embedded server stays up 10 minutes after the last command that used it, so that a sequence of
    # commands shares one (issue 13.10); a library connect() keeps the default of 0
    os.environ.setdefault("EMBCACHE_LINGER", "600")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rc: Any = cli.main(args=args, prog_name="embcache", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        raise SystemExit(EXIT_USAGE) from None
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 130
    except CommandFailed as failed:
        err = failed.error
        advice = hint(err, failed.space)
        print(f"embcache: {type(err).__name__}: {err}" + (f"\n  ({advice})" if advice else ""), file=sys.stderr)
        return EXIT_ERROR
    except (EmbcacheError, CliError, OSError) as exc:  # OSError: a file that cannot be read or written
        print(f"embcache: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return rc if isinstance(rc, int) else 0
