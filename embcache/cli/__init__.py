"""The ``embcache`` command line, one module per command group.

| module | commands |
|---|---|
| :mod:`~embcache.cli.app` | the group, its options, ``--version``, :func:`main` (errors to messages, exit codes) |
| :mod:`~embcache.cli.common` | the connection options of every command (before or after its name), output |
| :mod:`~embcache.cli.hints` | the table from error type to advice |
| :mod:`~embcache.cli.server` | ``redis``, ``worker`` |
| :mod:`~embcache.cli.spaces` | ``spaces``, ``create-space``, ``describe``, ``drop-space`` |
| :mod:`~embcache.cli.versions` | ``versions``, ``create-version``, ``drop-version``, ``alias``, ``promote``, |
| | ``rollback``, ``seal`` |
| :mod:`~embcache.cli.query` | ``build``, ``stats``, ``query`` |
| :mod:`~embcache.cli.access` | ``grant``, ``revoke``, ``principals``, ``rotate``, ``worker-principal`` |
| :mod:`~embcache.cli.transfer` | ``import`` (its files are read by :mod:`~embcache.cli.sources`), ``export`` |
| :mod:`~embcache.cli.bench` | ``bench`` |

Every command takes ``--url`` (or ``EMBCACHE_URL``; without either, the embedded server), ``--username``,
``--password`` or ``--password-file`` (or ``EMBCACHE_USERNAME``, ``EMBCACHE_PASSWORD``, ``EMBCACHE_PASSWORD_FILE``)
and ``--json``, before or after its name. Exit codes: 0 success, 1 error (the message on stderr says what to do),
2 bad usage, 3 ``import`` rejected some rows (the others were imported; the summary lists the reasons).
"""

from __future__ import annotations

from .app import cli, main
from .common import EXIT_REJECTED

__all__ = ["EXIT_REJECTED", "cli", "main"]
