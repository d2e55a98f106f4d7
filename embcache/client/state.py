"""What a hub remembers between calls, behind two small interfaces that Space and Version use.

- :class:`KnownPartitions`: the partition list of each version this hub reads or writes, kept current by the
  cache's refresher thread, and which partitions this hub has registered in the catalogue.
- :class:`SessionWrites`: this hub's own writes that the loaded bases do not cover yet, for ``session`` reads.

Partitions are named by ``pid = (space, version, partition)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

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
        """Replace the list with one just read from Redis (sorted); an equal list keeps the old one (query routes
        compare it by identity)."""
        if partitions != self._lists.get((space, version)):
            self._lists[(space, version)] = partitions

    def get(self, space: str, version: str, fresh: bool) -> Plan[list[str]]:
        """The version's partitions; ``fresh=False`` accepts the cached list."""
        parts = None if fresh else self._lists.get((space, version))
        if parts is None:
            parts = yield from self.catalogue.partitions.plan(space, version)
            self.set(space, version, parts)
        return parts

    def register(self, pid: Pid) -> Plan[bool]:
        """Record the partition in the catalogue (once per hub: registration is idempotent in Redis); True when
        this call added it to the catalogue."""
        if pid in self._registered:
            return False
        space, version, partition = pid
        added = yield from self.catalogue.register_partition.plan(space, version, partition)
        self._registered.add(pid)
        parts = self._lists.get((space, version))
        if parts is not None and partition not in parts:
            self._lists[(space, version)] = sorted([*parts, partition])
        return bool(added)

    def unregister_empty(self, pid: Pid) -> Plan[None]:
        """Undo :meth:`register` after the partition's first write was refused (see
        :meth:`~embcache.redis.catalogue.Catalogue.unregister_empty`)."""
        space, version, partition = pid
        yield from self.catalogue.unregister_empty.plan(space, version, partition)
        self._registered.discard(pid)
        parts = self._lists.get((space, version))
        if parts is not None and partition in parts:
            self._lists[(space, version)] = [p for p in parts if p != partition]

    def refresh(self) -> None:
        """Re-read every cached list (one round trip on a standalone server); the refresher thread calls it."""
        keys = list(self._lists)
        if keys:
            for key, parts in zip(keys, self.catalogue.partition_lists(keys)):
                if parts != self._lists.get(key):  # an unchanged list keeps its identity: query routes check it
                    self._lists[key] = parts

    def drop(self, match: Callable[[Pid], bool]) -> None:
        """Forget the registrations of every partition ``match`` accepts (its space or version was dropped)."""
        self._registered = {p for p in self._registered if not match(p)}


