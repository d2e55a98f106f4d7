"""RQ job functions. Plain arguments only; a stock ``rq worker embcache`` runs them, so does ``embcache worker``.

The data Redis comes from the settings ``embcache worker`` installed in the process
(:mod:`embcache.redis.settings`), else from the worker's environment (``EMBCACHE_URL``, ``EMBCACHE_USERNAME``,
``EMBCACHE_PASSWORD``, ``EMBCACHE_PREFIX``), never from the job's arguments: a job hash holds no secret, and
when no URL is set the data is taken to live on the queue's own Redis.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from embcache.core.errors import CorruptRecord, NotFound
from embcache.core.keys import Keys
from embcache.redis import metrics, settings
from embcache.redis.catalogue import Catalogue
from embcache.redis.dispatcher import LEASE_SECONDS
from embcache.redis.store import Store, open_client

from .build import build_snapshot
from .vgraph import update_version_graph

__all__ = ["build_partition", "LEASE_SECONDS"]

log = logging.getLogger("embcache.workers")

_stores: dict[tuple[str, str], Store] = {}


def data_store(prefix: str | None = None) -> Store:
    """The worker's connection to the data Redis (cached per process)."""
    prefix = prefix or os.environ.get("EMBCACHE_PREFIX", "emb")
    conf = settings.current()
    url = conf.url
    key = (url or "", prefix)
    store = _stores.get(key)
    if store is None:
        if url:
            client = open_client(url, username=conf.username, password=conf.password)
        else:
            from rq import get_current_job

            job = get_current_job()
            if job is None:
                raise RuntimeError("EMBCACHE_URL is not set and no RQ job is running")
            client = job.connection
        store = Store(client, Keys(prefix))
        store.ensure_functions()
        _stores[key] = store
    return store


class Lease:
    """A TTL key in the partition's slot that says a build is running; kept alive by a thread, so a killed
    worker's lease lapses after ``LEASE_SECONDS`` and the dispatcher schedules the build again."""

    def __init__(self, r: Any, key: str, seconds: float = LEASE_SECONDS) -> None:
        self.r, self.key, self.ms = r, key, int(seconds * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> "Lease":
        self.r.set(self.key, os.getpid(), px=self.ms)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ms / 3000):
            self.r.pexpire(self.key, self.ms)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.r.delete(self.key)


def build_partition(space: str, version: str, partition: str, full: bool = False,
                    prefix: str | None = None) -> dict[str, Any]:
    """Build or update the snapshot of one partition and publish it. Returns what was done.

    A partition that is not in the catalogue (a junk dirty mark, or one dropped since) is skipped: nothing is
    built or published for it, so nothing is left that ``drop_space`` would not remove. A record that fails
    validation (:class:`CorruptRecord`: a space record out of bounds or not its key's, a sealed partition
    changed since its seal) is not retried: the job returns ``kind="refused"`` and logs why, since running it
    again would find the same data."""
    store = data_store(prefix)
    try:
        exists = Catalogue(store).has_partition(space, version, partition)
    except NotFound:
        exists = False
    if not exists:
        log.warning("skipped the build of %s/%s/%s: no such partition in the catalogue", space, version, partition)
        return {"partition": partition, "kind": "skipped", "reason": "not in the catalogue"}
    pk = store.keys.partition(space, version, partition)
    try:
        record = Catalogue(store).get_space(space)
        with Lease(store.r, pk.lease):
            result = build_snapshot(store, record, version, partition, full=full)
        if result.kind != "delta":  # the graph of all partitions, for all-partition queries; a delta segment
            update_version_graph(store, record, version)  # leaves it to the merge (it rewrites the whole graph)
    except CorruptRecord as exc:
        log.error("build of %s refused: %s", pk.tag, exc)
        return {"partition": partition, "kind": "refused", "reason": str(exc)}
    if metrics.ENABLED:
        metrics.observe_build(space, result.kind, result.seconds)
    return result.as_dict()
