"""The settings a worker process runs with: one object, passed down, never written into ``os.environ``.

``embcache worker`` (:func:`embcache.redis.dispatcher.run_worker`) builds a :class:`WorkerSettings` from its
arguments and installs it with :func:`use`; the job functions in ``workers/`` read :func:`current`, which falls
back to the environment (``EMBCACHE_URL``, ``EMBCACHE_USERNAME``, ``EMBCACHE_PASSWORD``) when nothing was
installed, as under a stock ``rq worker``. Forked work-horses inherit the installed object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["WorkerSettings", "use", "current"]


@dataclass(frozen=True)
class WorkerSettings:
    """Where a worker's data lives. ``url`` None: the data is on the queue's own Redis."""

    url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> "WorkerSettings":
        """``EMBCACHE_URL``, ``EMBCACHE_USERNAME``, ``EMBCACHE_PASSWORD`` (or ``EMBCACHE_PASSWORD_FILE``)."""
        from .connection import env_credentials

        username, password = env_credentials()
        return cls(os.environ.get("EMBCACHE_URL") or None, username, password)


_installed: WorkerSettings | None = None


def use(settings: WorkerSettings | None) -> None:
    """Install the settings this process's jobs use (None: read the environment again)."""
    global _installed
    _installed = settings


def current() -> WorkerSettings:
    """The installed settings, else those of the environment."""
    return _installed if _installed is not None else WorkerSettings.from_env()
