"""The strong probe: the one question a ``strong`` query on the serving path asks Redis, sent before the search and
read after it, so the round trip overlaps the search.

The question is the log position of each partition the query reads (``HGET <state> pos``) and, for a query
over all partitions, its version's partition list (``SMEMBERS <parts>``): when every position equals the one
its loaded base covers and the list is unchanged, the bases alone answer the query exactly as of its start.

>>> probes = StrongProbes(store.r)                 # one per hub; owns the connection the probes use
>>> probe = probes.prepare([pk.state], keys.parts(space, version))   # per set of partitions; keep it
>>> pending = probe.send()                         # non-blocking: the commands are on the wire
>>> ...                                            # search the loaded bases meanwhile
>>> positions, partitions = pending.read()         # call exactly once, also when the search raised

This is redis-py's connection layer used directly (``pack_commands``, ``send_packed_command``,
``read_response``): taking a connection from redis-py's pool and building the commands cost more than the probe
itself. The hub keeps one connection for probes; a query that finds it busy (another thread probing) takes a
pooled one and gives it back. A failed read disconnects the connection, so it never falls out of step with its
replies. Standalone Redis only (on Cluster the two keys live in different slots and nodes).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .catalogue import valid_names
from .store import translate_errors

__all__ = ["StrongProbes", "StrongProbe", "PendingProbe"]


class StrongProbes:
    """The hub's probe channel: the connection it keeps for strong probes, and the lock that gives it to one
    query at a time. ``client`` is the hub's (standalone) ``redis.Redis``."""

    def __init__(self, client: Any) -> None:
        self._pool: Any = getattr(client, "connection_pool", None)  # None on Cluster, where no probe is sent
        self._lock = threading.Lock()
        self._conn: Any = None

    def prepare(self, state_keys: Sequence[str], parts_key: str | None) -> "StrongProbe":
        """A probe of some partitions (their state hashes ``state_keys``) and, unless None, their version's
        partition set ``parts_key``; cheap to keep, one per set of partitions: it packs its commands once."""
        return StrongProbe(self, state_keys, parts_key)

    def close(self) -> None:
        """Give the kept connection back to the pool."""
        if self._conn is not None:
            self._pool.release(self._conn)
            self._conn = None

    def _done(self, own: bool, conn: Any, failed: bool = False) -> None:
        if own:
            if failed and self._conn is not None:
                self._pool.release(self._conn)
                self._conn = None
            self._lock.release()
        elif conn is not None:
            self._pool.release(conn)


class StrongProbe:
    """The probe of some partitions; :meth:`send` puts it on the wire. Made by :meth:`StrongProbes.prepare`."""

    __slots__ = ("_probes", "_commands", "_packed", "_n", "_members")

    def __init__(self, probes: StrongProbes, state_keys: Sequence[str], parts_key: str | None) -> None:
        self._probes = probes
        self._commands: list[tuple[str, ...]] = [("HGET", k, "pos") for k in state_keys]
        self._n, self._members = len(self._commands), parts_key is not None
        if parts_key is not None:
            self._commands.append(("SMEMBERS", parts_key))
        self._packed: Any = None

    def send(self) -> "PendingProbe":
        """Send the probe without waiting; :class:`~embcache.errors.Unavailable` (and the rest of the error
        tree) if Redis cannot be reached. The returned :class:`PendingProbe` must be read exactly once."""
        probes = self._probes
        own = probes._lock.acquire(blocking=False)
        with translate_errors("strong read"):
            try:
                conn = probes._conn if own and probes._conn is not None else probes._pool.get_connection()
                if self._packed is None:
                    self._packed = conn.pack_commands(self._commands)
                conn.send_packed_command(self._packed)
            except BaseException:
                probes._done(own, None, failed=True)
                raise
        if own:
            probes._conn = conn
        return PendingProbe(probes, own, conn, self._n, self._members)


class PendingProbe:
    """A sent probe; :meth:`read` waits for its answer."""

    __slots__ = ("_probes", "_own", "_conn", "_n", "_members")

    def __init__(self, probes: StrongProbes, own: bool, conn: Any, n: int, members: bool) -> None:
        self._probes, self._own, self._conn, self._n, self._members = probes, own, conn, n, members

    def read(self) -> tuple[list[str], list[str] | None]:
        """``(log position of each partition, sorted partition names or None when not asked)``; a position is
        ``"0-0"`` before the first write. Releases the connection (disconnected first if the read failed)."""
        probes, own, conn = self._probes, self._own, self._conn
        try:
            with translate_errors("strong read"):
                positions = [conn.read_response() for _ in range(self._n)]
                members = conn.read_response() if self._members else None
        except BaseException:
            conn.disconnect()
            probes._done(own, conn, failed=True)
            raise
        probes._done(own, conn)
        return ([(p.decode() if p else "0-0") for p in positions],
                None if members is None else valid_names(members, "partition name"))