class SessionWrites:
    """This hub's own writes per partition, until the loaded bases cover them (``session`` consistency).

    Past ``SESSION_ITEMS`` items per partition the copies are dropped and ``session`` reads the log tail instead,
    until a base catches up. Copies are dropped once every *loaded* base of the partition covers them (the caller
    says which position that is); a per-partition *floor* remembers up to where copies may be missing (dropped,
    or never kept for a bulk write), so a base older than it (a version graph loaded later, say) reads the tail
    instead of missing a write. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writes: dict[Pid, Overlay] = {}
        self._floor: dict[Pid, tuple[int, int]] = {}
        self._live: dict[tuple[str, str], set[str]] = {}  # partitions holding copies, per version
        self._floors: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}  # floors, per version
        self._epoch = 0  # bumped when a floor moves: cached floor checks are then stale
        self._checks: dict[tuple[object, ...], list[str]] = {}
        # bumped after every change (a route reads it before looking at the writes): a route checked against one
        # stamp is stale after it
        self.stamp = 0

    def remember(self, pid: Pid, items: Overlay, pos: str, overflow: bool = False) -> None:
        """Keep this hub's write of ``items`` at log position ``pos``; ``overflow``: too many to keep."""
        with self._lock:
            ov = self._writes.setdefault(pid, {})
            ov.update(items)
            self._live.setdefault(pid[:2], set()).add(pid[2])
            if overflow or len(ov) > SESSION_ITEMS:
                ov.clear()
                self._raise_floor(pid, pos_key(pos))
            self.stamp += 1

    def _raise_floor(self, pid: Pid, floor: tuple[int, int]) -> None:
        if floor > self._floor.get(pid, (0, 0)):
            self._floor[pid] = floor
            self._floors.setdefault(pid[:2], {})[pid[2]] = floor
            self._epoch += 1

    def overlay(self, pid: Pid, base_pos: str, oldest: str | None = None) -> Overlay | None:
        """This hub's writes newer than ``base_pos``; None when they are not all in memory (read the tail).
        ``oldest``: the oldest position any loaded base of the partition covers (copies up to it are dropped)."""
        if pid not in self._writes and pid not in self._floor:
            return {}  # nothing of this hub's own in this partition (the common case, checked without the lock)
        covered = pos_key(base_pos)
        with self._lock:
            if self._floor.get(pid, (0, 0)) > covered:
                return None
            ov = self._writes.get(pid)
            if not ov:
                if ov is not None:  # emptied by an overflow that this base now covers
                    del self._writes[pid]
                    self._live.get(pid[:2], set()).discard(pid[2])
                    self.stamp += 1
                return {}
            prune = min(covered, pos_key(oldest)) if oldest is not None else covered
            gone = [i for i, it in ov.items() if pos_key(it.pos) <= prune]
            if gone:
                for i in gone:
                    del ov[i]
                self._raise_floor(pid, prune)
                if not ov:
                    del self._writes[pid]
                    self._live.get(pid[:2], set()).discard(pid[2])
                self.stamp += 1
            return {i: it for i, it in ov.items() if pos_key(it.pos) > covered}

    def quiet(self, pid: Pid, base_pos: str) -> bool:
        """True when a base at ``base_pos`` holds every write of this hub to the partition: no copies are kept and
        none were dropped above it (a session read then has nothing to merge)."""
        return pid not in self._writes and self._floor.get(pid, (0, 0)) <= pos_key(base_pos)

    def candidates(self, space: str, version: str, parts: list[str], position: Callable[[str], str],
                   base: object) -> list[str]:
        """Which of ``parts`` (served by ``base``, whose position for a partition is ``position(p)``) may have
        session state to merge: those holding copies, and those whose floor lies above the base's position
        (checked once per base and change of floors, not per query)."""
        live = self._live.get((space, version))
        out = [p for p in parts if p in live] if live else []
        floors = self._floors.get((space, version))
        if floors:
            key = (id(base), getattr(base, "generation", None), tuple(parts), self._epoch)
            above = self._checks.get(key)
            if above is None:
                wanted = set(parts)
                above = [p for p, f in list(floors.items()) if p in wanted and f > pos_key(position(p))]
                if len(self._checks) > 256:
                    self._checks.clear()
                self._checks[key] = above
            out += [p for p in above if p not in set(out)]
        return out

    def lookup(self, pids: list[Pid], ids: list[str],
               base_position: Callable[[Pid], str | None]) -> tuple[dict[str, Any], set[str]] | None:
        """This hub's latest copies of ``ids`` in ``pids``: ``(id -> vector, ids it deleted)``; None when some of
        its writes there are in no loaded base and no longer in memory (Redis knows best). ``base_position``
        gives the position of the partition's loaded base (None when none is loaded)."""
        found: dict[str, Any] = {}
        deleted: set[str] = set()
        with self._lock:
            for pid in pids:
                floor = self._floor.get(pid)
                if floor is not None and pid not in self._writes:
                    continue  # copies dropped because a loaded base covers them: the bases answer
                if floor is not None:
                    # copies up to the floor were dropped: fine when the loaded base covers them
                    pos = base_position(pid)
                    if pos is None or floor > pos_key(pos):
                        return None
                ov = self._writes.get(pid, {})
                for i in ids:
                    it = ov.get(i)
                    if it is not None:
                        if it.vector is None:
                            deleted.add(i)
                        else:
                            found[i] = it.vector
        return found, deleted

    def drop(self, match: Callable[[Pid], bool]) -> None:
        """Forget the writes of every partition ``match`` accepts."""
        with self._lock:
            for pid in [p for p in self._writes if match(p)]:
                del self._writes[pid]
            for pid in [p for p in self._floor if match(p)]:
                del self._floor[pid]
                self._floors.get(pid[:2], {}).pop(pid[2], None)
                self._live.get(pid[:2], set()).discard(pid[2])
            self._epoch += 1
            self.stamp += 1
