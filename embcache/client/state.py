"""What a hub remembers between calls, behind two small interfaces that Space and Version use.

- :class:`KnownPartitions`: the partition list of each version this hub reads or writes, kept current by the
  cache's refresher thread, and which partitions this hub has registered in the catalogue.
- :class:`SessionWrites`: this hub's own writes that the loaded bases do not cover yet, for ``session`` reads.

Partitions are named by ``pid = (space, version, partition)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..core.views import Overlay, pos_key
from ..redis.catalogue import Catalogue
from ..redis.plan import Plan

__all__ = ["KnownPartitions", "SessionWrites", "SESSION_ITEMS", "Pid"]

Pid = tuple[str, str, str]
SESSION_ITEMS = 10_000  # own writes per partition kept in memory for session reads


class KnownPartitions:
    """Partition lists of versions, read from the catalogue once and then refreshed in the background."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._lists: dict[tuple[str, str], list[str]] = {}
        self._registered: set[Pid] = set()

    def cached(self, space: str, version: str) -> list[str] | None:
        """The list as last read (no I/O); None when this hub has not read it yet."""
        return self._lists.get((space, version))

    def set(self, space: str, version: str, partitions: list[str]) -> None:
        """Replace the list with one just read from Redis (sorted)."""
        self._lists[(space, version)] = partitions

    def get(self, space: str, version: str, fresh: bool) -> Plan[list[str]]:
        """The version's partitions; ``fresh=False`` accepts the cached list."""
        parts = None if fresh else self._lists.get((space, version))
        if parts is None:
            parts = yield from self.catalogue.partitions.plan(self.catalogue, space, version)
            self._lists[(space, version)] = parts
        return parts

    def register(self, pid: Pid) -> Plan[bool]:
        """Record the partition in the catalogue (once per hub: registration is idempotent in Redis); True when
        this call added it to the catalogue."""
        if pid in self._registered:
            return False
        space, version, partition = pid
        added = yield from self.catalogue.register_partition.plan(self.catalogue, space, version, partition)
        self._registered.add(pid)
        parts = self._lists.get((space, version))
        if parts is not None and partition not in parts:
            self._lists[(space, version)] = sorted([*parts, partition])
        return bool(added)

    def unregister_empty(self, pid: Pid) -> Plan[None]:
        """Undo :meth:`register` after the partition's first write was refused (see
        :meth:`~embcache.redis.catalogue.Catalogue.unregister_empty`)."""
        space, version, partition = pid
        yield from self.catalogue.unregister_empty.plan(self.catalogue, space, version, partition)
        self._registered.discard(pid)
        parts = self._lists.get((space, version))
        if parts is not None and partition in parts:
            self._lists[(space, version)] = [p for p in parts if p != partition]

    def refresh(self) -> None:
        """Re-read every cached list (one round trip on a standalone server); the refresher thread calls it."""
        keys = list(self._lists)
        if keys:
            for key, parts in zip(keys, self.catalogue.partition_lists(keys)):
                self._lists[key] = parts

    def drop(self, match: Callable[[Pid], bool]) -> None:
        """Forget the registrations of every partition ``match`` accepts (its space or version was dropped)."""
        self._registered = {p for p in self._registered if not match(p)}


class SessionWrites:
    """This hub's own writes per partition, until a loaded base covers them (``session`` consistency).

    Past ``SESSION_ITEMS`` items per partition the copies are dropped and ``session`` reads the log tail instead,
    until a base catches up. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writes: dict[Pid, Overlay] = {}
        self._overflow: dict[Pid, str] = {}

    def remember(self, pid: Pid, items: Overlay, pos: str, overflow: bool = False) -> None:
        """Keep this hub's write of ``items`` at log position ``pos``; ``overflow``: too many to keep."""
        with self._lock:
            ov = self._writes.setdefault(pid, {})
            ov.update(items)
            if overflow or len(ov) > SESSION_ITEMS:
                ov.clear()
                self._overflow[pid] = pos

    def overlay(self, pid: Pid, base_pos: str) -> Overlay | None:
        """This hub's writes newer than ``base_pos``; None when they are not all in memory (read the tail)."""
        covered = pos_key(base_pos)
        with self._lock:
            overflow = self._overflow.get(pid)
            if overflow is not None:
                if pos_key(overflow) > covered:
                    return None
                del self._overflow[pid]
            ov = self._writes.get(pid)
            if not ov:
                return {}
            for i in [i for i, it in ov.items() if pos_key(it.pos) <= covered]:
                del ov[i]
            return dict(ov)

    def drop(self, match: Callable[[Pid], bool]) -> None:
        """Forget the writes of every partition ``match`` accepts."""
        with self._lock:
            for pid in [p for p in self._writes if match(p)]:
                del self._writes[pid]
