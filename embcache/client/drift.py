"""``Space.compare`` and the drift check of ``Space.promote``: two versions of one space side by side, through
the public reads (``ids``, ``get``, ``query``) of each. The statistics are :mod:`embcache.core.drift`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ..core.drift import DriftReport, drift_report, overlaps
from ..core.errors import InvalidInput
from ..redis.plan import Plan
from ..redis.store import Store

if TYPE_CHECKING:
    from .hub import Space, Version

__all__ = ["compare", "check_max_drift", "MAX_SAMPLE", "MAX_K", "MAX_ITEMS"]

MAX_SAMPLE = 100_000  # shared items whose neighbourhoods are compared at most
MAX_K = 1000  # neighbours per item at most
MAX_ITEMS = 10_000_000  # ids read per version at most (their sets are held in memory)
_BATCH = 1000  # items read and searched per call


def _positive_int(value: object, name: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= hi:
        raise InvalidInput(f"{name} must be an integer in [1, {hi}], got {value!r}")
    return int(value)


def check_max_drift(max_drift: object) -> float | None:
    """``max_drift`` as a float in ``[0, 1]``, or None."""
    if max_drift is None:
        return None
    if isinstance(max_drift, bool) or not isinstance(max_drift, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(max_drift) <= 1.0:
        raise InvalidInput(f"max_drift must be a number in [0, 1] (1 - the mean neighbour overlap), got {max_drift!r}")
    return float(max_drift)


def _ids(v: "Version") -> Plan[set[str]]:
    out: set[str] = set()
    for p in (yield from v._partitions_arg(None)):
        cursor = None
        while cursor != 0:
            cursor, page = yield from Store.id_page(v._pk(p), cursor or 0, _BATCH)
            out.update(page)
            if len(out) > MAX_ITEMS:
                raise InvalidInput(f"version {v.name} has more than {MAX_ITEMS} items: too many to compare here")
    return out


def _neighbours(v: "Version", ids: list[str], k: int, ef: int | None,
                consistency: str) -> Plan[tuple[np.ndarray, list[list[str]]]]:
    """The stored vectors of ``ids`` in ``v`` and their ``k + 1`` nearest neighbours there."""
    vectors, found = [], []
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start:start + _BATCH]
        got = yield from v._get(chunk, ("embeddings",), None)
        if got.ids != chunk:  # deleted between the listing and now: refuse rather than compare the wrong items
            gone = next(i for i in chunk if i not in set(got.ids))
            raise InvalidInput(f"item {gone!r} left {v.space.name}/{v.name} during the comparison; run it again")
        assert got.embeddings is not None
        vectors.append(got.embeddings)
        found += (yield from v._query(got.embeddings, k + 1, None, None, ef, consistency, ("distances",))).ids
    return np.concatenate(vectors), found


def compare(space: "Space", a: "Version | str", b: "Version | str", *, sample: int = 1000, k: int = 10,
            seed: int = 0, ef: int | None = None, consistency: str = "session") -> Plan[DriftReport]:
    """:meth:`embcache.Space.compare` (see its docstring), as a plan."""
    from .hub import Version

    t0 = time.perf_counter()
    sample = _positive_int(sample, "sample", MAX_SAMPLE)
    k = _positive_int(k, "k", MAX_K)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    versions: list[Version] = []
    for x in (a, b):
        if isinstance(x, Version):
            if x.space.name != space.name:
                raise InvalidInput(f"version {x.name!r} belongs to space {x.space.name!r}, not {space.name!r}")
            versions.append(x)
        elif isinstance(x, str):
            versions.append((yield from space._version(x)))
        else:
            raise InvalidInput(f"a and b are versions or version names (or aliases), got {type(x).__name__}")
    va, vb = versions
    ids_a, ids_b = (yield from _ids(va)), (yield from _ids(vb))
    shared = sorted(ids_a & ids_b)
    if not shared:
        raise InvalidInput(f"{space.name}/{va.name} and {space.name}/{vb.name} have no item in common to compare")
    rng = np.random.default_rng(int(seed))
    picked = sorted(rng.choice(len(shared), size=min(sample, len(shared)), replace=False).tolist())
    chosen = [shared[j] for j in picked]
    vec_a, near_a = yield from _neighbours(va, chosen, k, ef, consistency)
    vec_b, near_b = yield from _neighbours(vb, chosen, k, ef, consistency)
    return drift_report(
        space=space.name, a=va.name, b=vb.name, k=k, seed=int(seed),
        only_a=sorted(ids_a - ids_b), only_b=sorted(ids_b - ids_a), in_both=len(shared),
        sample=chosen, vectors_a=vec_a, vectors_b=vec_b, overlap=overlaps(chosen, near_a, near_b, k),
        seconds=time.perf_counter() - t0,
    )
