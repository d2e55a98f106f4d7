"""The settings a worker process runs with: one object, passed down, never written into ``os.environ``.

``embcache worker`` (:func:`embcache.redis.dispatcher.run_worker`) builds a :class:`WorkerSettings` from its
arguments and installs it with :func:`use`; the job functions in ``workers/`` read :func:`current`, which falls
back to the environment (``EMBCACHE_URL``, ``EMBCACHE_USERNAME``, ``EMBCACHE_PASSWORD``) when nothing was
installed, as under a stock ``rq worker``. Forked work-horses inherit the installed object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..core.errors import InvalidInput

__all__ = ["WorkerSettings", "use", "current", "SETTLE_SECONDS", "MAX_DELAY_SECONDS", "DELTA_FROM_BYTES",
           "DELTA_SHARE", "DELTA_MIN_ROWS", "DELTA_MAX_DELAY_SECONDS", "keep_indexes", "keeps_indexes"]


#: Seconds a partition's change log must have been quiet before its build is enqueued (a bulk load in many
#: calls becomes one build, not one per call).
SETTLE_SECONDS = 0.5
#: Seconds at most between a partition's first unindexed write and its build being enqueued, however busy its
#: log: a steady write stream still gets builds.
MAX_DELAY_SECONDS = 3.0
_MAX_SECONDS = 3600.0
#: Snapshots from this size on are extended by delta segments instead of being rewritten for every build (a
#: smaller one costs about what a segment does to rewrite, and keeps one thing to read); 0 for always.
DELTA_FROM_BYTES = int(os.environ.get("EMBCACHE_DELTA_FROM_BYTES", str(8 << 20)))
#: A chain is merged into a new full snapshot once its rows would pass this share of the snapshot's items (the
#: readers' overlays grow with it; a merge rewrites the whole snapshot); 0 turns deltas off.
DELTA_SHARE = float(os.environ.get("EMBCACHE_DELTA_SHARE", "0.25"))
DELTA_MIN_ROWS = int(os.environ.get("EMBCACHE_DELTA_MIN_ROWS", "2048"))  # ... or this many rows, if more
#: ``max_delay`` for a partition whose next build is a delta segment: it costs what its writes do, so waiting
#: longer for a busy log buys nothing but staleness (a bulk load still settles: its log goes quiet).
DELTA_MAX_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    """Where a worker's data lives (``url`` None: the data is on the queue's own Redis), and how long its
    dispatcher lets a partition's writes settle before enqueuing a build (``settle_seconds``, at most
    ``max_delay_seconds`` after the first unindexed write; an explicit ``Version.build()`` does not wait)."""

    url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    settle_seconds: float = SETTLE_SECONDS
    max_delay_seconds: float = MAX_DELAY_SECONDS

    def __post_init__(self) -> None:
        for name in ("settle_seconds", "max_delay_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= _MAX_SECONDS:
                raise InvalidInput(f"{name} must be a number of seconds from 0 to {_MAX_SECONDS:.0f}, got {v!r:.40}")
        if self.max_delay_seconds < self.settle_seconds:
            raise InvalidInput(f"max_delay_seconds ({self.max_delay_seconds}) must not be less than settle_seconds "
                               f"({self.settle_seconds})")

    @classmethod
    def from_env(cls) -> "WorkerSettings":
        """``EMBCACHE_URL``, ``EMBCACHE_USERNAME``, ``EMBCACHE_PASSWORD`` (or ``EMBCACHE_PASSWORD_FILE``),
        ``EMBCACHE_BUILD_SETTLE`` and ``EMBCACHE_BUILD_MAX_DELAY`` (seconds)."""
        from .connection import env_credentials

        username, password = env_credentials()
        return cls(os.environ.get("EMBCACHE_URL") or None, username, password,
                   settle_seconds=_seconds("EMBCACHE_BUILD_SETTLE", SETTLE_SECONDS),
                   max_delay_seconds=_seconds("EMBCACHE_BUILD_MAX_DELAY", MAX_DELAY_SECONDS))


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number of seconds, got {raw[:40]!r}") from None


_installed: WorkerSettings | None = None


_keeper: int | None = None  # the pid of a worker that runs its jobs in its own process


def keep_indexes(on: bool) -> None:
    """Say that this process runs its jobs itself (``embcache worker`` without ``--fork``), so the index a job
    builds is still there for the next job: only then are delta segments worth announcing (see
    :func:`keeps_indexes`)."""
    global _keeper
    _keeper = os.getpid() if on else None


def keeps_indexes() -> bool:
    """True in a worker process that runs its jobs itself (a forked work-horse has another pid)."""
    return _keeper == os.getpid()


def use(settings: WorkerSettings | None) -> None:
    """Install the settings this process's jobs use (None: read the environment again)."""
    global _installed
    _installed = settings


def current() -> WorkerSettings:
    """The installed settings, else those of the environment."""
    return _installed if _installed is not None else WorkerSettings.from_env()
