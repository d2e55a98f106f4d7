"""Asking workers for snapshots and watching them arrive: :meth:`Version.build` and :meth:`Version.stats`.

The client never enqueues RQ jobs: it marks partitions dirty and watches each partition's manifest until its
change-log position reaches the position the partition had when the build was asked for.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import snapshot
from ..core.delta import Chain, extending
from ..core.errors import BuildTimeout, SnapshotCorrupt
from ..core.keys import PartitionKeys
from ..core.views import pos_key
from .plan import Batch, Call, Plan, Sleep
from .store import Store, translate_errors

__all__ = ["BuildHandle", "PartitionStats", "partition_stats"]


@dataclass
class BuildHandle:
    """Progress of a requested build. ``targets`` maps partition -> the log position the snapshot must reach."""

    store: Store
    keys: dict[str, PartitionKeys]
    targets: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    done_parts: set[str] = field(default_factory=set)

    def progress(self) -> tuple[int, int]:
        """``(partitions done, partitions asked)``; one round trip per partition not yet done."""
        return self.store.run(self.progress_plan())

    def progress_plan(self) -> Plan[tuple[int, int]]:
        """:meth:`progress` as a plan (the asyncio client runs it)."""
        with translate_errors("build progress"):
            for p, target in self.targets.items():
                if p in self.done_parts:
                    continue
                try:
                    m, chain = yield from _published(self.keys[p])
                except SnapshotCorrupt:  # unreadable: not done, the workers rebuild it
                    continue
                if m is not None and pos_key(chain.pos if chain is not None else m.pos) >= pos_key(target):
                    self.done_parts.add(p)
        return len(self.done_parts), len(self.targets)

    @property
    def done(self) -> bool:
        """True when every partition's snapshot covers its target (asks Redis)."""
        d, n = self.progress()
        return d == n

    def wait(self, timeout: float | None = 600.0, on_progress: Callable[[int, int], None] | None = None,
             poll: float = 0.05) -> "BuildHandle":
        """Block until every partition's snapshot covers its target; :class:`BuildTimeout` after ``timeout``."""
        return self.store.run(self.wait_plan(timeout, on_progress, poll))

    def wait_plan(self, timeout: float | None = 600.0, on_progress: Callable[[int, int], None] | None = None,
                  poll: float = 0.05) -> Plan["BuildHandle"]:
        """:meth:`wait` as a plan (the asyncio client runs it, sleeping with ``asyncio.sleep``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = (-1, -1)
        while True:
            now = yield from self.progress_plan()
            if now != last and on_progress is not None:
                on_progress(*now)
            last = now
            if now[0] == now[1]:
                return self
            if deadline is not None and time.monotonic() > deadline:
                pending = sorted(set(self.targets) - self.done_parts)
                raise BuildTimeout(
                    f"snapshots of {len(pending)} partition(s) ({', '.join(pending[:5])}) did not catch up within "
                    f"{timeout}s; is an embcache worker running on this hub?"
                )
            yield Sleep(poll)


@dataclass
class PartitionStats:
    """Health of one partition's index."""

    partition: str
    count: int
    generation: int | None
    snapshot_count: int | None
    tombstones: int
    snapshot_age_seconds: float | None
    unindexed_entries: int
    last_build_seconds: float | None
    corrupt: str | None
    snapshot_bytes: int
    delta_segments: int = 0  # delta segments published after the snapshot (issue 12.3)
    delta_rows: int = 0  # the rows they hold (a merge into a new snapshot is due past a share of the snapshot)
    delta_bytes: int = 0
    indexed_pos: str | None = None  # the log position the snapshot and its deltas cover
    leftover_uploads: int = 0  # chunk sets of builds killed before publication, still in Redis
    leftover_bytes: int = 0  # their size (they expire within ORPHAN_TTL, or at the partition's next build)
    follow: dict[str, Any] | None = None  # this hub's live overlay of the partition (Version.stats fills it in)


STATS_LAG_CAP = 100_000  # log entries stats count one by one; past it the count is XLEN (an upper bound)


def _manifest(pk: PartitionKeys) -> Plan[snapshot.Manifest | None]:
    """The published manifest, verified on its own (:class:`SnapshotCorrupt` if unreadable); None if none."""
    raw = yield Call("get", pk.snap)
    return None if raw is None else snapshot.Manifest.from_json(raw)


def _published(pk: PartitionKeys) -> Plan[tuple[snapshot.Manifest | None, Chain | None]]:
    """The published manifest and the delta chain that extends it (None when there is none, or it extends an
    older snapshot); :class:`SnapshotCorrupt` if the manifest is unreadable (an unreadable chain counts as none)."""
    raw, raw_chain = yield Batch([Call("get", pk.snap), Call("get", pk.delta)])
    m = None if raw is None else snapshot.Manifest.from_json(raw)
    chain = None
    if m is not None:
        with contextlib.suppress(SnapshotCorrupt):
            chain = extending(raw_chain, m.sid, m.pos, None)
    return m, chain


def partition_stats(store: Store, partition: str, pk: PartitionKeys) -> Plan[PartitionStats]:
    """One partition's stats (a few round trips)."""
    with translate_errors("stats"):
        count = int((yield Call("hlen", pk.vec)))
        chain = None
        try:
            m, chain = yield from _published(pk)
            unreadable = None
        except SnapshotCorrupt as exc:
            m, unreadable = None, str(exc)
        raw_state = yield Call("hgetall", pk.state)
        state = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw_state.items()}
        uploads = snapshot.pending_uploads(state)
        alive = (yield Batch([Call("exists", pk.chunk(sid, 0)) for sid in uploads])) if uploads else []
        leftovers = [size for (sid, (_, size)), there in zip(uploads.items(), alive)
                     if there and (m is None or sid != m.sid)]
    indexed = chain.pos if chain is not None else m.pos if m else None
    lag = yield from store.unindexed.plan(pk, indexed or "0-0", STATS_LAG_CAP)
    segments = chain.segments if chain is not None else ()
    return PartitionStats(
        partition=partition, count=count, generation=m.generation if m else None,
        snapshot_count=m.count if m else None, tombstones=m.deleted if m else 0,
        snapshot_age_seconds=round(time.time() - m.built_at, 3) if m else None, unindexed_entries=lag,
        last_build_seconds=m.build_seconds if m else None, corrupt=unreadable or state.get("corrupt"),
        snapshot_bytes=m.nbytes if m else 0, delta_segments=len(segments),
        delta_rows=sum(s.rows for s in segments), delta_bytes=sum(s.nbytes for s in segments), indexed_pos=indexed,
        leftover_uploads=len(leftovers), leftover_bytes=sum(leftovers),
    )
